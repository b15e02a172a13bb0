"""The model side of the loop: training runs and the registry of trained models.

The web process and the workers talk only through these rows (and Celery messages that carry ids).
"""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import Q


class RunKind(models.TextChoices):
    REWARD = "reward", "Reward model"
    PPO = "ppo", "PPO policy update"
    GENERATE = "generate", "Generate responses"


class RunStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = [RunStatus.QUEUED, RunStatus.RUNNING]
FINISHED_STATUSES = [RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.CANCELLED]


class ModelKind(models.TextChoices):
    REWARD = "reward", "Reward model"
    POLICY = "policy", "Policy"


class TrainingRun(models.Model):
    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="training_runs")
    kind = models.CharField(max_length=10, choices=RunKind.choices)
    status = models.CharField(max_length=10, choices=RunStatus.choices, default=RunStatus.QUEUED)
    config = models.JSONField(default=dict, blank=True)
    progress = models.FloatField(default=0.0, help_text="Share of the run done, 0 to 1.")
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(null=True, blank=True)
    eta_seconds = models.FloatField(null=True, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True)
    # The data the run read: a snapshot file under ARTIFACT_ROOT, its hash, and the highest
    # preference id it includes, so the next run knows what is new.
    data_snapshot = models.CharField(max_length=500, blank=True)
    data_hash = models.CharField(max_length=64, blank=True)
    data_watermark = models.BigIntegerField(null=True, blank=True)
    parent_model = models.ForeignKey(
        "ModelVersion",
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="child_runs",
        help_text="The model this run starts from (warm start, or the policy a PPO run updates).",
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=RunKind.values), name="run_kind_valid"),
            models.CheckConstraint(condition=Q(status__in=RunStatus.values), name="run_status_valid"),
            models.CheckConstraint(condition=Q(progress__gte=0, progress__lte=1), name="run_progress_is_share"),
            models.CheckConstraint(
                condition=~Q(status__in=FINISHED_STATUSES) | Q(finished_at__isnull=False),
                name="run_finished_has_finish_time",
            ),
            models.CheckConstraint(
                condition=~Q(status=RunStatus.RUNNING) | Q(started_at__isnull=False),
                name="run_running_has_start_time",
            ),
            # The scheduler and an impatient admin can both ask for a run; the database keeps one
            # queued or running run of each kind per project.
            models.UniqueConstraint(
                fields=["project", "kind"], condition=Q(status__in=ACTIVE_STATUSES), name="run_one_active_per_kind"
            ),
        ]
        indexes = [
            # The training page: a project's runs, newest first.
            models.Index(fields=["project", "-created_at"], name="run_project_recent"),
            # The reaper: running runs whose heartbeat stopped.
            models.Index(fields=["status", "heartbeat_at"], name="run_status_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} run {self.pk} ({self.status})"


class ModelVersion(models.Model):
    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="model_versions")
    kind = models.CharField(max_length=10, choices=ModelKind.choices)
    version = models.PositiveIntegerField()
    artifact_path = models.CharField(max_length=500)
    base = models.CharField(max_length=500, help_text="The pretrained model it was trained from.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    run = models.OneToOneField(
        TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="model_version"
    )
    metrics = models.JSONField(default=dict, blank=True)
    is_active = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["project", "kind", "-version"]
        constraints = [
            models.CheckConstraint(condition=Q(kind__in=ModelKind.values), name="model_kind_valid"),
            models.UniqueConstraint(fields=["project", "kind", "version"], name="model_version_unique"),
            # Promotion and rollback swap the flag inside one transaction; the database refuses a
            # second active reward model or policy whatever the code does.
            models.UniqueConstraint(
                fields=["project", "kind"], condition=Q(is_active=True), name="model_one_active_per_kind"
            ),
            models.CheckConstraint(condition=~Q(artifact_path=""), name="model_artifact_path_not_empty"),
        ]

    def __str__(self) -> str:
        return f"{self.project} {self.kind} v{self.version}"

    @property
    def label(self) -> str:
        return f"{self.kind}-v{self.version}"
