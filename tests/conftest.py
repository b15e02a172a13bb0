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
# Real human preference data (HH-RLHF and others), kept beside the checkout, not in it.
SHARED_DATA = Path(os.environ.get("RLHF_TEST_DATA") or ROOT.parent / "shared" / "data")


def pytest_configure(config):
    # CI exists to prove the suite on the production engines; running it on SQLite there would be
    # a silent downgrade, so it is refused outright.
    if os.environ.get("CI"):
        if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
            raise pytest.UsageError("CI must run the suite on PostgreSQL: set DATABASE_URL (./dev test does)")
        if not settings.CELERY_BROKER_URL.startswith("redis://"):
            raise pytest.UsageError("CI must run the suite on Redis: set CELERY_BROKER_URL (./dev test does)")


@pytest.fixture(autouse=True)
def _fast_passwords(settings):
    # The factories set a password on every user; PBKDF2 at full strength costs most of a small
    # test's time on this CPU. Subprocesses (manage.py, workers) keep the real hashers.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


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
        pytest.fail(
            f"{path} is missing: the suite reads real preference data from ../shared/data beside the "
            "checkout; set RLHF_TEST_DATA to the folder that holds hh-harmless-dev.jsonl"
        )
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
def start_worker(transactional_db):
    """Starts `celery worker` subprocesses on the test database and the real broker; each is
    stopped (and, if it hangs, killed) after the test. Returns the Popen."""
    procs = []

    def start(queues: str = "celery", name: str = "worker") -> subprocess.Popen:
        log = ROOT / "var" / "test-logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "config",
                    "worker",
                    "-Q",
                    queues,
                    "--pool",
                    "solo",
                    "--without-gossip",
                    "--without-mingle",
                    "--loglevel",
                    "INFO",
                    "-n",
                    f"{name}-{os.getpid()}@%h",
                ],
                env=subprocess_env(),
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


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
