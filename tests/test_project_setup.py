"""The project as a newcomer and an operator meet it: settings, migrations, compose file, demo."""

from __future__ import annotations

import importlib
import re
import secrets
import shlex
import subprocess

import pytest
import yaml

from annotation.models import Comparison, Membership, Project, Prompt
from tests.conftest import ROOT

PRODUCTION_ENV = {
    "DEBUG": "0",
    "HTTPS": "1",
    "BEHIND_TLS_PROXY": "1",
    "ALLOWED_HOSTS": "rlhf.example.org",
}


def test_migrations_match_the_models(manage):
    result = manage("makemigrations", "--check", "--dry-run")
    assert result.returncode == 0, result.stdout.decode() + result.stderr.decode()


def test_check_deploy_is_clean_under_production_settings(manage, monkeypatch):
    for key, value in PRODUCTION_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SECRET_KEY", secrets.token_urlsafe(64))
    result = manage("check", "--deploy")
    output = result.stdout.decode() + result.stderr.decode()
    assert result.returncode == 0, output
    # HSTS preload is the one warning left, on purpose: submitting a domain to the browsers'
    # preload list is the operator's decision (README, "Production").
    assert re.findall(r"\((\w+\.\w+)\)", output) == ["security.W021"], output


def test_a_malformed_setting_is_a_clear_error(manage, monkeypatch):
    monkeypatch.setenv("DEBUG", "perhaps")
    result = manage("check")
    assert result.returncode != 0
    assert "DEBUG='perhaps' is not a boolean" in result.stderr.decode()


def _module_of(command: str) -> list[str]:
    """The project modules and files a compose command names."""
    names = []
    for part in re.split(r"&&|;", command):
        words = shlex.split(part.replace("sh -c", ""))
        if not words:
            continue
        if words[0] == "gunicorn":
            names.append(words[1].split(":")[0])
        elif words[0] == "celery":
            names.append(words[words.index("-A") + 1])
        elif words[0] == "python" and words[1] == "manage.py":
            names.append(f"file:manage.py:{words[2]}")
        else:
            raise AssertionError(f"unexpected command in docker-compose.yml: {part!r}")
    return names


def test_every_compose_service_runs_a_real_part_of_the_project():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "gpu-worker", "beat"} <= set(services)
    for name in ("web", "worker", "gpu-worker", "beat"):
        service = services[name]
        command = service["command"]
        command = command if isinstance(command, str) else " ".join(command)
        for target in _module_of(command.strip("'\"").removeprefix("sh -c ").strip('"')):
            if target.startswith("file:"):
                _, file, subcommand = target.split(":")
                assert (ROOT / file).exists()
                from django.core.management import get_commands

                assert subcommand in get_commands(), f"{name}: no management command {subcommand}"
            else:
                importlib.import_module(target)
        assert "healthcheck" in service or name == "beat", f"{name} has no healthcheck"
        assert "/artifacts" in " ".join(service["volumes"])
    gpu = services["gpu-worker"]
    assert "-Q gpu" in gpu["command"] and "--concurrency 1" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert "migrate" in services["web"]["command"]
    for name in ("postgres", "redis"):
        assert "healthcheck" in services[name]
    assert {"pgdata", "artifacts"} <= set(compose["volumes"])


@pytest.mark.django_db(transaction=True)
def test_the_demo_loads_once_with_its_accounts(manage, settings):
    # manage.py hashes with the real hashers; this process must be able to check those hashes.
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.PBKDF2PasswordHasher"]
    first = manage("load_demo")
    assert first.returncode == 0, first.stderr.decode()
    out = first.stdout.decode()
    for username in ("demo-admin", "annotator1", "annotator2"):
        assert username in out
    project = Project.objects.get(slug="demo")
    prompts = Prompt.objects.filter(project=project)
    assert prompts.count() >= 30
    for prompt in prompts:
        assert 2 <= prompt.responses.count() <= 4
    assert Membership.objects.filter(project=project).count() == 3
    counts = (prompts.count(), Comparison.objects.count())
    second = manage("load_demo")
    assert second.returncode == 0
    assert (prompts.count(), Comparison.objects.count()) == counts
    # The credentials it prints are the ones that log in.
    from django.contrib.auth import authenticate

    line = next(line for line in second.stdout.decode().splitlines() if line.strip().startswith("annotator1"))
    assert authenticate(username="annotator1", password=line.split()[1]) is not None


def test_the_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, re.S)
    assert blocks[0].strip().endswith("./dev up")
    assert blocks[1].strip() == "./dev test"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./dev test" in ci


def test_the_web_process_never_imports_torch(manage):
    code = "import django, sys; django.setup(); import config.urls, config.wsgi; print('torch' in sys.modules)"
    result = manage("shell", "--no-imports", "-c", code)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip().splitlines()[-1] == "False"


def test_demo_file_is_in_the_repository():
    assert (ROOT / "annotation" / "demo" / "demo.jsonl").exists()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "hh-harmless" not in tracked, "the HH data must not be copied into the repository"
