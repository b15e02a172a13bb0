"""The per-annotator-day label counts read the gold flags of the labelled comparisons by key.

The label-statistics trigger of migration 0005 joined a statement's labels to annotation_comparison
for their gold flags. For a statement of many labels (an import writes 10,000 per statement)
PostgreSQL hashed that join over a sequential scan of every project's comparisons, so its cost grew
with the database rather than with the statement (1.2 s of a 100,000-pair import written 10,000
labels a statement, with a million comparisons in the table). Now each labelled comparison is read
through the primary key. PostgreSQL only (SQLite's row triggers look up one comparison each).
"""

from __future__ import annotations

import importlib

from django.db import migrations

aggregates = importlib.import_module("annotation.migrations.0005_label_aggregates")

JOINED = "LEFT JOIN annotation_comparison c ON c.id = d.comparison_id GROUP BY 1, 2, 3"
# One primary-key look-up per distinct comparison, in a subquery per row that the planner can
# neither turn back into the join nor into a filter over the whole table (as `id = ANY(array)` can
# become, scanning the array once per comparison of the database); OFFSET 0 keeps it from being
# merged into the query above, where it would run once per use. A gold comparison has its answer,
# a plain one none (NULL).
BY_KEY = (
    "LEFT JOIN (SELECT g.id, g.gold IS NOT NULL AS is_gold, g.gold AS gold_choice FROM ("
    "SELECT k.id, (SELECT x.gold_choice FROM annotation_comparison x WHERE x.id = k.id AND x.is_gold) AS gold "
    "FROM (SELECT DISTINCT comparison_id AS id FROM delta) k OFFSET 0) g) c ON c.id = d.comparison_id GROUP BY 1, 2, 3"
)


def _function(event: str, *, by_key: bool) -> str:
    sql = aggregates._pg_preference_function(event).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
    if by_key:
        assert sql.count(JOINED) == 1, "migration 0005's day counts changed shape"
        sql = sql.replace(JOINED, BY_KEY)
    return sql


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for event in ("INSERT", "DELETE", "UPDATE"):
            schema_editor.execute(_function(event, by_key=True))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for event in ("INSERT", "DELETE", "UPDATE"):
            schema_editor.execute(_function(event, by_key=False))


class Migration(migrations.Migration):
    dependencies = [("annotation", "0009_policy_rank_given")]

    operations = [migrations.RunPython(forwards, backwards)]
