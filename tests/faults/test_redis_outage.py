"""Redis stopped while annotators label: logging in and labelling go on, because neither the broker
nor the shared cache is on that path; a reward run queued meanwhile stays queued (the request that
queued it does not fail), and runs once Redis is back.

The shared Redis on 6379 is not touched: the test starts a redis-server of its own on a free port,
points a gpu worker, this process's Celery app and the shared cache at it, and stops and restarts it.
"""

from __future__ import annotations

import json
import logging

import pytest
from django.test import Client
from kombu import pools

from annotation.models import Preference, Role
from config.celery import app as celery_app
from tests.factories import MembershipFactory, UserFactory, make_comparison
from tests.training.test_reward_task import FAST, wait_for
from training.loop import loop_tick
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.slow


def _reset_celery_connections() -> None:
    # The app keeps pools of broker connections and producers (kombu's, per URL, process-wide);
    # dropped, they are rebuilt from the current configuration on the next send.
    pools.reset()
    celery_app._pool = None
    celery_app.amqp._producer_pool = None


@pytest.fixture
def on_private_redis(private_redis, monkeypatch, settings):
    """This process's Celery app, the workers it starts and the shared cache, all on private_redis."""
    saved = celery_app.conf.broker_url, celery_app.conf.result_backend
    monkeypatch.setenv("CELERY_BROKER_URL", private_redis.url)
    monkeypatch.setenv("CELERY_RESULT_BACKEND", private_redis.url.replace("/0", "/1"))
    celery_app.conf.broker_url = private_redis.url
    celery_app.conf.result_backend = private_redis.url.replace("/0", "/1")
    # Publishing to a dead broker gives up after a few quick tries instead of Celery's default.
    monkeypatch.setitem(celery_app.conf, "broker_connection_timeout", 1)
    _reset_celery_connections()
    settings.CACHES = {
        **settings.CACHES,
        "shared": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": private_redis.url.replace("/0", "/2"),
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        },
    }
    yield private_redis
    celery_app.conf.broker_url, celery_app.conf.result_backend = saved
    _reset_celery_connections()


def test_labelling_goes_on_without_redis_and_training_resumes_when_it_is_back(
    start_worker, labelled_project, on_private_redis, settings, caplog
):
    project = labelled_project
    annotator = UserFactory(username="keeps-going")
    annotator.set_password("a long enough password 1")
    annotator.save()
    admin = UserFactory(username="queues-training")
    MembershipFactory(project=project, user=annotator, role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=admin, role=Role.ADMIN)
    fresh = [make_comparison(project=project) for _ in range(3)]

    start_worker("gpu", name="gpu-redis-outage")
    on_private_redis.stop()
    assert not _answers(on_private_redis)

    # Log in through the real form (the login throttle's cache is down: it fails open) and label.
    client = Client(enforce_csrf_checks=True)
    page = client.get("/accounts/login/")
    csrf = page.cookies["csrftoken"].value
    with caplog.at_level(logging.WARNING, logger="config.auth"):
        login = client.post(
            "/accounts/login/",
            {"username": "keeps-going", "password": "a long enough password 1", "csrfmiddlewaretoken": csrf},
        )
    assert login.status_code == 302, login.content[:500]
    assert "shared cache is unavailable" in caplog.text
    csrf = client.cookies["csrftoken"].value
    assert client.get(f"/p/{project.slug}/").status_code == 200
    labelled = []
    for _ in range(len(fresh)):
        answer = client.post(
            f"/p/{project.slug}/next", json.dumps({"exclude": labelled}), "application/json", HTTP_X_CSRFTOKEN=csrf
        ).json()["assignment"]
        body = {
            "comparison_id": answer["comparison_id"],
            "choice": "a",
            "strength": 2,
            "shown_left": answer["shown_left"],
        }
        saved = client.post(f"/p/{project.slug}/submit", json.dumps(body), "application/json", HTTP_X_CSRFTOKEN=csrf)
        assert saved.status_code == 200 and saved.json()["created"], saved.content
        labelled.append(answer["comparison_id"])
    assert Preference.objects.filter(annotator=annotator).count() == 3

    # An admin queues a reward run: the broker refuses the message, the request still succeeds.
    admin_client = Client()
    admin_client.force_login(admin)
    queued = admin_client.post(
        f"/api/v1/projects/{project.slug}/training-runs/",
        json.dumps({"kind": "reward", "config": {**FAST, "promotion": "always"}}),
        content_type="application/json",
    )
    assert queued.status_code == 201, queued.content
    run = TrainingRun.objects.get(pk=queued.json()["id"])
    assert run.status == "queued"

    # Redis comes back; the loop's next tick sends the run again and the waiting worker trains it.
    on_private_redis.start()
    settings.TRAINING_REDISPATCH_AFTER = 0
    _reset_celery_connections()
    loop_tick()
    run = wait_for(run, {"succeeded", "failed"}, timeout=240)
    assert run.status == "succeeded", run.error
    assert ModelVersion.objects.get(run=run).is_active


def _answers(server) -> bool:
    try:
        return server.answers()
    except Exception:  # noqa: BLE001 - refused: it is down
        return False
