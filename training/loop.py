"""The closed loop, one step per project per tick of Celery beat.

    enough new preferences ──► reward run ──(promoted)──► PPO run ──(succeeded)──► generate run
            ▲                                                                          │
            └──────────────── new comparisons from the new policy's answers ◄─────────┘

Each step starts only when the one before it finished and nothing is queued or running for the
project, so a project never has two runs competing for its GPU worker. A failed step is not retried
by the loop: it waits for an admin, who sees the error on the training page.
"""

from __future__ import annotations

import logging

from django.conf import settings

from annotation.models import Choice, Preference, Project
from training import services
from training.models import ACTIVE_STATUSES, ModelKind, ModelVersion, RunKind, RunStatus, TrainingRun

log = logging.getLogger(__name__)


def new_preferences_since_last_reward_run(project: Project) -> int:
    watermark = (
        TrainingRun.objects.filter(project=project, kind=RunKind.REWARD, status=RunStatus.SUCCEEDED)
        .exclude(data_watermark=None)
        .order_by("-data_watermark")
        .values_list("data_watermark", flat=True)
        .first()
    )
    labels = Preference.objects.filter(project=project, choice__in=[Choice.A, Choice.B])
    if watermark is not None:
        labels = labels.filter(id__gt=watermark)
    return labels.count()


def next_run_for_project(project: Project) -> TrainingRun | None:
    """Queues the loop's next step for `project`, or returns None when there is nothing to do."""
    runs = TrainingRun.objects.filter(project=project)
    if runs.filter(status__in=ACTIVE_STATUSES).exists():
        return None
    last = runs.order_by("-created_at", "-id").first()
    if last is not None and last.status == RunStatus.SUCCEEDED:
        if last.kind == RunKind.REWARD and (last.metrics or {}).get("promotion", {}).get("promoted"):
            policy = ModelVersion.objects.filter(project=project, kind=ModelKind.POLICY, is_active=True).first()
            return services.training_run_create(project=project, kind=RunKind.PPO, parent_model=policy)
        if last.kind == RunKind.PPO:
            policy = ModelVersion.objects.filter(run=last).first()
            return services.training_run_create(project=project, kind=RunKind.GENERATE, parent_model=policy)
    if new_preferences_since_last_reward_run(project) >= project.retrain_threshold:
        return services.training_run_create(project=project, kind=RunKind.REWARD)
    return None


def loop_tick() -> list[int]:
    """One pass over the projects with auto-training on; returns the ids of the runs it queued.
    Runs whose worker died are failed first, so that they do not block their project for ever."""
    reaped = services.training_runs_reap(stale_after_seconds=settings.TRAINING_HEARTBEAT_TIMEOUT)
    if reaped:
        log.warning("loop: failed runs %s: their worker stopped reporting", reaped)
    resent = services.training_runs_redispatch(queued_for_seconds=settings.TRAINING_REDISPATCH_AFTER)
    if resent:
        log.info("loop: sent queued runs %s again (their message may have been refused or lost)", resent)
    queued = []
    for project in Project.objects.filter(auto_training=True):
        try:
            run = next_run_for_project(project)
        except services.TrainingError as exc:
            # A run queued by hand between our check and our insert: the next tick looks again.
            log.info("loop: %s: %s", project.slug, exc)
            continue
        if run is not None:
            log.info("loop: %s: queued %s run %s", project.slug, run.kind, run.pk)
            queued.append(run.pk)
    return queued
