"""Celery tasks of the annotation side: thin, ids in and out."""

from __future__ import annotations

from celery import shared_task
from django.db.models import Count, F

from annotation.models import Comparison
from annotation.services import comparisons_recount


@shared_task
def labels_recount(project_id: int) -> int:
    """Repairs Comparison.label_count for one project and returns how many comparisons were off.
    The counter is kept in step by every write path; this is the safety net for hand edits."""
    drifted = list(
        Comparison.objects.filter(project_id=project_id)
        .annotate(n=Count("preferences"))
        .exclude(label_count=F("n"))
        .values_list("id", flat=True)
    )
    comparisons_recount(comparison_ids=drifted)
    return len(drifted)
