"""A row that points at a missing row is refused by the statement that writes it, and a referenced
row cannot be deleted, re-keyed or truncated from under the rows that point at it.

On PostgreSQL the references that imports write in bulk are statement triggers (migration 0008):
one set-based check per statement instead of a foreign-key look-up per row. These tests write raw
SQL, past Django, as a psql session or a bulk COPY would, and check what the foreign keys did:
the refusal (SQLSTATE 23503, an IntegrityError), its message, and the row locks that keep a
concurrent delete from slipping between the check and the commit. On SQLite the same rules are
foreign keys and the row triggers of migration 0003."""

from __future__ import annotations

import contextlib
import threading
import time

import psycopg2
import pytest
from django.db import IntegrityError, connection, transaction

from annotation.models import Comparison, Preference, Prompt
from tests.factories import (
    ProjectFactory,
    PromptFactory,
    ResponseFactory,
    UserFactory,
    make_comparison,
    make_preference,
)

pytestmark = pytest.mark.django_db

MISSING = 2**40
# SQLite checks these references with foreign keys at commit (and comparisons' and labels' with the
# row triggers of migration 0003): the tests that need the statement itself refused run on PostgreSQL.
on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="the statement triggers are PostgreSQL's")


def refusal(sql: str, params: list | None = None) -> IntegrityError | None:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
    except IntegrityError as error:
        return error
    return None


def refused(sql: str, params: list | None = None) -> bool:
    return refusal(sql, params) is not None


def _insert_comparison(values: dict) -> str:
    return (
        "INSERT INTO annotation_comparison (project_id, prompt_id, response_a_id, response_b_id, is_gold,"
        f" gold_choice, label_count, created_at) VALUES ({values['project_id']}, {values['prompt_id']},"
        f" {values['response_a_id']}, {values['response_b_id']}, false, '', 0, CURRENT_TIMESTAMP)"
    )


def _insert_preference(project_id, comparison_id, annotator_id) -> str:
    return (
        "INSERT INTO annotation_preference (project_id, comparison_id, annotator_id, choice, rationale, shown_left,"
        f" created_at) VALUES ({project_id}, {comparison_id}, {annotator_id}, 'a', '', '', CURRENT_TIMESTAMP)"
    )


@on_postgresql
def test_no_foreign_key_is_left_on_the_tables_an_import_writes_and_a_trigger_checks_each_reference():
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text FROM pg_constraint WHERE contype = 'f' AND conrelid::regclass::text"
            " IN ('annotation_prompt', 'annotation_response', 'annotation_comparison', 'annotation_preference')"
        )
        assert cursor.fetchall() == []
        cursor.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE tgname LIKE '%%_keys_%%' ORDER BY 1, 2"
        )
        triggers = set(cursor.fetchall())
    for table in ("annotation_prompt", "annotation_response", "annotation_comparison", "annotation_preference"):
        assert {(table, f"{table}_keys_insert"), (table, f"{table}_keys_update")} <= triggers
    for table in ("annotation_project", "annotation_prompt", "annotation_response", "annotation_comparison"):
        for event in ("delete", "rekey", "truncate"):
            assert (table, f"{table}_keys_{event}") in triggers
    for table in ("auth_user", "training_modelversion"):
        assert (table, f"{table}_keys_delete") in triggers


@pytest.mark.parametrize("column", [None, "project_id", "prompt_id", "response_a_id", "response_b_id"])
def test_a_comparison_pointing_at_a_missing_row_is_refused(project, column):
    prompt = PromptFactory(project=project)
    first, second = ResponseFactory(prompt=prompt), ResponseFactory(prompt=prompt)
    values = {"project_id": project.pk, "prompt_id": prompt.pk, "response_a_id": first.pk, "response_b_id": second.pk}
    if column is not None:
        # -1 keeps response_a below response_b, as a check constraint wants.
        values[column] = -1 if column == "response_a_id" else MISSING
    # The untouched row (column None) is accepted: what refuses the others is the missing row.
    assert refused(_insert_comparison(values)) == (column is not None)
    assert Comparison.objects.count() == (column is None)


def test_a_comparison_whose_response_answers_another_prompt_is_refused(project):
    prompt, other = PromptFactory(project=project), PromptFactory(project=project)
    first, stranger = ResponseFactory(prompt=prompt), ResponseFactory(prompt=other)
    a, b = sorted([first.pk, stranger.pk])
    values = {"project_id": project.pk, "prompt_id": prompt.pk, "response_a_id": a, "response_b_id": b}
    assert refused(_insert_comparison(values))
    assert not Comparison.objects.exists()


@pytest.mark.parametrize(
    "column", [None, "project_id", "comparison_id", pytest.param("annotator_id", marks=on_postgresql)]
)
def test_a_preference_pointing_at_a_missing_row_is_refused(project, column):
    comparison = make_comparison(project=project)
    values = {"project_id": project.pk, "comparison_id": comparison.pk, "annotator_id": UserFactory().pk}
    if column is not None:
        values[column] = MISSING if column != "annotator_id" else 2**31 - 1
    assert refused(_insert_preference(**values)) == (column is not None)
    assert Preference.objects.count() == (column is None)


@on_postgresql
@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO annotation_prompt (project_id, text, content_hash, is_eval, created_at)"
        " VALUES (%(missing)s, 'q', 'h', false, CURRENT_TIMESTAMP)",
        "INSERT INTO annotation_response (prompt_id, text, content_hash, source, generation, created_at)"
        " VALUES (%(missing)s, 'r', 'h', 'm', '{}', CURRENT_TIMESTAMP)",
        "INSERT INTO annotation_response (prompt_id, text, content_hash, source, generation, created_at,"
        " policy_version_id) VALUES (%(prompt)s, 'r', 'h', 'm', '{}', CURRENT_TIMESTAMP, %(missing)s)",
    ],
    ids=["prompt-project", "response-prompt", "response-policy-version"],
)
def test_a_prompt_or_response_pointing_at_a_missing_row_is_refused(project, sql):
    prompt = PromptFactory(project=project)
    assert refused(sql, {"missing": MISSING, "prompt": prompt.pk})
    assert Prompt.objects.count() == 1


@on_postgresql
def test_the_refusal_names_the_key_and_the_missing_row_as_postgresql_does(project):
    prompt = PromptFactory(project=project)
    first = ResponseFactory(prompt=prompt)
    values = {"project_id": project.pk, "prompt_id": prompt.pk, "response_a_id": first.pk, "response_b_id": MISSING}
    error = refusal(_insert_comparison(values))
    cause = error.__cause__
    assert cause.pgcode == "23503"
    assert cause.diag.constraint_name == "comparison_response_b_same_prompt"
    assert 'violates foreign key constraint "comparison_response_b_same_prompt"' in str(cause)
    assert cause.diag.message_detail == (
        f'Key (response_b_id, prompt_id)=({MISSING}, {prompt.pk}) is not present in table "annotation_response".'
    )


def test_a_bulk_insert_with_one_bad_row_among_many_writes_none(project):
    prompt = PromptFactory(project=project)
    responses = [ResponseFactory(prompt=prompt) for _ in range(6)]
    rows = [(project.pk, prompt.pk, a.pk, b.pk) for a, b in zip(responses, responses[1:], strict=False)]
    rows.append((project.pk, prompt.pk, responses[0].pk, MISSING))
    values = ", ".join(f"({p}, {q}, {a}, {b}, false, '', 0, CURRENT_TIMESTAMP)" for p, q, a, b in rows)
    sql = (
        "INSERT INTO annotation_comparison (project_id, prompt_id, response_a_id, response_b_id, is_gold,"
        f" gold_choice, label_count, created_at) VALUES {values}"
    )
    assert refused(sql)
    assert not Comparison.objects.exists()


@on_postgresql
@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE annotation_comparison SET response_b_id = %(missing)s WHERE id = %(comparison)s",
        "UPDATE annotation_comparison SET project_id = %(other)s WHERE id = %(comparison)s",
        "UPDATE annotation_preference SET annotator_id = 2147483647 WHERE comparison_id = %(comparison)s",
        "UPDATE annotation_preference SET project_id = %(other)s WHERE comparison_id = %(comparison)s",
        "UPDATE annotation_response SET prompt_id = %(missing)s WHERE id = %(response)s",
    ],
)
def test_pointing_a_row_at_a_missing_or_unrelated_row_is_refused(project, sql):
    comparison = make_comparison(project=project)
    make_preference(comparison=comparison, annotator=UserFactory(), choice="a")
    other = ProjectFactory()
    params = {"missing": MISSING, "comparison": comparison.pk, "other": other.pk, "response": comparison.response_a_id}
    assert refused(sql, params)


@on_postgresql
@pytest.mark.parametrize(
    "table, key",
    [
        ("annotation_response", "response_a_id"),
        ("annotation_response", "response_b_id"),
        ("annotation_prompt", "prompt_id"),
        ("annotation_comparison", "id"),
        ("annotation_project", "project_id"),
        ("auth_user", "annotator"),
    ],
)
def test_a_referenced_row_cannot_be_deleted_from_under_its_comparison_or_label(project, table, key):
    comparison = make_comparison(project=project)
    annotator = UserFactory()
    make_preference(comparison=comparison, annotator=annotator, choice="a")
    target = annotator.pk if key == "annotator" else getattr(comparison, key)
    assert refused(f"DELETE FROM {table} WHERE id = %s", [target])
    assert Comparison.objects.filter(pk=comparison.pk).exists()


@on_postgresql
def test_a_model_version_that_generated_a_response_cannot_be_deleted(project):
    from training.models import ModelVersion

    policy = ModelVersion.objects.create(project=project, kind="policy", version=1, artifact_path="/p", base="b")
    unused = ModelVersion.objects.create(project=project, kind="policy", version=2, artifact_path="/q", base="b")
    ResponseFactory(prompt=PromptFactory(project=project), policy_version=policy)
    assert refused("DELETE FROM training_modelversion WHERE id = %s", [policy.pk])
    assert not refused("DELETE FROM training_modelversion WHERE id = %s", [unused.pk])
    assert list(ModelVersion.objects.values_list("pk", flat=True)) == [policy.pk]


@on_postgresql
def test_a_prompt_with_responses_only_cannot_be_deleted_but_one_without_can(project):
    answered, bare = PromptFactory(project=project), PromptFactory(project=project)
    ResponseFactory(prompt=answered)
    assert refused("DELETE FROM annotation_prompt WHERE id = %s", [answered.pk])
    assert not refused("DELETE FROM annotation_prompt WHERE id = %s", [bare.pk])
    assert list(Prompt.objects.values_list("pk", flat=True)) == [answered.pk]


@on_postgresql
def test_moving_a_compared_prompt_to_another_project_is_refused_and_an_uncompared_one_is_not(project):
    comparison = make_comparison(project=project)
    loose = PromptFactory(project=project)
    ResponseFactory(prompt=loose)
    other = ProjectFactory()
    error = refusal("UPDATE annotation_prompt SET project_id = %s WHERE id = %s", [other.pk, comparison.prompt_id])
    assert error is not None
    assert error.__cause__.diag.message_detail == (
        f"Key (id, project_id)=({comparison.prompt_id}, {project.pk}) is still referenced from table"
        ' "annotation_comparison".'
    )
    # Its responses refer to it by id alone, which does not change.
    assert not refused("UPDATE annotation_prompt SET project_id = %s WHERE id = %s", [other.pk, loose.pk])


@on_postgresql
def test_truncating_a_referenced_table_alone_is_refused_and_with_its_referrers_allowed(project):
    make_preference(comparison=make_comparison(project=project), annotator=UserFactory(), choice="a")
    error = refusal("TRUNCATE annotation_response")
    assert 'table "annotation_comparison" references it' in str(error)
    assert Comparison.objects.count() == 1
    tables = "annotation_response, annotation_comparison, annotation_preference, annotation_assignment"
    assert not refused(f"TRUNCATE {tables}")
    assert not Comparison.objects.exists()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_deleting_a_referenced_table_s_rows_under_repeatable_read_is_refused_with_a_reason():
    bare = PromptFactory(project=ProjectFactory())
    with _own_connection() as conn, conn.cursor() as cursor:
        cursor.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        with pytest.raises(psycopg2.Error, match="needs READ COMMITTED or SERIALIZABLE"):
            cursor.execute("DELETE FROM annotation_prompt WHERE id = %s", [bare.pk])
    assert Prompt.objects.filter(pk=bare.pk).exists()


@contextlib.contextmanager
def _own_connection():
    """A connection of its own to the test database, closed afterwards (psycopg2's own context
    manager only ends the transaction)."""
    settings = connection.settings_dict
    conn = psycopg2.connect(
        dbname=settings["NAME"],
        user=settings["USER"],
        password=settings["PASSWORD"],
        host=settings["HOST"],
        port=settings["PORT"] or 5432,
    )
    try:
        yield conn
    finally:
        conn.close()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_rows_this_transaction_wrote_are_not_locked_and_older_referenced_rows_are():
    """A FOR KEY SHARE lock leaves the locker's id in the row's xmax: the prompt committed before the
    transaction gets one, the prompt written inside it (which nobody else can see) does not."""
    project = ProjectFactory()
    old_prompt = PromptFactory(project=project)
    with transaction.atomic(), connection.cursor() as cursor:
        new_prompt = PromptFactory(project=project)
        for prompt in (old_prompt, new_prompt):
            cursor.execute(
                "INSERT INTO annotation_response (prompt_id, text, content_hash, source, generation, created_at)"
                " VALUES (%s, 'r', 'h', 'm', '{}', CURRENT_TIMESTAMP)",
                [prompt.pk],
            )
        cursor.execute("SELECT id, xmax::text FROM annotation_prompt WHERE id IN %s", [(old_prompt.pk, new_prompt.pk)])
        xmax = dict(cursor.fetchall())
    assert xmax[new_prompt.pk] == "0"
    assert xmax[old_prompt.pk] != "0"


def _in_thread(work):
    """Starts work() in a thread; returns a function that waits for it and gives its error or None."""
    outcome: list = []

    def run():
        try:
            work()
            outcome.append(None)
        except Exception as error:  # noqa: BLE001 - handed to the test
            outcome.append(error)

    thread = threading.Thread(target=run)
    thread.start()

    def join(timeout: float = 30):
        thread.join(timeout)
        assert not thread.is_alive(), "the other transaction never finished"
        return outcome[0]

    return join


def _waiting_on_a_lock(conn_pid: int) -> bool:
    with _own_connection() as watcher, watcher.cursor() as cursor:
        cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [conn_pid])
        row = cursor.fetchone()
    return row is not None and row[0] == "Lock"


def _wait_until_blocked(pid: int) -> None:
    deadline = time.monotonic() + 20
    while not _waiting_on_a_lock(pid):
        assert time.monotonic() < deadline, "the second transaction was not blocked"
        time.sleep(0.05)


def _race(first: str, second: str) -> Exception | None:
    """Runs `first` on a connection of its own and leaves it uncommitted; runs `second` on another,
    which must then wait for the first's locks; commits the first and returns the second's error."""
    with _own_connection() as one, _own_connection() as two:
        with one.cursor() as cursor:
            cursor.execute(first)
        pid = two.get_backend_pid()

        def run():
            with two.cursor() as cursor:
                cursor.execute(second)
            two.commit()

        join = _in_thread(run)
        _wait_until_blocked(pid)
        one.commit()
        return join()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_delete_racing_a_label_that_was_written_first_waits_for_it_and_is_refused():
    project = ProjectFactory()
    comparison = make_comparison(project=project)
    label = _insert_preference(project.pk, comparison.pk, UserFactory().pk)
    # The delete waits on the label's FOR KEY SHARE lock of the comparison, then sees the label.
    error = _race(label, f"DELETE FROM annotation_comparison WHERE id = {comparison.pk}")
    assert isinstance(error, psycopg2.errors.ForeignKeyViolation)
    assert Comparison.objects.filter(pk=comparison.pk).exists()
    assert Preference.objects.filter(comparison=comparison).count() == 1


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_label_racing_a_delete_that_was_written_first_waits_for_it_and_is_refused():
    project = ProjectFactory()
    comparison = make_comparison(project=project)
    label = _insert_preference(project.pk, comparison.pk, UserFactory().pk)
    # Locking the comparison waits for the delete, then finds the row gone.
    error = _race(f"DELETE FROM annotation_comparison WHERE id = {comparison.pk}", label)
    assert isinstance(error, psycopg2.errors.ForeignKeyViolation)
    assert not Comparison.objects.filter(pk=comparison.pk).exists()
    assert not Preference.objects.exists()


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_label_on_a_comparison_being_counted_is_not_blocked_by_the_count_update():
    """FOR KEY SHARE does not conflict with an update that leaves the key alone (label_count)."""
    project = ProjectFactory()
    comparison = make_comparison(project=project)
    with _own_connection() as counter, _own_connection() as writer:
        with counter.cursor() as c:
            c.execute("UPDATE annotation_comparison SET label_count = label_count WHERE id = %s", [comparison.pk])
        with writer.cursor() as w:
            w.execute("SET lock_timeout = '5s'")
            w.execute(_insert_preference(project.pk, comparison.pk, UserFactory().pk))
        writer.commit()
        counter.commit()
    assert Preference.objects.filter(comparison=comparison).count() == 1
