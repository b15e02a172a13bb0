"""The per-annotator-day label counts read the gold flags of the labelled comparisons by key.

The label-statistics trigger of migration 0005 joined a statement's labels to annotation_comparison
for their gold flags. For a statement of many labels (an import writes 10,000 per statement)
PostgreSQL hashed that join over a sequential scan of every project's comparisons, so its cost grew
with the database rather than with the statement: about 1.2 s of a 100,000-pair import into a
database of a million comparisons. Now the labelled comparisons are read through the primary key,
their ids given as one array. PostgreSQL only (SQLite's row triggers look up one comparison each).
"""

from __future__ import annotations

import importlib

from django.db import migrations

aggregates = importlib.import_module("annotation.migrations.0005_label_aggregates")

JOINED = "LEFT JOIN annotation_comparison c ON c.id = d.comparison_id GROUP BY 1, 2, 3"
BY_KEY = (
    "LEFT JOIN (SELECT x.id, x.is_gold, x.gold_choice FROM annotation_comparison x "
    "WHERE x.id = ANY(ARRAY(SELECT DISTINCT comparison_id FROM delta))) c ON c.id = d.comparison_id GROUP BY 1, 2, 3"
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
