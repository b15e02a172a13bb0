"""The statistics triggers on inserts step aside for a writer that counts its own rows.

An import knows what the statistics triggers of migration 0005 would work out for the rows it
creates: its new comparisons have no labels but its own, are not gold and have no per-comparison
counts yet; its labels carry no side, time or gold answer. Worked out by the triggers, that cost
PostgreSQL a third of a 100,000-pair import (reading each labelled comparison's counts, gold flag and
other labels by key, per statement of 10,000), on the one connection the import's rows go through;
counted by the import, in the web process, it costs little.

So each INSERT statistics function (labels, prompts, responses, comparisons) now first reads the
setting annotation.stats_by_writer, and returns at once when it is 'on'. A writer sets it for its
own transaction only (set_config(..., true), which a rollback to a savepoint also undoes), around
the statements whose rows it counts itself, and writes their counts into the same tables in the
same transaction (annotation.services, _import). Labels it adds to comparisons that existed before
are inserted with the setting off, and counted by the trigger as before. Any other writer leaves the
setting alone, and nothing changes for it. (A session that sets it and then counts nothing leaves the
statistics wrong; it could write those tables directly anyway.)

PostgreSQL only: SQLite's row triggers stay as they are, and its imports leave the counting to them.
"""

from __future__ import annotations

import importlib

from django.db import migrations

aggregates = importlib.import_module("annotation.migrations.0005_label_aggregates")
response_stats = importlib.import_module("annotation.migrations.0007_response_stats_by_prompt")
labels_by_key = importlib.import_module("annotation.migrations.0012_label_counts_by_key")

SETTING = "annotation.stats_by_writer"
STEP_ASIDE = f"IF current_setting('{SETTING}', true) = 'on' THEN RETURN NULL; END IF; "


def _functions() -> list[str]:
    """The INSERT statistics functions as the migrations before this one left them."""
    created = [
        sql.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)
        for sql in aggregates._pg_created_functions()
        if sql.startswith(
            ("CREATE FUNCTION annotation_prompt_stats_insert(", "CREATE FUNCTION annotation_comparison_stats_insert(")
        )
    ]
    assert len(created) == 2, "migration 0005's functions changed names"
    return [
        labels_by_key._function("INSERT", by_key=True),
        *created,
        response_stats._function("insert", by_prompt=True),
    ]


def _stepping_aside(sql: str) -> str:
    assert sql.count(" BEGIN ") == 1, "a statistics function changed shape"
    return sql.replace(" BEGIN ", f" BEGIN {STEP_ASIDE}", 1)


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in _functions():
            schema_editor.execute(_stepping_aside(sql))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for sql in _functions():
            schema_editor.execute(sql)


class Migration(migrations.Migration):
    dependencies = [("annotation", "0012_label_counts_by_key")]

    operations = [migrations.RunPython(forwards, backwards)]
