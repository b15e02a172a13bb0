"""A backup taken with pg_dump -Fc and restored with pg_restore into a fresh database loses nothing:
every table has the same rows, every preference the same content, and the app runs on the copy
(migrations up to date, the same export byte for byte). docs/operations.md describes the procedure;
scripts/backup_restore_check.sh is the same check for an operator to run."""

from __future__ import annotations

import subprocess
import sys

import psycopg2
import pytest
from django.conf import settings
from django.utils import timezone

from annotation.api.services import api_token_create
from annotation.models import Assignment, Preference, Role
from tests.conftest import ROOT, subprocess_env
from tests.factories import MembershipFactory, ProjectFactory, UserFactory
from tests.integrity.test_export_counts import fill
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.slow


def url(dbname: str) -> str:
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db.get('PORT') or 5432}/{dbname}"


def fingerprint(dbname: str) -> dict[str, object]:
    """Row count of every table, the sequences' positions, and an md5 of every preference row."""
    with psycopg2.connect(url(dbname)) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
        tables = [row[0] for row in cursor.fetchall()]
        out: dict[str, object] = {}
        for table in tables:
            cursor.execute(f'SELECT count(*) FROM "{table}"')
            out[table] = cursor.fetchone()[0]
        cursor.execute("SELECT sequencename, last_value FROM pg_sequences WHERE schemaname = 'public'")
        out["sequences"] = sorted(cursor.fetchall())
        cursor.execute("SELECT md5(string_agg(p::text, E'\\n' ORDER BY p.id)) FROM annotation_preference p")
        out["preferences-md5"] = cursor.fetchone()[0]
    return out


@pytest.fixture
def scratch_db():
    name = settings.DATABASES["default"]["NAME"] + "_restored"
    admin = psycopg2.connect(url("postgres"))
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        yield name
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def full_database(transactional_db):
    project = ProjectFactory(slug="precious", guidelines="Pick the *kinder* answer.\n\n\u05e9\u05dc\u05d5\u05dd")
    annotators = [UserFactory(username=f"paid-{i}") for i in range(4)]
    for user in annotators:
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    fill(project, annotators, seed=7)
    preference = Preference.objects.filter(project=project).first()
    preference.rationale = "NUL-free but odd: \u202e\u200b 'quotes' \"and\" \\backslashes\\ \U0001f600"
    preference.time_spent_ms = 12345
    preference.save()
    now = timezone.now()
    Assignment.objects.create(
        project=project,
        comparison=preference.comparison,
        annotator=annotators[0],
        shown_left="b",
        leased_at=now,
        expires_at=now + timezone.timedelta(minutes=5),
    )
    run = TrainingRun.objects.create(
        project=project, kind="reward", status="succeeded", metrics={"acc": 0.75}, started_at=now, finished_at=now
    )
    ModelVersion.objects.create(project=project, kind="reward", version=1, artifact_path="/m/1", base="b", run=run)
    api_token_create(user=annotators[0], name="laptop")
    return project


def export(dbname: str) -> bytes:
    env = {**subprocess_env(), "DATABASE_URL": url(dbname)}
    result = subprocess.run(
        [sys.executable, "manage.py", "export_preferences", "--project", "precious", "--include-ties"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def test_a_dump_restored_into_a_fresh_database_has_every_row_and_runs_the_app(full_database, scratch_db, tmp_path):
    source = settings.DATABASES["default"]["NAME"]
    dump = tmp_path / "backup.dump"
    subprocess.run(["pg_dump", "--format=custom", "--no-owner", f"--file={dump}", url(source)], check=True)
    restored = subprocess.run(
        ["pg_restore", "--no-owner", "--exit-on-error", f"--dbname={url(scratch_db)}", str(dump)],
        capture_output=True,
        text=True,
    )
    assert restored.returncode == 0, restored.stderr

    before, after = fingerprint(source), fingerprint(scratch_db)
    assert before["annotation_preference"] > 1000
    assert after == before

    # The app runs on the copy: its schema is the current one, and it exports the same bytes.
    env = {**subprocess_env(), "DATABASE_URL": url(scratch_db)}
    migrate = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--check"], cwd=ROOT, env=env, capture_output=True
    )
    assert migrate.returncode == 0, migrate.stdout.decode() + migrate.stderr.decode()
    exported = export(source)
    assert exported.count(b"\n") == before["annotation_preference"]
    assert export(scratch_db) == exported

    # The comparison is not blind: a label added after the dump shows up as a difference.
    newest = Preference.objects.order_by("-id").first()
    Preference.objects.filter(pk=newest.pk).update(rationale="changed after the backup")
    assert fingerprint(source)["preferences-md5"] != after["preferences-md5"]


def test_the_operators_check_script_passes_on_a_live_database(full_database):
    result = subprocess.run(
        ["bash", str(ROOT / "scripts" / "backup_restore_check.sh")],
        env={**subprocess_env(), "DATABASE_URL": url(settings.DATABASES["default"]["NAME"])},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "backup round trip OK" in result.stdout
