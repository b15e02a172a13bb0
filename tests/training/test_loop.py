"""The loop's decisions: which run comes next for a project, and when nothing should happen."""

from __future__ import annotations

import pytest
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tests.factories import UserFactory, make_comparison, make_preference
from training.loop import loop_tick, next_run_for_project
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def auto_project(project):
    project.auto_training = True
    project.retrain_threshold = 3
    project.save()
    return project


def label(project, n, choice="a"):
    user = UserFactory()
    for _ in range(n):
        strength = 2 if choice in ("a", "b") else None
        make_preference(comparison=make_comparison(project=project), annotator=user, choice=choice, strength=strength)


def finished(project, kind, **fields):
    now = timezone.now()
    return TrainingRun.objects.create(
        project=project, kind=kind, status=fields.pop("status", "succeeded"), started_at=now, finished_at=now, **fields
    )


def test_enough_new_preferences_queue_a_reward_run_and_dispatch_it(auto_project, django_capture_on_commit_callbacks):
    label(auto_project, 2)
    assert next_run_for_project(auto_project) is None
    label(auto_project, 1)
    with django_capture_on_commit_callbacks() as callbacks:
        run = next_run_for_project(auto_project)
    assert run.kind == "reward" and run.status == "queued"
    assert len(callbacks) == 1, "the run must be sent to the worker once its row is committed"


def test_ties_and_labels_before_the_watermark_do_not_count(auto_project):
    label(auto_project, 5, choice="tie")
    assert next_run_for_project(auto_project) is None
    label(auto_project, 3)
    from annotation.models import Preference

    finished(auto_project, "ppo")  # an unrelated finished run does not reset the count
    finished(auto_project, "reward", data_watermark=Preference.objects.order_by("-id").first().pk)
    assert next_run_for_project(auto_project) is None
    label(auto_project, 3)
    assert next_run_for_project(auto_project).kind == "reward"


def test_a_promoted_reward_model_is_followed_by_ppo_from_the_active_policy(auto_project):
    policy = ModelVersion.objects.create(
        project=auto_project, kind="policy", version=1, artifact_path="/p1", base="b", is_active=True
    )
    finished(auto_project, "reward", metrics={"promotion": {"promoted": True}}, data_watermark=10**9)
    run = next_run_for_project(auto_project)
    assert run.kind == "ppo" and run.parent_model == policy


def test_a_reward_model_that_was_not_promoted_starts_nothing(auto_project):
    finished(auto_project, "reward", metrics={"promotion": {"promoted": False}}, data_watermark=10**9)
    assert next_run_for_project(auto_project) is None


def test_a_successful_ppo_run_is_followed_by_generation_with_its_policy(auto_project):
    ppo = finished(auto_project, "ppo")
    new_policy = ModelVersion.objects.create(
        project=auto_project, kind="policy", version=2, artifact_path="/p2", base="b", run=ppo
    )
    run = next_run_for_project(auto_project)
    assert run.kind == "generate" and run.parent_model == new_policy


def test_nothing_starts_while_a_run_is_active_or_after_a_failure(auto_project):
    label(auto_project, 5)
    TrainingRun.objects.create(project=auto_project, kind="generate")
    assert next_run_for_project(auto_project) is None
    TrainingRun.objects.all().delete()
    finished(auto_project, "ppo", status="failed")
    # The failed PPO run is not retried; fresh labels still lead to a new reward run.
    assert next_run_for_project(auto_project).kind == "reward"


def test_the_tick_only_visits_projects_with_auto_training(auto_project):
    from tests.factories import ProjectFactory

    manual = ProjectFactory(retrain_threshold=1)
    label(manual, 3)
    label(auto_project, 3)
    queued = loop_tick()
    assert list(TrainingRun.objects.filter(pk__in=queued).values_list("project_id", flat=True)) == [auto_project.pk]


def test_the_schedule_is_a_periodic_task_editable_in_the_admin():
    task = PeriodicTask.objects.get(name="training loop")
    assert task.task == "training.tasks.loop_tick" and task.enabled
    assert task.interval.every == 60


def test_the_tick_fails_runs_whose_worker_stopped_reporting(project, settings):
    settings.TRAINING_HEARTBEAT_TIMEOUT = 60
    now = timezone.now()
    dead = TrainingRun.objects.create(
        project=project,
        kind="reward",
        status="running",
        started_at=now,
        heartbeat_at=now - timezone.timedelta(minutes=5),
    )
    alive = TrainingRun.objects.create(project=project, kind="ppo", status="running", started_at=now, heartbeat_at=now)
    loop_tick()
    dead.refresh_from_db()
    alive.refresh_from_db()
    assert dead.status == "failed" and "stopped reporting" in dead.error and dead.finished_at
    assert alive.status == "running"
