"""A task goes through a real Celery worker process, over the real broker, into the real database."""

from __future__ import annotations

import time

import pytest

from annotation.models import Comparison
from annotation.tasks import labels_recount
from tests.factories import UserFactory, make_comparison, make_preference


@pytest.fixture
def worker(start_worker):
    return start_worker("celery")


def test_a_task_round_trips_through_a_real_worker_on_the_broker(worker, project):
    comparison = make_comparison(project=project)
    make_preference(comparison=comparison, annotator=UserFactory())
    make_preference(comparison=comparison, annotator=UserFactory())
    Comparison.objects.filter(pk=comparison.pk).update(label_count=7)  # a counter that drifted

    started = time.monotonic()
    result = labels_recount.delay(project.pk)
    assert result.get(timeout=90) == 1
    assert time.monotonic() - started < 90
    comparison.refresh_from_db()
    assert comparison.label_count == 2
    assert worker.poll() is None, "the worker died"
