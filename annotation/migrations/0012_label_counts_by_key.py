"""The label-statistics trigger reads what it needs of each labelled comparison by key.

Two statements of migration 0005's trigger (after 0010) still joined a statement's labels to whole
tables, which PostgreSQL planned, for a statement of many labels (an import writes 10,000 at a
time), as a hash over a sequential scan of every project's rows, so that their cost grew with the
database rather than with the statement:

- the unit counts (Krippendorff's alpha) read each labelled comparison's earlier label counts from
  annotation_stats_comparison and its gold flag from annotation_comparison;
- the agreement counts read the other labels of each labelled comparison from
  annotation_preference.

In a 100,000-pair import into a database that holds the 50,000 labels of another project, those
scans read 1.0 million counts rows and 1.0 million label rows. Now each comparison is read through
an index (the primary keys, and preference_one_per_annotator, whose first column is the comparison):
a LATERAL subquery per comparison, which OFFSET 0 keeps the planner from turning back into the
join. PostgreSQL only (SQLite's row triggers look up one comparison each).
"""

from __future__ import annotations

import importlib

from django.db import migrations

aggregates = importlib.import_module("annotation.migrations.0005_label_aggregates")
gold_by_key = importlib.import_module("annotation.migrations.0010_gold_flags_by_key")

UNITS_JOINED = (
    "LEFT JOIN annotation_stats_comparison s ON s.comparison_id = u.comparison_id\n"
    "              LEFT JOIN annotation_comparison c ON c.id = u.comparison_id)"
)
UNITS_BY_KEY = (
    "LEFT JOIN LATERAL (SELECT x.n_a, x.n_b, x.n_tie, x.n_both_bad FROM annotation_stats_comparison x "
    "WHERE x.comparison_id = u.comparison_id OFFSET 0) s ON true "
    "LEFT JOIN LATERAL (SELECT x.is_gold FROM annotation_comparison x WHERE x.id = u.comparison_id OFFSET 0) c ON true)"
)
# PL/pgSQL plans a statement once per session, from the statistics of that moment: an import's
# first statement, into tables that were empty when last analysed (autovacuum off, or a new
# database), planned each look-up above as a scan of the whole table, and that plan then ran once per
# comparison of every later statement (a 100,000-pair import took 460 s). The trigger has no use for
# a sequential scan: everything it reads is a statement's rows or a row by key.
INDEX_ONLY = "SET enable_seqscan = off"
LABELS_JOINED = "FROM annotation_preference p JOIN touched t ON t.comparison_id = p.comparison_id "
LABELS_BY_KEY = (
    "FROM (SELECT x.id, x.project_id, x.comparison_id, x.annotator_id, x.choice FROM touched t "
    "CROSS JOIN LATERAL (SELECT y.id, y.project_id, y.comparison_id, y.annotator_id, y.choice "
    "FROM annotation_preference y WHERE y.comparison_id = t.comparison_id OFFSET 0) x OFFSET 0) p "
)
# (The outer OFFSET 0 keeps the statement's join of these labels with its changed ones out of the
# loop over comparisons: placed inside, it hashed the statement's labels once per comparison.)


def _function(event: str, *, by_key: bool) -> str:
    sql = gold_by_key._function(event, by_key=True)  # the trigger function as 0010 left it
    if by_key:
        assert sql.count(UNITS_JOINED) == 1, "migration 0005's unit counts changed shape"
        assert sql.count(LABELS_JOINED) >= 1, "migration 0005's agreement counts changed shape"
        sql = sql.replace(UNITS_JOINED, UNITS_BY_KEY).replace(LABELS_JOINED, LABELS_BY_KEY)
        assert sql.endswith(aggregates.FUNCTION_SETTINGS), "migration 0005's function settings changed"
        sql += f" {INDEX_ONLY}"
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
    dependencies = [("annotation", "0011_partial_policy_index")]

    operations = [migrations.RunPython(forwards, backwards)]
