"""The human side of the loop: projects, what is compared, and the labels people give.

Rules that must hold whatever writes the rows (a form, the API, a management command, a psql
session) are constraints in the database. The ones Django cannot express — that a comparison's two
responses answer its own prompt, and that denormalised project columns agree with their parents —
are composite keys: on PostgreSQL statement triggers that check a statement's rows at once
(migration 0008, which also made the references that imports write in bulk such checks instead of
row-by-row foreign keys), on SQLite foreign keys and row triggers (migration 0003).
"""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.db import models
from django.db.models import F, Q

DEFAULT_REWARD_BASE = "bundled:all-MiniLM-L6-v2"
DEFAULT_POLICY_BASE = "bundled:SmolLM2-135M-Instruct"


def content_hash(value: str | list) -> str:
    """A stable digest of a prompt or response, used to find the same text on a second import."""
    if not isinstance(value, str):
        value = json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(value.encode("utf-8")).hexdigest()


class Role(models.TextChoices):
    ANNOTATOR = "annotator", "Annotator"
    ADMIN = "admin", "Project admin"


class Choice(models.TextChoices):
    A = "a", "A is better"
    B = "b", "B is better"
    TIE = "tie", "Tie"
    BOTH_BAD = "both_bad", "Both bad"


class Strength(models.IntegerChoices):
    SLIGHTLY = 1, "slightly better"
    CLEARLY = 2, "clearly better"
    MUCH = 3, "much better"


class Side(models.TextChoices):
    A = "a", "Response A"
    B = "b", "Response B"


class Project(models.Model):
    name = models.CharField(max_length=200)
    slug = models.SlugField(max_length=100, unique=True)
    guidelines = models.TextField(blank=True, help_text="Markdown shown to annotators.")
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Labels wanted per comparison.")
    reward_model_base = models.CharField(max_length=500, default=DEFAULT_REWARD_BASE)
    policy_base = models.CharField(max_length=500, default=DEFAULT_POLICY_BASE)
    retrain_threshold = models.PositiveIntegerField(
        default=200, help_text="New preferences since the last reward-model snapshot that trigger a retrain."
    )
    gold_rate = models.FloatField(default=0.05, help_text="Share of queue items drawn from gold comparisons.")
    lease_seconds = models.PositiveIntegerField(default=600, help_text="How long an assignment is held.")
    auto_training = models.BooleanField(default=False, help_text="Let the scheduler run the training loop.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_at_least_one"),
            models.CheckConstraint(condition=Q(retrain_threshold__gte=1), name="project_retrain_threshold_positive"),
            models.CheckConstraint(condition=Q(gold_rate__gte=0, gold_rate__lte=1), name="project_gold_rate_is_share"),
            models.CheckConstraint(condition=Q(lease_seconds__gte=30), name="project_lease_at_least_30s"),
            models.CheckConstraint(condition=~Q(slug=""), name="project_slug_not_empty"),
        ]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in one project. Staff users are admins of every project without a row here."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=20, choices=Role.choices, default=Role.ANNOTATOR)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["project", "user"], name="membership_one_per_user_and_project"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class Prompt(models.Model):
    """What the model was asked: plain text, or chat turns ([{"role", "content"}, ...])."""

    # Looked up through prompt_unique_text_per_project (project, content_hash). On PostgreSQL this
    # and the other references that imports write in bulk are checked by statement triggers, not
    # foreign keys (migration 0008_set_based_keys).
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="prompts", db_index=False, db_constraint=False
    )
    text = models.TextField(blank=True)
    messages = models.JSONField(null=True, blank=True)
    content_hash = models.CharField(max_length=64, editable=False)
    is_eval = models.BooleanField(default=False, help_text="Part of the fixed evaluation set for new policies.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # A second import of the same prompt finds this row instead of adding another.
            models.UniqueConstraint(fields=["project", "content_hash"], name="prompt_unique_text_per_project"),
            models.CheckConstraint(
                condition=Q(messages__isnull=False) | ~Q(text=""), name="prompt_has_text_or_messages"
            ),
        ]

    def __str__(self) -> str:
        return self.display_text[:80]

    @property
    def is_chat(self) -> bool:
        return self.messages is not None

    @property
    def display_text(self) -> str:
        if self.messages is None:
            return self.text
        return "\n\n".join(f"{m.get('role', '?')}: {m.get('content', '')}" for m in self.messages)


class Response(models.Model):
    """One answer to a prompt, imported from a named model or generated by a policy version."""

    # Looked up through response_unique_text_per_prompt (prompt, content_hash).
    prompt = models.ForeignKey(
        Prompt, on_delete=models.CASCADE, related_name="responses", db_index=False, db_constraint=False
    )
    # An empty response is real data (HH-RLHF has assistants that said nothing and were preferred).
    text = models.TextField(blank=True)
    content_hash = models.CharField(max_length=64, editable=False)
    source = models.CharField(max_length=200, help_text="The imported model's name, or the policy version.")
    policy_version = models.ForeignKey(
        "training.ModelVersion",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="responses",
        db_constraint=False,
        db_index=False,  # response_policy_version below, of generated responses only
    )
    generation = models.JSONField(default=dict, blank=True, help_text="Sampling settings used to generate it.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["prompt", "content_hash"], name="response_unique_text_per_prompt"),
            models.CheckConstraint(condition=~Q(source=""), name="response_source_not_empty"),
        ]
        indexes = [
            # Imported responses have no policy version: only generated ones are indexed (0011).
            models.Index(
                fields=["policy_version"], name="response_policy_version", condition=Q(policy_version__isnull=False)
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source}: {self.text[:60]}"


class Comparison(models.Model):
    """Two different responses to the same prompt. response_a has the smaller id, so an unordered
    pair has exactly one spelling and the unique constraint below catches both orders."""

    # Existence of the rows referenced here is enforced by the composite keys (prompt, project) ->
    # prompt and (response_x, prompt) -> response (statement triggers of migration 0008 on PostgreSQL,
    # row triggers of 0003 on SQLite), which also tie them together; the single-column foreign keys
    # only added a million checks to a 100,000-pair import, so PostgreSQL no longer has them
    # (migration 0006; SQLite keeps its own). Look-ups go
    # through the indexes named: comparison_queue (project, ...), comparison_prompt (prompt),
    # comparison_one_per_pair (response_a, response_b); response_b keeps its own index.
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="comparisons", db_index=False, db_constraint=False
    )
    prompt = models.ForeignKey(
        Prompt, on_delete=models.CASCADE, related_name="comparisons", db_index=False, db_constraint=False
    )
    response_a = models.ForeignKey(
        Response, on_delete=models.CASCADE, related_name="+", db_index=False, db_constraint=False
    )
    response_b = models.ForeignKey(Response, on_delete=models.CASCADE, related_name="+", db_constraint=False)
    is_gold = models.BooleanField(default=False)
    gold_choice = models.CharField(max_length=10, choices=Choice.choices, blank=True)
    # Kept by preference_submit in the same transaction as the insert; the queue orders by it.
    label_count = models.PositiveIntegerField(default=0)
    # The queue serves the newest policy's comparisons first. Ordering by a join to both responses
    # cannot use an index, so the id of the newest policy version that wrote either response (ids
    # grow with time; 0 when neither was generated here) is copied here by a database trigger on
    # insert (migration 0004), whatever code path inserts the row. Nullable only so that SQLite can
    # add the column without rebuilding the table (0003's triggers refuse a rebuild); the trigger
    # always sets it.
    policy_rank = models.BigIntegerField(null=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(response_a__lt=F("response_b")), name="comparison_responses_ordered_and_different"
            ),
            models.UniqueConstraint(fields=["response_a", "response_b"], name="comparison_one_per_pair"),
            models.CheckConstraint(
                condition=Q(is_gold=False, gold_choice="") | Q(is_gold=True, gold_choice__in=Choice.values),
                name="comparison_gold_has_answer",
            ),
            models.UniqueConstraint(fields=["id", "project"], name="comparison_id_project"),
        ]
        indexes = [
            # A project's comparisons still short of their overlap: the home page's "left in
            # your queue" count (selectors.project_progress_for_user) and the dashboard.
            models.Index(fields=["project", "label_count", "id"], name="comparison_queue"),
            # The queue's walk in serving order (annotation.queue): the first row of the project's
            # gold or regular comparisons that passes the per-annotator checks is leased.
            models.Index(
                fields=["project", "is_gold", "-label_count", "-policy_rank", "id"], name="comparison_queue_order"
            ),
            models.Index(fields=["prompt"], name="comparison_prompt"),
        ]

    def __str__(self) -> str:
        return f"Comparison {self.pk} ({self.response_a_id} vs {self.response_b_id})"


class Preference(models.Model):
    """One annotator's judgement of one comparison. `choice` names response_a or response_b of the
    comparison, whatever side each was shown on; `shown_left` records which one was on the left."""

    # The composite key (comparison, project) -> comparison (a statement trigger of migration 0008 on
    # PostgreSQL, a row trigger of 0003 on SQLite) enforces that both exist, so neither has a foreign
    # key of its own on PostgreSQL (migration 0006); the annotator is checked the same way (0008).
    # Look-ups go through preference_export (project, id), preference_one_per_annotator
    # (comparison, annotator) and preference_annotator_created (annotator, created_at).
    project = models.ForeignKey(
        Project, on_delete=models.CASCADE, related_name="preferences", db_index=False, db_constraint=False
    )
    comparison = models.ForeignKey(
        Comparison, on_delete=models.CASCADE, related_name="preferences", db_index=False, db_constraint=False
    )
    annotator = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.PROTECT,
        related_name="preferences",
        db_index=False,
        db_constraint=False,
    )
    choice = models.CharField(max_length=10, choices=Choice.choices)
    # Null for a tie or both-bad, and for imported A/B labels whose strength nobody recorded.
    strength = models.PositiveSmallIntegerField(choices=Strength.choices, null=True, blank=True)
    rationale = models.TextField(blank=True)
    shown_left = models.CharField(max_length=1, choices=Side.choices, blank=True)
    time_spent_ms = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["comparison", "annotator"], name="preference_one_per_annotator"),
            models.CheckConstraint(condition=Q(choice__in=Choice.values), name="preference_choice_valid"),
            models.CheckConstraint(
                condition=Q(strength__isnull=True) | Q(choice__in=[Choice.A, Choice.B], strength__in=Strength.values),
                name="preference_strength_only_for_a_or_b",
            ),
            models.CheckConstraint(condition=Q(shown_left__in=["", "a", "b"]), name="preference_shown_left_valid"),
        ]
        indexes = [
            # Streaming export: a project's preferences in id order, resumable by id.
            models.Index(fields=["project", "id"], name="preference_export"),
            # Export and dashboard filters by date range.
            models.Index(fields=["project", "created_at"], name="preference_project_created"),
            # An annotator's progress today and in total, on the home page.
            models.Index(fields=["annotator", "created_at"], name="preference_annotator_created"),
        ]

    def __str__(self) -> str:
        return f"{self.annotator} on {self.comparison_id}: {self.choice}"

    @property
    def margin(self) -> float:
        """The margin a Bradley-Terry loss subtracts: the strength level, 0 when unknown."""
        return float(self.strength or 0)


class AssignmentStatus(models.TextChoices):
    LEASED = "leased", "Leased"
    SUBMITTED = "submitted", "Submitted"
    SKIPPED = "skipped", "Skipped"


class Assignment(models.Model):
    """A lease: `annotator` holds `comparison` until `expires_at`. A lease past its expiry counts
    for nothing, so the comparison goes back to the pool without a sweeper."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="assignments")
    comparison = models.ForeignKey(Comparison, on_delete=models.CASCADE, related_name="assignments")
    annotator = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=10, choices=AssignmentStatus.choices, default=AssignmentStatus.LEASED)
    shown_left = models.CharField(max_length=1, choices=Side.choices)
    leased_at = models.DateTimeField()
    expires_at = models.DateTimeField()
    first_shown_at = models.DateTimeField(null=True, blank=True)
    skip_reason = models.TextField(blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["comparison", "annotator"], name="assignment_one_per_annotator"),
            models.CheckConstraint(condition=Q(expires_at__gt=F("leased_at")), name="assignment_expires_after_lease"),
            models.CheckConstraint(condition=Q(status__in=AssignmentStatus.values), name="assignment_status_valid"),
        ]
        indexes = [
            # Live leases on a comparison, counted against its overlap when the queue picks work.
            models.Index(fields=["comparison", "status", "expires_at"], name="assignment_live_by_comparison"),
            # The lease an annotator holds now, looked up on every queue request.
            models.Index(fields=["annotator", "status", "expires_at"], name="assignment_live_by_annotator"),
        ]

    def __str__(self) -> str:
        return f"{self.annotator} holds {self.comparison_id} until {self.expires_at:%H:%M}"
