"""On PostgreSQL, the references that an import writes by the hundred thousand are checked a
statement at a time instead of a row at a time.

A foreign key makes PostgreSQL run one look-up per written row, each a small query of its own
(executor start, an index probe, a row lock, executor end): about 5 µs, and about 800,000 of them for a
100,000-pair import (prompt -> project, response -> prompt and policy version, the three composite
keys of a comparison, a preference's comparison and annotator), 4 of its 11 CPU seconds. Here each
of those references is checked by a statement trigger instead, over the statement's rows at once:

- A written row whose referenced row is missing fails the statement with SQLSTATE 23503
  (foreign_key_violation, an IntegrityError in Django) and the message PostgreSQL's own keys give.
  Checked at the end of the statement, like the NOT DEFERRABLE composite keys of 0003; the three
  single-column keys were INITIALLY DEFERRED (checked at commit) and are now checked as early.
- Each referenced row is locked FOR KEY SHARE, as the foreign keys lock it, so that a concurrent
  DELETE waits for the writer and then sees its rows; except the rows that this transaction wrote
  itself, which no other transaction can see, so none can delete (an import's new prompts,
  responses and comparisons: no lock, no WAL record per row).
- Deleting, re-keying or truncating a referenced row that is still referenced fails the same way.
  A DELETE locks the rows it deletes and its trigger then reads the referencing rows afresh, which
  under READ COMMITTED (Django's) or SERIALIZABLE sees every writer that had locked them. REPEATABLE
  READ would read them as of its snapshot, so deleting a referenced table's rows is refused there.
- TRUNCATE ... CASCADE no longer follows these references; truncating a referenced table whose
  referencing table keeps rows is refused.

The (id, project) and (id, prompt) unique constraints of prompts and responses existed only as the
targets of the composite keys: they go too (300,000 fewer index entries per import). The
comparison's (id, project) stays, for the assignments' key. SQLite keeps its foreign keys and the
triggers of 0003; only the migration state changes there (as in 0006).
"""

from __future__ import annotations

import importlib

from django.conf import settings
from django.db import migrations, models

OnPostgreSQL = importlib.import_module("annotation.migrations.0006_fewer_import_checks").OnPostgreSQL

# (constraint name, table, columns, referenced table, referenced columns)
KEYS = [
    ("prompt_project", "annotation_prompt", ("project_id",), "annotation_project", ("id",)),
    ("response_prompt", "annotation_response", ("prompt_id",), "annotation_prompt", ("id",)),
    ("response_policy_version", "annotation_response", ("policy_version_id",), "training_modelversion", ("id",)),
    (
        "comparison_project_of_prompt",
        "annotation_comparison",
        ("prompt_id", "project_id"),
        "annotation_prompt",
        ("id", "project_id"),
    ),
    (
        "comparison_response_a_same_prompt",
        "annotation_comparison",
        ("response_a_id", "prompt_id"),
        "annotation_response",
        ("id", "prompt_id"),
    ),
    (
        "comparison_response_b_same_prompt",
        "annotation_comparison",
        ("response_b_id", "prompt_id"),
        "annotation_response",
        ("id", "prompt_id"),
    ),
    (
        "preference_project_of_comparison",
        "annotation_preference",
        ("comparison_id", "project_id"),
        "annotation_comparison",
        ("id", "project_id"),
    ),
    ("preference_annotator", "annotation_preference", ("annotator_id",), "auth_user", ("id",)),
]
# The composite keys of 0003 that go (0003 made them with raw SQL; the single-column ones are
# Django's and go by AlterField below).
COMPOSITE = {name for name, _, columns, *_ in KEYS if len(columns) > 1}

# Look-ups key by key through the indexes: the planner knows nothing of a transition table's size
# and would hash a whole referenced table to check one row.
SETTINGS = "SET enable_hashjoin = off SET enable_mergejoin = off"

# True for a row inserted by this transaction (or one of its subtransactions): its xmin is still
# in progress, and a row in progress that a query can see is one of ours. txid_status() wants the
# 64-bit id: `ref` (this transaction's, txid_current()) lends the 32-bit xmin its epoch, by their
# signed 32-bit distance (every live transaction id is within 2^31 of every other).
OURS = (
    "txid_status(ref + ((({row}.xmin::text::bigint - ref + 2147483648) & 4294967295) - 2147483648)) "
    "IS NOT DISTINCT FROM 'in progress'"
)


def _on(left: str, left_columns, right: str, right_columns) -> str:
    return " AND ".join(f"{left}.{a} = {right}.{b}" for a, b in zip(left_columns, right_columns, strict=True))


def _quoted_list(columns) -> str:
    return ", ".join(columns)


def _violation(name, table, detail_sql: str) -> str:
    return (
        f'RAISE EXCEPTION \'insert or update on table "{table}" violates foreign key constraint "{name}"\' '
        f"USING ERRCODE = 'foreign_key_violation', CONSTRAINT = '{name}', TABLE = '{table}', DETAIL = {detail_sql};"
    )


def _missing_detail(columns, ref_table, values: str) -> str:
    return f"format('Key ({_quoted_list(columns)})=(%s) is not present in table \"{ref_table}\".', {values})"


def _check_inserted(name, table, columns, ref_table, ref_columns) -> str:
    """plpgsql: the references of a statement's new rows (new_rows) exist; the ones not written by
    this transaction are locked FOR KEY SHARE."""
    present = " AND ".join(f"{c} IS NOT NULL" for c in columns)
    keys = f"(SELECT DISTINCT {_quoted_list(columns)} FROM new_rows WHERE {present})"
    arrays = [f"lock_{i}" for i in range(len(columns))]
    ours = OURS.format(row="p")
    aggregates = ", ".join(
        f"array_agg(k.{c}) FILTER (WHERE p.{ref_columns[0]} IS NOT NULL AND NOT {ours})" for c in columns
    )
    first_missing = (
        f"SELECT concat_ws(', ', {', '.join(f'k.{c}' for c in columns)}) INTO missing FROM {keys} k "
        f"WHERE NOT EXISTS (SELECT 1 FROM {ref_table} p WHERE {_on('p', ref_columns, 'k', columns)}) LIMIT 1;"
    )
    unnested = f"unnest({', '.join(arrays)}) AS u({_quoted_list(columns)})"
    return (
        f"SELECT count(*) FILTER (WHERE p.{ref_columns[0]} IS NULL), {aggregates} "
        f"INTO n_missing, {', '.join(arrays)} "
        f"FROM {keys} k LEFT JOIN {ref_table} p ON {_on('p', ref_columns, 'k', columns)}; "
        f"IF n_missing > 0 THEN {first_missing} "
        f"{_violation(name, table, _missing_detail(columns, ref_table, 'missing'))} END IF; "
        f"IF lock_0 IS NOT NULL THEN "
        f"SELECT count(*) INTO n_locked FROM (SELECT 1 FROM {ref_table} p JOIN {unnested} "
        f"ON {_on('p', ref_columns, 'u', columns)} FOR KEY SHARE OF p) l; "
        # Fewer than asked for: deleted by a transaction that committed since the look-up.
        f"IF n_locked < cardinality(lock_0) THEN "
        f"{_violation(name, table, repr('a referenced row of table ' + ref_table + ' was deleted meanwhile'))} "
        f"END IF; END IF; "
    )


def _check_updated(name, table, columns, ref_table, ref_columns) -> str:
    """plpgsql, row trigger: NEW's reference exists; locked FOR KEY SHARE."""
    present = " AND ".join(f"NEW.{c} IS NOT NULL" for c in columns)
    values = "concat_ws(', ', " + ", ".join(f"NEW.{c}" for c in columns) + ")"
    where = " AND ".join(f"p.{r} = NEW.{c}" for c, r in zip(columns, ref_columns, strict=True))
    return (
        f"IF {present} THEN PERFORM 1 FROM {ref_table} p WHERE {where} FOR KEY SHARE OF p; "
        f"IF NOT FOUND THEN {_violation(name, table, _missing_detail(columns, ref_table, values))} END IF; END IF; "
    )


def _still_referenced(name, table, columns, ref_table, ref_columns, rows: str) -> str:
    """plpgsql: none of `rows` (rows of ref_table, deleted or re-keyed) is referenced from table."""
    on = _on("c", columns, "o", ref_columns)
    values = "concat_ws(', ', " + ", ".join(f"o.{r}" for r in ref_columns) + ")"
    return (
        f"SELECT {values} INTO missing FROM {rows} o WHERE EXISTS (SELECT 1 FROM {table} c WHERE {on}) LIMIT 1; "
        f'IF FOUND THEN RAISE EXCEPTION \'update or delete on table "{ref_table}" violates foreign key '
        f'constraint "{name}" on table "{table}"\' USING ERRCODE = \'foreign_key_violation\', '
        f"CONSTRAINT = '{name}', TABLE = '{ref_table}', DETAIL = format('Key ({_quoted_list(ref_columns)})=(%s) "
        f'is still referenced from table "{table}".\', missing); END IF; '
    )


DECLARATIONS = "DECLARE ref bigint; n_missing bigint; n_locked bigint; missing text; lock_0 bigint[]; lock_1 bigint[]; "


def _function(name: str, body: str, *, settings: str = SETTINGS) -> str:
    return (
        f"CREATE FUNCTION {name}() RETURNS trigger AS $$ {DECLARATIONS} BEGIN {body} RETURN NULL; END $$ "
        f"LANGUAGE plpgsql {settings}"
    )


def _by(index: int) -> dict[str, list[tuple]]:
    grouped: dict[str, list[tuple]] = {}
    for key in KEYS:
        grouped.setdefault(key[index], []).append(key)
    return grouped


REPEATABLE_READ_GUARD = (
    "IF current_setting('transaction_isolation') = 'repeatable read' THEN RAISE EXCEPTION "
    "'deleting or re-keying rows of % needs READ COMMITTED or SERIALIZABLE: under REPEATABLE READ the check "
    "for rows that still reference them cannot see rows written since the transaction began', TG_TABLE_NAME "
    "USING ERRCODE = 'feature_not_supported'; END IF; "
)


def _statements() -> list[str]:
    sql = []
    for table, keys in _by(1).items():
        checks = "".join(_check_inserted(*key) for key in keys)
        sql.append(_function(f"{table}_keys_insert", "ref := txid_current(); " + checks))
        sql.append(
            f"CREATE TRIGGER {table}_keys_insert AFTER INSERT ON {table} REFERENCING NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_keys_insert()"
        )
        columns = sorted({c for key in keys for c in key[2]})
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in columns)
        sql.append(_function(f"{table}_keys_update", "".join(_check_updated(*key) for key in keys), settings=""))
        sql.append(
            f"CREATE TRIGGER {table}_keys_update AFTER UPDATE OF {', '.join(columns)} ON {table} FOR EACH ROW "
            f"WHEN ({changed}) EXECUTE FUNCTION {table}_keys_update()"
        )
    for ref_table, keys in _by(3).items():
        deleted = "".join(_still_referenced(*key, "old_rows") for key in keys)
        sql.append(_function(f"{ref_table}_keys_delete", REPEATABLE_READ_GUARD + deleted))
        sql.append(
            f"CREATE TRIGGER {ref_table}_keys_delete AFTER DELETE ON {ref_table} REFERENCING OLD TABLE AS old_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {ref_table}_keys_delete()"
        )
        ref_columns = sorted({c for key in keys for c in key[4]})
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in ref_columns)
        # The row's old key, as a one-row set, for the same check as a delete.
        old_key = "(SELECT " + ", ".join(f"OLD.{c} AS {c}" for c in ref_columns) + ")"
        # Only the keys whose referenced columns changed (moving a prompt to another project leaves
        # its responses' reference, the id, as it was).
        rekeyed = "".join(
            f"IF ({', '.join(f'OLD.{c}' for c in key[4])}) IS DISTINCT FROM ({', '.join(f'NEW.{c}' for c in key[4])}) "
            f"THEN {_still_referenced(*key, old_key)} END IF; "
            for key in keys
        )
        sql.append(_function(f"{ref_table}_keys_rekey", REPEATABLE_READ_GUARD + rekeyed))
        sql.append(
            f"CREATE TRIGGER {ref_table}_keys_rekey AFTER UPDATE OF {', '.join(ref_columns)} ON {ref_table} "
            f"FOR EACH ROW WHEN ({changed}) EXECUTE FUNCTION {ref_table}_keys_rekey()"
        )
        # After a TRUNCATE of several tables at once (Django's flush), the referencing ones are empty too.
        empty = "".join(
            f'IF EXISTS (SELECT 1 FROM {table}) THEN RAISE EXCEPTION \'cannot truncate table "{ref_table}": '
            f'table "{table}" references it (constraint "{name}"); truncate both together\' '
            f"USING ERRCODE = 'foreign_key_violation'; END IF; "
            for name, table, *_ in keys
        )
        sql.append(_function(f"{ref_table}_keys_truncate", empty, settings=""))
        sql.append(
            f"CREATE TRIGGER {ref_table}_keys_truncate AFTER TRUNCATE ON {ref_table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {ref_table}_keys_truncate()"
        )
    return sql


def _drops() -> list[str]:
    sql = []
    for table in _by(1):
        for event in ("insert", "update"):
            sql.append(f"DROP TRIGGER IF EXISTS {table}_keys_{event} ON {table}")
            sql.append(f"DROP FUNCTION IF EXISTS {table}_keys_{event}()")
    for ref_table in _by(3):
        for event in ("delete", "rekey", "truncate"):
            sql.append(f"DROP TRIGGER IF EXISTS {ref_table}_keys_{event} ON {ref_table}")
            sql.append(f"DROP FUNCTION IF EXISTS {ref_table}_keys_{event}()")
    return sql


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, table, *_ in KEYS:
        if name in COMPOSITE:
            schema_editor.execute(f"ALTER TABLE {table} DROP CONSTRAINT {name}")
    # Past schema_editor.execute, which would read the functions' format() placeholders as parameters.
    with schema_editor.connection.cursor() as cursor:
        for statement in _statements():
            cursor.execute(statement)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for statement in _drops():
        schema_editor.execute(statement)
    for name, table, columns, ref_table, ref_columns in KEYS:
        if name in COMPOSITE:
            schema_editor.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY ({', '.join(columns)}) "
                f"REFERENCES {ref_table} ({', '.join(ref_columns)}) NOT DEFERRABLE"
            )


def _fk(to, related_name, *, on_delete=models.CASCADE, null=False):
    return models.ForeignKey(
        on_delete=on_delete,
        related_name=related_name,
        to=to,
        db_index=False,
        db_constraint=False,
        null=null,
        blank=null,
    )


class Migration(migrations.Migration):
    dependencies = [
        ("annotation", "0007_response_stats_by_prompt"),
        ("training", "0001_initial"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # The unique constraints go after the composite keys that need them (backwards: before).
        migrations.RunPython(forwards, backwards),
        OnPostgreSQL(migrations.RemoveConstraint("prompt", "prompt_id_project")),
        OnPostgreSQL(migrations.RemoveConstraint("response", "response_id_prompt")),
        OnPostgreSQL(migrations.AlterField("prompt", "project", _fk("annotation.project", "prompts"))),
        OnPostgreSQL(migrations.AlterField("response", "prompt", _fk("annotation.prompt", "responses"))),
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
                ),
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
