"""On PostgreSQL, a comparison inserted with its policy_rank keeps it; one inserted without it
(NULL, what the ORM and every other writer send) gets it from the trigger of 0004, as before.

The trigger is a PL/pgSQL call and a query per row, about 5 µs: half a second of a 100,000-pair
import, which knows every response's policy version already (it wrote the new responses, with none,
and read the old ones) and now sends the rank. An UPDATE of a comparison's responses still
recomputes it, whatever the statement says. SQLite keeps its AFTER triggers, which always recompute.
"""

from __future__ import annotations

from django.db import migrations

RANK_SET_BY = "annotation_comparison_policy_rank()"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP TRIGGER comparison_policy_rank ON annotation_comparison")
    schema_editor.execute(
        "CREATE TRIGGER comparison_policy_rank BEFORE INSERT ON annotation_comparison FOR EACH ROW "
        f"WHEN (NEW.policy_rank IS NULL) EXECUTE FUNCTION {RANK_SET_BY}"
    )
    schema_editor.execute(
        "CREATE TRIGGER comparison_policy_rank_update BEFORE UPDATE OF response_a_id, response_b_id "
        f"ON annotation_comparison FOR EACH ROW EXECUTE FUNCTION {RANK_SET_BY}"
    )


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    schema_editor.execute("DROP TRIGGER comparison_policy_rank_update ON annotation_comparison")
    schema_editor.execute("DROP TRIGGER comparison_policy_rank ON annotation_comparison")
    schema_editor.execute(
        "CREATE TRIGGER comparison_policy_rank BEFORE INSERT OR UPDATE OF response_a_id, response_b_id "
        f"ON annotation_comparison FOR EACH ROW EXECUTE FUNCTION {RANK_SET_BY}"
    )


class Migration(migrations.Migration):
    dependencies = [("annotation", "0008_set_based_keys")]

    operations = [migrations.RunPython(forwards, backwards)]
