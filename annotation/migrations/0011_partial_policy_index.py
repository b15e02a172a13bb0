"""On PostgreSQL, only responses that a policy version generated are in the index of
Response.policy_version.

Imported responses have none, and the index held a NULL entry for each: 200,000 entries written per
100,000-pair import that no look-up reads (a look-up is always for one version, and the check that a
deleted version is unreferenced, migration 0008, asks for one id at a time). SQLite keeps its
index: there, dropping it would rebuild the table, which the triggers of 0003 refuse.
"""

from __future__ import annotations

import importlib

from django.db import migrations, models

OnPostgreSQL = importlib.import_module("annotation.migrations.0006_fewer_import_checks").OnPostgreSQL


class Migration(migrations.Migration):
    dependencies = [("annotation", "0010_gold_flags_by_key"), ("training", "0001_initial")]

    operations = [
        OnPostgreSQL(
            migrations.AlterField(
                "response",
                "policy_version",
                models.ForeignKey(
                    on_delete=models.PROTECT,
                    related_name="responses",
                    to="training.modelversion",
                    null=True,
                    blank=True,
                    db_constraint=False,
                    db_index=False,
                ),
            )
        ),
        OnPostgreSQL(
            migrations.AddIndex(
                "response",
                models.Index(
                    fields=["policy_version"],
                    name="response_policy_version",
                    condition=models.Q(policy_version__isnull=False),
                ),
            )
        ),
    ]
