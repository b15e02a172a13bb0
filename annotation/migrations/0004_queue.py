"""The queue's serving order in one index.

annotation.queue leases the first comparison, in the order (label_count desc, newest policy first,
id), that passes the per-annotator checks. "Newest policy" lives on the responses, and an ORDER BY
over a join cannot walk an index, so each comparison carries `policy_rank`: the id of the newest
policy version that wrote either of its responses, 0 when neither was generated here. A trigger
sets it on insert, so every writer (imports, generation, the API, psql) gets it right without
knowing about it. A response's policy version is written when the response is and never changes.
"""

from __future__ import annotations

from django.db import migrations, models

RANK = "(SELECT COALESCE(MAX(r.policy_version_id), 0) FROM annotation_response r WHERE r.id IN ({a}, {b}))"


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute(
            "CREATE FUNCTION annotation_comparison_policy_rank() RETURNS trigger AS $$ BEGIN "
            f"NEW.policy_rank := {RANK.format(a='NEW.response_a_id', b='NEW.response_b_id')}; "
            "RETURN NEW; END $$ LANGUAGE plpgsql"
        )
        schema_editor.execute(
            "CREATE TRIGGER comparison_policy_rank BEFORE INSERT OR UPDATE OF response_a_id, response_b_id "
            "ON annotation_comparison FOR EACH ROW EXECUTE FUNCTION annotation_comparison_policy_rank()"
        )
    elif vendor == "sqlite":
        # SQLite's BEFORE triggers cannot assign to NEW, so the row is corrected just after.
        for event in ("INSERT", "UPDATE OF response_a_id, response_b_id"):
            name = "comparison_policy_rank_" + event.split()[0].lower()
            schema_editor.execute(
                f"CREATE TRIGGER {name} AFTER {event} ON annotation_comparison FOR EACH ROW BEGIN "
                "UPDATE annotation_comparison SET policy_rank = "
                f"{RANK.format(a='NEW.response_a_id', b='NEW.response_b_id')} WHERE id = NEW.id; END"
            )
    else:
        raise RuntimeError(f"the policy_rank trigger is written for PostgreSQL and SQLite, not {vendor}")
    schema_editor.execute(
        "UPDATE annotation_comparison SET policy_rank = "
        + RANK.format(a="annotation_comparison.response_a_id", b="annotation_comparison.response_b_id")
    )


def backwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor == "postgresql":
        schema_editor.execute("DROP TRIGGER IF EXISTS comparison_policy_rank ON annotation_comparison")
        schema_editor.execute("DROP FUNCTION IF EXISTS annotation_comparison_policy_rank()")
    elif vendor == "sqlite":
        schema_editor.execute("DROP TRIGGER IF EXISTS comparison_policy_rank_insert")
        schema_editor.execute("DROP TRIGGER IF EXISTS comparison_policy_rank_update")


class Migration(migrations.Migration):
    dependencies = [("annotation", "0003_cross_table_integrity")]

    operations = [
        migrations.AddField(
            model_name="comparison",
            name="policy_rank",
            field=models.BigIntegerField(null=True, editable=False),
        ),
        migrations.AddIndex(
            model_name="comparison",
            index=models.Index(
                fields=["project", "is_gold", "-label_count", "-policy_rank", "id"], name="comparison_queue_order"
            ),
        ),
        migrations.RunPython(forwards, backwards),
    ]
