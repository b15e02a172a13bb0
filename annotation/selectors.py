"""Reads. Each function returns plain data or a queryset and never writes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import groupby
from operator import itemgetter

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, F, Q, QuerySet
from django.utils import timezone

from annotation.models import Assignment, AssignmentStatus, Choice, Comparison, Membership, Preference, Project, Role


def projects_for_user(*, user: AbstractBaseUser) -> QuerySet[Project]:
    """The projects a user works in; staff see every project."""
    if user.is_staff:
        return Project.objects.all()
    return Project.objects.filter(memberships__user=user).distinct()


def user_is_project_admin(*, user: AbstractBaseUser, project: Project) -> bool:
    if not user.is_authenticated or not user.is_active:
        return False
    if user.is_staff:
        return True
    return Membership.objects.filter(project=project, user=user, role=Role.ADMIN).exists()


@dataclass(frozen=True)
class ProjectProgress:
    project: Project
    labelled_today: int
    labelled_total: int
    left_in_queue: int


def project_progress_for_user(*, user: AbstractBaseUser) -> list[ProjectProgress]:
    """The home page: per project, what the user labelled today and in total, and how many
    comparisons they could still be given. Three queries whatever the number of projects."""
    projects = list(projects_for_user(user=user))
    if not projects:
        return []
    start_of_day = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    counts = {
        row["project"]: row
        for row in Preference.objects.filter(annotator=user, project__in=projects)
        .values("project")
        .annotate(total=Count("id"), today=Count("id", filter=Q(created_at__gte=start_of_day)))
    }
    # "Left" counts what this user could still be given: not labelled or skipped by them, and
    # short of the project's overlap. Live leases of others are ignored: they expire.
    open_counts = {
        row["project"]: row["n"]
        for row in Comparison.objects.filter(project__in=projects, label_count__lt=F("project__overlap"))
        .exclude(preferences__annotator=user)
        .exclude(assignments__annotator=user, assignments__status=AssignmentStatus.SKIPPED)
        .order_by()
        .values("project")
        .annotate(n=Count("id"))
    }
    result = []
    for project in projects:
        row = counts.get(project.pk, {})
        result.append(
            ProjectProgress(
                project=project,
                labelled_today=row.get("today", 0),
                labelled_total=row.get("total", 0),
                left_in_queue=open_counts.get(project.pk, 0),
            )
        )
    return result


def annotator_pseudonym(user_id: int) -> str:
    """A stable name for an annotator in exported data that does not reveal who they are.
    Keyed with SECRET_KEY, so it cannot be reversed by hashing candidate ids."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"annotator:{user_id}".encode(), hashlib.sha256)
    return "ann_" + digest.hexdigest()[:12]


@dataclass(frozen=True)
class ExportFilters:
    """What an export keeps. Ties and both-bad labels are left out unless asked for; agreement is
    the majority's share of a comparison's labels among those the other filters keep."""

    include_ties: bool = False
    since: datetime | None = None
    until: datetime | None = None
    annotator_id: int | None = None
    min_agreement: float | None = None
    policy_version_id: int | None = None


# The columns an export reads, in the order the tuples below hold them.
EXPORT_FIELDS = (
    "id",
    "choice",
    "strength",
    "annotator_id",
    "created_at",
    "comparison_id",
    "comparison__prompt__text",
    "comparison__prompt__messages",
    "comparison__response_a__text",
    "comparison__response_b__text",
)
_CHOICE, _STRENGTH, _ANNOTATOR, _CREATED, _COMPARISON, _PROMPT, _MESSAGES, _TEXT_A, _TEXT_B = range(1, 10)
PREFERRED = (Choice.A, Choice.B)


def _export_queryset(*, project: Project, filters: ExportFilters, by_comparison: bool) -> QuerySet:
    qs = Preference.objects.filter(project=project)
    # Grouped reads need every label of a comparison to find its majority; ties are dropped
    # after counting them.
    if not filters.include_ties and not by_comparison:
        qs = qs.filter(choice__in=PREFERRED)
    if filters.since:
        qs = qs.filter(created_at__gte=filters.since)
    if filters.until:
        qs = qs.filter(created_at__lt=filters.until)
    if filters.annotator_id is not None:
        qs = qs.filter(annotator_id=filters.annotator_id)
    if filters.policy_version_id is not None:
        qs = qs.filter(
            Q(comparison__response_a__policy_version_id=filters.policy_version_id)
            | Q(comparison__response_b__policy_version_id=filters.policy_version_id)
        )
    return qs.order_by(*(("comparison_id", "id") if by_comparison else ("id",)))


def preferences_for_export(
    *, project: Project, filters: ExportFilters | None = None, by_comparison: bool = False
) -> QuerySet:
    """A project's preferences with the texts an export needs, as dicts in id order (or grouped
    by comparison, for agreement). One query, iterated in chunks by the caller so that a million
    rows never sit in memory at once."""
    return _export_queryset(project=project, filters=filters or ExportFilters(), by_comparison=by_comparison).values(
        *EXPORT_FIELDS
    )


def _export_tuples(*, project: Project, filters: ExportFilters, by_comparison: bool, chunk_size: int) -> Iterator:
    # Tuples rather than dicts: at a million rows, building a dict per row is a measurable share
    # of an export's time.
    qs = _export_queryset(project=project, filters=filters, by_comparison=by_comparison)
    return qs.values_list(*EXPORT_FIELDS).iterator(chunk_size=chunk_size)


class _Pseudonyms(dict):
    """annotator_pseudonym per id, computed once per annotator instead of once per row."""

    def __missing__(self, user_id: int) -> str:
        value = self[user_id] = annotator_pseudonym(user_id)
        return value


def _raw_row(row: tuple, pseudonyms: _Pseudonyms) -> dict:
    prompt = row[_PROMPT] if row[_MESSAGES] is None else row[_MESSAGES]
    choice = row[_CHOICE]
    out = {
        "prompt": prompt,
        "chosen": row[_TEXT_B] if choice == Choice.B else row[_TEXT_A],
        "rejected": row[_TEXT_A] if choice == Choice.B else row[_TEXT_B],
        "margin": float(row[_STRENGTH] or 0),
        "comparison_id": row[_COMPARISON],
        "annotator": pseudonyms[row[_ANNOTATOR]],
        "created_at": row[_CREATED],
    }
    if choice != Choice.A and choice != Choice.B:
        out["choice"] = choice
    return out


@dataclass(frozen=True)
class Vote:
    choice: str  # the majority's choice
    agreement: float  # its share of the comparison's labels
    n_labels: int
    margin: float  # the mean strength of the majority's labels, 0 when none was recorded


def majority_vote(choices: list[str], strengths: list[int | None]) -> Vote | None:
    """The most common choice among one comparison's labels, or None when two choices share the
    top count: a split vote says nothing about which response is better."""
    counts: dict[str, int] = {}
    for choice in choices:
        counts[choice] = counts.get(choice, 0) + 1
    ranked = sorted(counts.items(), key=lambda item: -item[1])
    if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
        return None
    choice, count = ranked[0]
    picked = [s for c, s in zip(choices, strengths, strict=True) if c == choice and s]
    margin = sum(picked) / len(picked) if picked else 0.0
    return Vote(choice=choice, agreement=count / len(choices), n_labels=len(choices), margin=float(margin))


def _by_comparison(project: Project, filters: ExportFilters, chunk_size: int) -> Iterator[tuple[list[tuple], Vote]]:
    """Each comparison's labels with their majority vote, one comparison at a time; comparisons
    under the minimum agreement, or with a split vote, are left out."""
    rows = _export_tuples(project=project, filters=filters, by_comparison=True, chunk_size=chunk_size)
    for _, group in groupby(rows, key=itemgetter(_COMPARISON)):
        labels = list(group)
        vote = majority_vote([r[_CHOICE] for r in labels], [r[_STRENGTH] for r in labels])
        if vote is None:
            continue
        if filters.min_agreement is not None and vote.agreement < filters.min_agreement:
            continue
        yield labels, vote


def export_rows(
    *, project: Project, filters: ExportFilters | None = None, mode: str = "raw", chunk_size: int = 2000
) -> Iterator[dict]:
    """The rows of an export, with `created_at` as a datetime (the writers format it).

    raw: one row per label: prompt, chosen, rejected, margin, comparison_id, annotator (a keyed
    pseudonym), created_at; ties and both-bad (when included) carry `choice` and put response A
    first. With a minimum agreement the rows come grouped by comparison instead of in id order.

    aggregated: one row per comparison, its majority choice as chosen/rejected, with `agreement`
    (the majority's share of the labels), `n_labels`, the mean strength of the majority as
    `margin`, and the time of the latest label. A majority of tie or both-bad is left out unless
    ties are included; a split vote is always left out."""
    filters = filters or ExportFilters()
    pseudonyms = _Pseudonyms()
    if mode == "aggregated":
        for labels, vote in _by_comparison(project, filters, chunk_size):
            if not filters.include_ties and vote.choice not in PREFERRED:
                continue
            first = labels[0]
            out = {
                "prompt": first[_PROMPT] if first[_MESSAGES] is None else first[_MESSAGES],
                "chosen": first[_TEXT_B] if vote.choice == Choice.B else first[_TEXT_A],
                "rejected": first[_TEXT_A] if vote.choice == Choice.B else first[_TEXT_B],
                "margin": vote.margin,
                "comparison_id": first[_COMPARISON],
                "agreement": round(vote.agreement, 4),
                "n_labels": vote.n_labels,
                "created_at": max(r[_CREATED] for r in labels),
            }
            if vote.choice not in PREFERRED:
                out["choice"] = vote.choice
            yield out
    elif filters.min_agreement is None:
        for row in _export_tuples(project=project, filters=filters, by_comparison=False, chunk_size=chunk_size):
            yield _raw_row(row, pseudonyms)
    else:
        for labels, _ in _by_comparison(project, filters, chunk_size):
            for row in labels:
                if filters.include_ties or row[_CHOICE] in PREFERRED:
                    yield _raw_row(row, pseudonyms)


def iter_export_rows(
    *, project: Project, filters: ExportFilters | None = None, chunk_size: int = 2000
) -> Iterator[dict]:
    """TRL-shaped rows, one per label (export_rows, mode raw), with `created_at` in ISO 8601."""
    for row in export_rows(project=project, filters=filters, chunk_size=chunk_size):
        row["created_at"] = row["created_at"].isoformat()
        yield row


def iter_export_rows_aggregated(
    *, project: Project, filters: ExportFilters | None = None, chunk_size: int = 2000
) -> Iterator[dict]:
    """One row per comparison (export_rows, mode aggregated), with `created_at` in ISO 8601."""
    for row in export_rows(project=project, filters=filters, mode="aggregated", chunk_size=chunk_size):
        row["created_at"] = row["created_at"].isoformat()
        yield row


def live_lease_filter(now: datetime) -> Q:
    return Q(status=AssignmentStatus.LEASED, expires_at__gt=now)


def live_leases(*, comparison: Comparison) -> QuerySet[Assignment]:
    return Assignment.objects.filter(live_lease_filter(timezone.now()), comparison=comparison)
