from __future__ import annotations

import pytest

from annotation.models import Comparison, Preference, Role
from annotation.services import comparisons_recount

# The browser and training fixtures, shared with those folders' tests.
from tests.browser.conftest import browser, page  # noqa: F401
from tests.factories import MembershipFactory, UserFactory, make_comparison
from tests.training.conftest import labelled_project, tiny_reward_base  # noqa: F401


def label(comparison: Comparison, annotator, choice: str, shown_left: str = "") -> Preference:
    strength = 2 if choice in ("a", "b") else None
    return Preference.objects.create(
        project=comparison.project,
        comparison=comparison,
        annotator=annotator,
        choice=choice,
        strength=strength,
        shown_left=shown_left,
        time_spent_ms=4000,
    )


@pytest.fixture
def small_fixture(project):
    """Three annotators, four comparisons; the figures are worked out by hand in the tests.

    c1: u1 a (shown left a), u2 a (shown left b), u3 b (shown left b)
    c2: u1 tie,               u2 tie
    c3: u1 a (shown left b),  u2 b (shown left b)
    c4: u1 both_bad (gold, answer a)
    """
    users = [UserFactory(username=f"u{i}") for i in (1, 2, 3)]
    for user in users:
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    u1, u2, u3 = users
    c1, c2, c3 = (make_comparison(project=project) for _ in range(3))
    c4 = make_comparison(project=project, is_gold=True, gold_choice="a")
    label(c1, u1, "a", "a")
    label(c1, u2, "a", "b")
    label(c1, u3, "b", "b")
    label(c2, u1, "tie", "b")
    label(c2, u2, "tie", "a")
    label(c3, u1, "a", "b")
    label(c3, u2, "b", "b")
    label(c4, u1, "both_bad", "a")
    comparisons_recount(comparison_ids=[c.pk for c in (c1, c2, c3, c4)])
    return {"users": users, "comparisons": [c1, c2, c3, c4]}
