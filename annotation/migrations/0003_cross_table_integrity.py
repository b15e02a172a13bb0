"""Rules that span two tables, which Django's constraints cannot express.

- A comparison's two responses answer the comparison's own prompt.
- The project columns copied onto comparisons, preferences and assignments (so that the queue and
  the export filter one table) agree with the rows they were copied from.

On PostgreSQL these are composite foreign keys onto the (id, parent) unique constraints declared in
the models; they are checked immediately, not at commit, so the offending INSERT itself fails. SQLite
cannot add a foreign key to an existing table, so there the same rules are triggers.
"""

from __future__ import annotations

from django.db import migrations

# (table, constraint name, local columns, referenced table, referenced columns)
COMPOSITE_KEYS = [
    ("annotation_comparison", "comparison_response_a_same_prompt", "response_a_id, prompt_id", "annotation_response", "id, prompt_id"),
    ("annotation_comparison", "comparison_response_b_same_prompt", "response_b_id, prompt_id", "annotation_response", "id, prompt_id"),
    ("annotation_comparison", "comparison_project_of_prompt", "prompt_id, project_id", "annotation_prompt", "id, project_id"),
    ("annotation_preference", "preference_project_of_comparison", "comparison_id, project_id", "annotation_comparison", "id, project_id"),
    ("annotation_assignment", "assignment_project_of_comparison", "comparison_id, project_id", "annotation_comparison", "id, project_id"),
]

# (trigger name, table, condition under which a written row is refused, message)
SQLITE_RULES = [
    (
        "comparison_same_prompt",
        "annotation_comparison",
        "(SELECT prompt_id FROM annotation_response WHERE id = NEW.response_a_id) IS NOT NEW.prompt_id"
        " OR (SELECT prompt_id FROM annotation_response WHERE id = NEW.response_b_id) IS NOT NEW.prompt_id"
        " OR (SELECT project_id FROM annotation_prompt WHERE id = NEW.prompt_id) IS NOT NEW.project_id",
        "comparison: both responses must answer the comparison prompt, in the prompt project",
    ),
    (
        "preference_project_of_comparison",
        "annotation_preference",
        "(SELECT project_id FROM annotation_comparison WHERE id = NEW.comparison_id) IS NOT NEW.project_id",
        "preference: project must be the project of its comparison",
    ),
    (
        "assignment_project_of_comparison",
        "annotation_assignment",
        "(SELECT project_id FROM annotation_comparison WHERE id = NEW.comparison_id) IS NOT NEW.project_id",
        "assignment: project must be the project of its comparison",
    ),
    (
        "response_keeps_prompt",
        "annotation_response",
        "NEW.prompt_id IS NOT OLD.prompt_id AND EXISTS (SELECT 1 FROM annotation_comparison"
        " WHERE response_a_id = NEW.id OR response_b_id = NEW.id)",
        "response: cannot move a compared response to another prompt",
    ),
]


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for table, name, columns, ref_table, ref_columns in COMPOSITE_KEYS:
            schema_editor.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({columns}) "
                f"REFERENCES {ref_table} ({ref_columns}) NOT DEFERRABLE"
            )
    elif vendor == "sqlite":
        for name, table, condition, message in SQLITE_RULES:
            events = ["UPDATE"] if table == "annotation_response" else ["INSERT", "UPDATE"]
            for event in events:
                schema_editor.execute(
                    f"CREATE TRIGGER {name}_{event.lower()} BEFORE {event} ON {table} "
                    f"FOR EACH ROW WHEN {condition} BEGIN SELECT RAISE(ABORT, '{message}'); END"
                )
    else:
        raise RuntimeError(f"cross-table integrity rules are written for PostgreSQL and SQLite, not {vendor}")


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        for table, name, *_ in COMPOSITE_KEYS:
            schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
    elif vendor == "sqlite":
        for name, table, *_ in SQLITE_RULES:
            for event in ("insert", "update"):
                schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}_{event}")


class Migration(migrations.Migration):
    dependencies = [("annotation", "0002_initial")]

    operations = [migrations.RunPython(forwards, backwards)]
