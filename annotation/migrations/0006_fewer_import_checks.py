"""Drops, on PostgreSQL, indexes and foreign keys that only slowed bulk imports down.

- Eight single-column indexes whose column leads another index (named in the models' comments),
  which serves the same look-ups: every imported row updated both.
- The single-column foreign keys of comparisons (project, prompt, response_a, response_b) and of
  preferences (project, comparison). The composite keys of migration 0003 already refuse a row
  whose prompt, responses, comparison or project is missing (their columns are NOT NULL, so none
  is skipped) and, being NOT DEFERRABLE, refuse it at the INSERT; the single ones were checked a
  second time at commit, about 600,000 row checks for a 100,000-pair import. Deleting a referenced
  row stays refused by the composite keys (deletes go through Django, which cascades first).

SQLite keeps its tables as they are: there the same changes would rebuild annotation_comparison
and annotation_preference, which the triggers of 0003, 0004 and 0005 refer to, for no gain (the
embedded database is not where large imports run), and its foreign keys stay the only thing that
refuses deleting a referenced row outside Django. Only the migration state changes there.
"""

from __future__ import annotations

from django.conf import settings
from django.db import migrations, models
from django.db.migrations.operations.base import Operation


class OnPostgreSQL(Operation):
    """`operation` in the migration state everywhere, in the schema only on PostgreSQL."""

    reversible = True

    def __init__(self, operation):
        self.operation = operation

    def deconstruct(self):
        return (self.__class__.__name__, [self.operation], {})

    def state_forwards(self, app_label, state):
        self.operation.state_forwards(app_label, state)

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            self.operation.database_forwards(app_label, schema_editor, from_state, to_state)

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        if schema_editor.connection.vendor == "postgresql":
            self.operation.database_backwards(app_label, schema_editor, from_state, to_state)

    def describe(self):
        return f"{self.operation.describe()} (schema on PostgreSQL only)"


def _fk(to, related_name, *, on_delete=models.CASCADE, db_constraint=True):
    return models.ForeignKey(
        on_delete=on_delete, related_name=related_name, to=to, db_index=False, db_constraint=db_constraint
    )


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0005_label_aggregates"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        OnPostgreSQL(migrations.AlterField("prompt", "project", _fk("annotation.project", "prompts"))),
        OnPostgreSQL(migrations.AlterField("response", "prompt", _fk("annotation.prompt", "responses"))),
        OnPostgreSQL(
            migrations.AlterField(
                "comparison", "project", _fk("annotation.project", "comparisons", db_constraint=False)
            )
        ),
        OnPostgreSQL(
            migrations.AlterField("comparison", "prompt", _fk("annotation.prompt", "comparisons", db_constraint=False))
        ),
        OnPostgreSQL(
            migrations.AlterField("comparison", "response_a", _fk("annotation.response", "+", db_constraint=False))
        ),
        OnPostgreSQL(
            migrations.AlterField(
                "comparison",
                "response_b",
                models.ForeignKey(
                    on_delete=models.CASCADE, related_name="+", to="annotation.response", db_constraint=False
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                "preference", "project", _fk("annotation.project", "preferences", db_constraint=False)
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                "preference", "comparison", _fk("annotation.comparison", "preferences", db_constraint=False)
            )
        ),
        OnPostgreSQL(
            migrations.AlterField(
                "preference",
                "annotator",
                _fk(settings.AUTH_USER_MODEL, "preferences", on_delete=models.PROTECT),
            )
        ),
    ]
