"""Reads. Each function returns plain data or a queryset and never writes."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

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
    include_ties: bool = False
    since: datetime | None = None
    until: datetime | None = None


def preferences_for_export(*, project: Project, filters: ExportFilters | None = None) -> QuerySet:
    """A project's preferences with the texts an export needs, as dicts in id order. One query,
    iterated in chunks by the caller so that a million rows never sit in memory at once."""
    filters = filters or ExportFilters()
    qs = Preference.objects.filter(project=project)
    if not filters.include_ties:
        qs = qs.filter(choice__in=[Choice.A, Choice.B])
    if filters.since:
        qs = qs.filter(created_at__gte=filters.since)
    if filters.until:
        qs = qs.filter(created_at__lt=filters.until)
    return qs.order_by("id").values(
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


def iter_export_rows(
    *, project: Project, filters: ExportFilters | None = None, chunk_size: int = 2000
) -> Iterator[dict]:
    """TRL-shaped rows: prompt, chosen, rejected, margin, comparison_id, annotator, created_at.
    Ties and both-bad (when included) carry `choice` and put response A first."""
    for row in preferences_for_export(project=project, filters=filters).iterator(chunk_size=chunk_size):
        prompt = row["comparison__prompt__messages"]
        if prompt is None:
            prompt = row["comparison__prompt__text"]
        text_a = row["comparison__response_a__text"]
        text_b = row["comparison__response_b__text"]
        chosen, rejected = (text_b, text_a) if row["choice"] == Choice.B else (text_a, text_b)
        out = {
            "prompt": prompt,
            "chosen": chosen,
            "rejected": rejected,
            "margin": float(row["strength"] or 0),
            "comparison_id": row["comparison_id"],
            "annotator": annotator_pseudonym(row["annotator_id"]),
            "created_at": row["created_at"].isoformat(),
        }
        if row["choice"] not in (Choice.A, Choice.B):
            out["choice"] = row["choice"]
        yield out


def live_lease_filter(now: datetime) -> Q:
    return Q(status=AssignmentStatus.LEASED, expires_at__gt=now)


def live_leases(*, comparison: Comparison) -> QuerySet[Assignment]:
    return Assignment.objects.filter(live_lease_filter(timezone.now()), comparison=comparison)
