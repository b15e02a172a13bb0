"""PostgreSQL restarted (every connection of the database cut, as a restart does): the web process
goes on serving without being restarted itself.

The shared PostgreSQL cluster is not restarted (other test runs use it): the test cuts every
backend of its own test database with pg_terminate_backend, which is what a restart looks like to
the app: its pooled connection is dead.
"""

from __future__ import annotations

import json

import psycopg2
import pytest
from django.conf import settings
from django.db import connection

from annotation.api.services import api_token_create
from annotation.models import Preference, Role
from tests.factories import MembershipFactory, UserFactory, make_comparison

from .conftest import http

pytestmark = pytest.mark.slow


def cut_every_connection() -> int:
    db = settings.DATABASES["default"]
    admin = psycopg2.connect(
        dbname="postgres",
        user=db["USER"],
        password=db.get("PASSWORD") or None,
        host=db["HOST"] or "127.0.0.1",
        port=db.get("PORT") or 5432,
    )
    admin.autocommit = True
    try:
        with admin.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                [db["NAME"]],
            )
            return cursor.fetchone()[0]
    finally:
        admin.close()


def test_the_web_process_keeps_serving_after_its_database_connections_are_cut(gunicorn, project):
    base, proc = gunicorn
    user = UserFactory(username="steady")
    MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    for _ in range(3):
        make_comparison(project=project)
    auth = {
        "Authorization": f"Token {api_token_create(user=user, name='fault').key}",
        "Content-Type": "application/json",
    }
    api = f"{base}/api/v1/projects/{project.slug}/queue/"

    def label_one() -> int:
        status, body = http(api + "next/", method="POST", headers=auth, body=b"{}")
        assert status == 200, body
        comparison_id = json.loads(body)["comparison_id"]
        answer = json.dumps({"comparison_id": comparison_id, "choice": "a", "strength": 2}).encode()
        status, body = http(api + "submit/", method="POST", headers=auth, body=answer)
        assert status == 201, body
        return comparison_id

    labelled = [label_one()]
    for _ in range(2):
        # The web process now holds a pooled connection; cut it (and ours) as a restart would.
        assert cut_every_connection() >= 1
        connection.close()
        # The very next request, a write, succeeds: the dead connection is noticed and replaced.
        labelled.append(label_one())
    status, _ = http(f"{base}/healthz")
    assert status == 200
    assert proc.poll() is None  # the same gunicorn all along, never restarted
    assert len(set(labelled)) == 3
    assert sorted(Preference.objects.filter(annotator=user).values_list("comparison_id", flat=True)) == sorted(labelled)
