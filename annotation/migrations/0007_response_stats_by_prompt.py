"""The per-day response counts (migration 0005) no longer read the whole prompt table.

A response carries no project, so the statement triggers that count new and deleted responses per
project and day joined the changed rows to annotation_prompt. For a large statement (an import's
200,000 responses) PostgreSQL hashed that join over a sequential scan of the whole prompt table,
texts included: about 1 s for a 100,000-pair import into a database of 200,000 prompts, and growing
with every project's prompts, not with the import. Now the changed rows are first counted per
prompt and day, and each distinct prompt's project is read through its primary key (a subquery
per prompt, which the planner cannot turn back into the scan): the cost follows the statement's
size. Rows whose prompt is gone are skipped, as the inner join skipped them.

PostgreSQL only: on SQLite these counts are row triggers that look up one prompt each already.
"""

from __future__ import annotations

import importlib

from django.db import migrations

aggregates = importlib.import_module("annotation.migrations.0005_label_aggregates")


def _function(event: str, *, by_prompt: bool) -> str:
    rows, sign = ("new_rows", "1") if event == "insert" else ("old_rows", "-1")
    counts = ", ".join(f"{sign} * SUM(x.n)::bigint" if c == "responses" else "0" for c in aggregates.PROJECT_DAY)
    ctes = [f"changed AS (SELECT * FROM {rows})"]
    if by_prompt:
        # MATERIALIZED: computed once, so each prompt's project is read once (inlined, the subquery
        # would run again for the filter and the grouping).
        ctes.append(
            "per_prompt AS MATERIALIZED (SELECT "
            "(SELECT q.project_id FROM annotation_prompt q WHERE q.id = g.prompt_id) AS project_id, g.day, g.n "
            f"FROM (SELECT r.prompt_id, {aggregates.PG_DAY.format('r.')} AS day, COUNT(*) AS n "
            "FROM changed r GROUP BY 1, 2) g)"
        )
        select = (
            f"SELECT x.project_id, x.day, {aggregates.PG_WRITER}, {counts} FROM per_prompt x "
            "WHERE x.project_id IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2"
        )
    else:  # migration 0005's text, for going back
        select = (
            f"SELECT q.project_id, {aggregates.PG_DAY.format('r.')}, {aggregates.PG_WRITER}, "
            + ", ".join(f"{sign} * COUNT(*)" if c == "responses" else "0" for c in aggregates.PROJECT_DAY)
            + " FROM changed r JOIN annotation_prompt q ON q.id = r.prompt_id GROUP BY 1, 2 ORDER BY 1, 2"
        )
    body = aggregates._pg_upsert(
        event.upper(),
        ctes,
        "annotation_stats_project_day",
        aggregates.STATS_KEYS["annotation_stats_project_day"],
        aggregates.PROJECT_DAY,
        select,
    )
    return (
        f"CREATE OR REPLACE FUNCTION annotation_response_stats_{event}() RETURNS trigger AS $$ "
        f"{aggregates._pg_declarations()} BEGIN {body} RETURN NULL; END $$ LANGUAGE plpgsql "
        f"{aggregates.FUNCTION_SETTINGS}"
    )


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for event in ("insert", "delete"):
            schema_editor.execute(_function(event, by_prompt=True))


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        for event in ("insert", "delete"):
            schema_editor.execute(_function(event, by_prompt=False))


class Migration(migrations.Migration):
    dependencies = [("annotation", "0006_fewer_import_checks")]

    operations = [migrations.RunPython(forwards, backwards)]
