"""The queue under concurrent requests on PostgreSQL: each thread has its own database connection,
and a barrier releases them together, so the row locks are what keeps the overlap."""

from __future__ import annotations

import itertools
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from django.contrib.auth import get_user_model
from django.db import connection, connections, transaction

from annotation import queue
from annotation.models import Comparison, Preference
from tests.factories import MembershipFactory, ProjectFactory, make_comparison

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.skipif(connection.vendor != "postgresql", reason="row locks with SKIP LOCKED are PostgreSQL's"),
]

_serial = itertools.count()


def annotators(project, n: int) -> list:
    users = [get_user_model().objects.create(username=f"racer{next(_serial)}") for _ in range(n)]
    for user in users:
        MembershipFactory(project=project, user=user)
    return users


def run_together(work: Callable[[object], object], users: list) -> list:
    """Runs work(user) in one thread per user, all starting at once; returns the results in the
    users' order and re-raises the first error a thread hit."""
    barrier = threading.Barrier(len(users))
    results: list = [None] * len(users)
    errors: list[BaseException] = []

    def run(index: int, user) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(user)
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i, u)) for i, u in enumerate(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish"
    if errors:
        raise errors[0]
    return results


def test_twenty_four_simultaneous_requests_with_overlap_one_never_share_a_comparison():
    project = ProjectFactory(overlap=1, gold_rate=0)
    comparisons = {make_comparison(project=project).pk for _ in range(12)}
    users = annotators(project, 24)

    def next_id(user):
        assignment = queue.assignment_next(project=project, annotator=user)
        return assignment and assignment.comparison_id

    leased = [cid for cid in run_together(next_id, users) if cid is not None]
    # Twelve comparisons for twenty-four people: every comparison is handed out exactly once.
    assert sorted(leased) == sorted(comparisons)


def test_twenty_annotators_labelling_at_once_with_overlap_three_stop_at_three_labels():
    project = ProjectFactory(overlap=3, gold_rate=0)
    comparisons = [make_comparison(project=project) for _ in range(8)]
    users = annotators(project, 20)

    def label_until_done(user) -> int:
        done = 0
        while (assignment := queue.assignment_next(project=project, annotator=user)) is not None:
            queue.preference_submit(
                project=project, annotator=user, comparison_id=assignment.comparison_id, choice="tie"
            )
            done += 1
        return done

    per_user = run_together(label_until_done, users)
    counts = Counter(Preference.objects.values_list("comparison_id", flat=True))
    assert counts == {c.pk: 3 for c in comparisons}
    assert sum(per_user) == 24
    assert dict(Comparison.objects.values_list("pk", "label_count")) == {c.pk: 3 for c in comparisons}


def test_a_double_submit_racing_itself_makes_one_label():
    project = ProjectFactory(overlap=1, gold_rate=0)
    comparison = make_comparison(project=project)
    (user,) = annotators(project, 1)
    queue.assignment_next(project=project, annotator=user)

    def submit(_):
        _, created = queue.preference_submit(
            project=project, annotator=user, comparison_id=comparison.pk, choice="b", strength=2
        )
        return created

    created = run_together(submit, [user] * 8)
    assert sorted(created) == [False] * 7 + [True]
    comparison.refresh_from_db()
    assert comparison.label_count == 1 and Preference.objects.count() == 1


def test_a_comparison_locked_for_a_moment_by_another_request_is_waited_for_not_reported_as_empty():
    # The last comparison with room is locked by another transaction (a submit in flight, say).
    # Skipping it would tell the annotator the queue is empty; the queue waits for the lock
    # instead and leases it once the other transaction has committed.
    project = ProjectFactory(overlap=2, gold_rate=0)
    comparison = make_comparison(project=project)
    (user,) = annotators(project, 1)
    locked = threading.Event()
    release = threading.Event()

    def hold_the_row() -> None:
        try:
            with transaction.atomic():
                Comparison.objects.select_for_update().get(pk=comparison.pk)
                locked.set()
                release.wait(timeout=30)
        finally:
            connections.close_all()

    holder = threading.Thread(target=hold_the_row)
    holder.start()
    assert locked.wait(timeout=30)
    result: list = []

    def ask() -> None:
        try:
            result.append(queue.assignment_next(project=project, annotator=user))
        finally:
            connections.close_all()

    asker = threading.Thread(target=ask)
    asker.start()
    asker.join(timeout=0.5)
    assert asker.is_alive(), "the request did not wait for the locked comparison"
    release.set()
    holder.join(timeout=30)
    asker.join(timeout=30)
    assert not asker.is_alive()
    assert result[0] is not None and result[0].comparison_id == comparison.pk
