from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from annotation.models import Role
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = ROOT.parent / "shared" / "data"


def pytest_configure(config):
    # CI exists to prove the suite on the production engines; running it on SQLite there would be
    # a silent downgrade, so it is refused outright.
    if os.environ.get("CI"):
        if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
            raise pytest.UsageError("CI must run the suite on PostgreSQL: set DATABASE_URL (./dev test does)")
        if not settings.CELERY_BROKER_URL.startswith("redis://"):
            raise pytest.UsageError("CI must run the suite on Redis: set CELERY_BROKER_URL (./dev test does)")


@pytest.fixture
def project(db):
    return ProjectFactory()


@pytest.fixture
def annotator(project):
    user = UserFactory(username="ann")
    MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    return user


@pytest.fixture
def project_admin(project):
    user = UserFactory(username="padmin")
    MembershipFactory(project=project, user=user, role=Role.ADMIN)
    return user


@pytest.fixture
def staff(db):
    return UserFactory(username="staff", is_staff=True, is_superuser=True)


@pytest.fixture
def hh_path() -> Path:
    path = SHARED_DATA / "hh-harmless-dev.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: the suite expects ../shared/data beside the checkout")
    return path


def subprocess_env() -> dict[str, str]:
    """Environment for a subprocess (manage.py, a Celery worker) that must use the test database."""
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    if db["ENGINE"] == "django.db.backends.postgresql":
        port = db.get("PORT") or 5432
        auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
        env["DATABASE_URL"] = f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{port}/{db['NAME']}"
    else:
        env["DATABASE_URL"] = f"sqlite:///{db['NAME']}"
    return env


@pytest.fixture
def manage():
    """Runs manage.py in a subprocess on the test database; returns the CompletedProcess."""

    def run(*args: str, stdin: bytes | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args],
            input=stdin,
            capture_output=True,
            env=subprocess_env(),
            cwd=ROOT,
            timeout=timeout,
        )

    return run
