"""Writes on the training side: runs and the model registry.

A run's life: training_run_create (queued) -> training_run_claim (running, by exactly one worker)
-> training_run_report_progress ... -> training_run_finish (succeeded / failed / cancelled).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from annotation.models import Project
from training.models import ACTIVE_STATUSES, FINISHED_STATUSES, ModelKind, ModelVersion, RunKind, RunStatus, TrainingRun

log = logging.getLogger(__name__)


@dataclass
class TrainingError(Exception):
    """A training request that cannot be carried out, with a message fit to show the user."""

    message: str
    code: str = "invalid"

    def __str__(self) -> str:
        return self.message


def training_run_create(
    *,
    project: Project,
    kind: str,
    config: dict | None = None,
    created_by=None,
    parent_model: ModelVersion | None = None,
) -> TrainingRun:
    """Queues a run and, once the row is committed, sends its id to the gpu queue."""
    if kind not in RunKind.values:
        raise TrainingError(f"unknown run kind {kind!r}; expected one of {', '.join(RunKind.values)}")
    if config is not None and not isinstance(config, dict):
        raise TrainingError("config must be a JSON object")
    if parent_model is not None and parent_model.project_id != project.pk:
        raise TrainingError("the parent model belongs to another project")
    try:
        with transaction.atomic():
            run = TrainingRun.objects.create(
                project=project, kind=kind, config=config or {}, created_by=created_by, parent_model=parent_model
            )
    except IntegrityError:
        # The partial unique index run_one_active_per_kind said no: a run of this kind is already
        # queued or running for the project.
        raise TrainingError(f"a {kind} run is already queued or running for this project", code="conflict") from None
    transaction.on_commit(lambda: _dispatch(run.pk))
    return run


def _dispatch(run_id: int) -> None:
    # Imported here: training.tasks is the one module of the web side allowed to reach the worker
    # code, and importing it lazily keeps Celery task registration out of import cycles.
    from training.tasks import training_run_execute

    try:
        training_run_execute.delay(run_id)
    except Exception:
        # The broker (Redis) is down. The run is committed as queued, which is the truth: the
        # loop's tick sends queued runs again (training_runs_redispatch) once the broker is back,
        # so the request that queued it need not fail.
        log.warning(
            "run %s is queued but the broker refused its message; the loop will resend it", run_id, exc_info=True
        )


def training_runs_redispatch(*, queued_for_seconds: float) -> list[int]:
    """Sends again the ids of runs queued for longer than `queued_for_seconds`: their message was
    refused (the broker was down) or lost with the broker. A duplicate message is harmless: the
    claim lets exactly one of them start the run. Returns the ids it sent."""
    cutoff = timezone.now() - timezone.timedelta(seconds=queued_for_seconds)
    waiting = list(
        TrainingRun.objects.filter(status=RunStatus.QUEUED, created_at__lte=cutoff).values_list("id", flat=True)
    )
    for run_id in waiting:
        _dispatch(run_id)
    return waiting


def training_run_claim(*, run_id: int) -> bool:
    """queued -> running, for exactly one caller. A redelivered message finds the run no longer
    queued, updates no row, and returns False."""
    now = timezone.now()
    claimed = TrainingRun.objects.filter(pk=run_id, status=RunStatus.QUEUED).update(
        status=RunStatus.RUNNING, started_at=now, heartbeat_at=now
    )
    return claimed == 1


def training_run_report_progress(
    *, run_id: int, step: int, total_steps: int | None, eta_seconds: float | None = None, metrics: dict | None = None
) -> bool:
    """Records progress of a running run. Returns False when the run is no longer running (it was
    cancelled, or reaped), which tells the caller to stop."""
    fields = {"step": step, "total_steps": total_steps, "eta_seconds": eta_seconds, "heartbeat_at": timezone.now()}
    if total_steps:
        fields["progress"] = min(1.0, max(0.0, step / total_steps))
    if metrics is not None:
        fields["metrics"] = metrics
    return TrainingRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(**fields) == 1


def training_run_finish(*, run_id: int, status: str, metrics: dict | None = None, error: str = "") -> bool:
    """running -> a final status. Only a running run can finish, so a cancelled run stays cancelled."""
    if status not in FINISHED_STATUSES:
        raise TrainingError(f"{status!r} is not a final status")
    fields = {"status": status, "finished_at": timezone.now(), "error": error[:20000]}
    if metrics is not None:
        fields["metrics"] = metrics
    if status == RunStatus.SUCCEEDED:
        fields["progress"] = 1.0
    return TrainingRun.objects.filter(pk=run_id, status=RunStatus.RUNNING).update(**fields) == 1


def training_runs_reap(*, stale_after_seconds: float) -> list[int]:
    """Fails running runs whose worker stopped reporting: it was killed (OOM, kill -9, a lost
    machine) and will never finish them. Their message was acknowledged late, so the broker may
    redeliver it, but the claim refuses a run that is not queued; the loop or an admin starts a
    new run instead. Returns the ids it failed."""
    cutoff = timezone.now() - timezone.timedelta(seconds=stale_after_seconds)
    stale = list(
        TrainingRun.objects.filter(status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).values_list("id", flat=True)
    )
    if stale:
        TrainingRun.objects.filter(pk__in=stale, status=RunStatus.RUNNING, heartbeat_at__lt=cutoff).update(
            status=RunStatus.FAILED,
            finished_at=timezone.now(),
            error=f"the worker stopped reporting for over {stale_after_seconds:.0f} s (killed or lost); "
            "the active model was left as it was",
        )
    return stale


def training_run_cancel(*, run: TrainingRun) -> TrainingRun:
    """Cancels a queued or running run. A running run's worker sees the status change at its next
    progress report and kills the training subprocess."""
    updated = TrainingRun.objects.filter(pk=run.pk, status__in=ACTIVE_STATUSES).update(
        status=RunStatus.CANCELLED, finished_at=timezone.now()
    )
    run.refresh_from_db()
    if not updated:
        raise TrainingError(f"run {run.pk} is already {run.status}", code="conflict")
    return run


@transaction.atomic
def model_version_register(
    *,
    project: Project,
    kind: str,
    artifact_path: str,
    base: str,
    run: TrainingRun | None = None,
    parent: ModelVersion | None = None,
    metrics: dict | None = None,
) -> ModelVersion:
    """Adds a model to the registry as the next version of its kind, inactive until promoted."""
    # Locking the project row serialises registrations, so two runs finishing together cannot
    # both take the same next version number.
    Project.objects.select_for_update().get(pk=project.pk)
    latest = ModelVersion.objects.filter(project=project, kind=kind).aggregate(v=Max("version"))["v"] or 0
    version = ModelVersion(
        project=project,
        kind=kind,
        version=latest + 1,
        artifact_path=artifact_path,
        base=base,
        run=run,
        parent=parent,
        metrics=metrics or {},
    )
    version.full_clean()
    version.save()
    return version


@transaction.atomic
def model_version_promote(*, version: ModelVersion) -> ModelVersion:
    """Makes `version` the active model of its kind. The old one is switched off first, in the same
    transaction, so the one-active-per-kind index never sees two."""
    ModelVersion.objects.filter(project_id=version.project_id, kind=version.kind, is_active=True).exclude(
        pk=version.pk
    ).update(is_active=False)
    ModelVersion.objects.filter(pk=version.pk).update(is_active=True, promoted_at=timezone.now())
    version.refresh_from_db()
    return version


@transaction.atomic
def model_version_rollback(*, project: Project, kind: str) -> ModelVersion:
    """Reactivates the version that was active before the current one: the most recently promoted
    other version, or failing that the newest older version."""
    if kind not in ModelKind.values:
        raise TrainingError(f"unknown model kind {kind!r}")
    versions = ModelVersion.objects.select_for_update().filter(project=project, kind=kind)
    current = versions.filter(is_active=True).first()
    if current is None:
        raise TrainingError(f"no active {kind} model to roll back from", code="conflict")
    previous = (
        versions.exclude(pk=current.pk).filter(promoted_at__isnull=False).order_by("-promoted_at").first()
        or versions.filter(version__lt=current.version).order_by("-version").first()
    )
    if previous is None:
        message = f"{current.label} is the first {kind} model; there is nothing to roll back to"
        raise TrainingError(message, code="conflict")
    return model_version_promote(version=previous)
