"""config.prepared: statements prepared once per connection, prepared again on a new one, and the
same answers as the SQL run directly."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.test import Client

from annotation.models import Preference
from config import prepared
from tests.factories import make_comparison

pytestmark = pytest.mark.django_db(transaction=True)

on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are PostgreSQL's")


def test_placeholders_become_numbered_parameters():
    assert prepared._numbered("SELECT %s + %s") == ("SELECT $1 + $2", 2)
    assert prepared._numbered("SELECT %(a)s, %(b)s, %(a)s WHERE x LIKE 'y%%'") == (
        "SELECT $1, $2, $1 WHERE x LIKE 'y%%'",
        ("a", "b"),
    )
    with pytest.raises(ValueError, match="not both"):
        prepared._numbered("SELECT %s, %(a)s")


def _run(name, sql, params):
    with connection.cursor() as cursor:
        prepared.execute(cursor, name, sql, params)
        return cursor.fetchall()


def _prepared_names() -> set[str]:
    with connection.cursor() as cursor:
        cursor.execute("SELECT name FROM pg_prepared_statements")
        return {row[0] for row in cursor.fetchall()}


@on_postgresql
def test_the_answers_are_those_of_the_sql_itself():
    sql = "SELECT %(n)s::int * 2, %(t)s::text || '%%', %(n)s::int"
    assert _run("t_same_answers", sql, {"n": 21, "t": "x"}) == [(42, "x%", 21)]
    assert _run("t_same_answers", sql, {"n": 5, "t": "y"}) == [(10, "y%", 5)]
    with connection.cursor() as cursor:
        cursor.execute("SELECT %(n)s::int * 2, %(t)s::text || '%%', %(n)s::int", {"n": 5, "t": "y"})
        assert cursor.fetchall() == [(10, "y%", 5)]


@on_postgresql
def test_a_wrong_number_of_parameters_is_refused_before_the_server():
    with pytest.raises(ValueError, match="takes 2 parameters, 1 given"):
        prepared.statement("t_count", "SELECT %s::int + %s::int", [1])


@on_postgresql
def test_prepared_once_per_connection_and_again_after_a_reconnect():
    assert _run("t_reconnect", "SELECT %s::int + 1", [1]) == [(2,)]
    assert "t_reconnect" in _prepared_names()
    connection.close()
    # A new server session knows no prepared statements: the helper must notice and prepare again.
    assert _run("t_reconnect", "SELECT %s::int + 1", [2]) == [(3,)]
    assert "t_reconnect" in _prepared_names()


@on_postgresql
def test_a_statement_prepared_in_a_rolled_back_transaction_is_still_there():
    # PREPARE is not undone by ROLLBACK, so the helper must not prepare it a second time.
    with pytest.raises(RuntimeError), transaction.atomic():
        assert _run("t_rollback", "SELECT %s::int", [7]) == [(7,)]
        raise RuntimeError
    assert _run("t_rollback", "SELECT %s::int", [8]) == [(8,)]


@on_postgresql
def test_the_queue_and_the_login_look_ups_run_prepared(project, annotator):
    make_comparison(project=project)
    client = Client()
    client.force_login(annotator, backend="config.auth.Backend")
    response = client.post(f"/p/{project.slug}/next", b"{}", content_type="application/json")
    assert response.status_code == 200 and response.json()["assignment"] is not None
    names = _prepared_names()
    assert {"rlhf_session_load", "rlhf_user_load", "rlhf_project_to_label", "rlhf_held_lease"} <= names
    assert {"rlhf_pick_regular", "rlhf_still_open_regular", "rlhf_lease", "rlhf_display"} <= names
    comparison_id = response.json()["assignment"]["comparison_id"]
    answer = {"comparison_id": comparison_id, "choice": "tie"}
    assert client.post(f"/p/{project.slug}/submit", answer, content_type="application/json").status_code == 200
    assert {"rlhf_lock_comparison", "rlhf_submit_state", "rlhf_insert_label", "rlhf_count_label"} <= _prepared_names()
    preference = Preference.objects.get(comparison_id=comparison_id)
    assert (preference.annotator, preference.choice, preference.project) == (annotator, "tie", project)
