"""The annotator queue: who gets which comparison, in what order, and what a submit or a skip does."""

from __future__ import annotations

import itertools
import random
from datetime import timedelta

import pytest
from django.contrib.auth import get_user_model
from django.db.models import F
from django.utils import timezone

from annotation import queue
from annotation.models import Assignment, Comparison, Preference, Prompt, Response
from annotation.queue import QueueError
from tests.factories import MembershipFactory, PromptFactory, ResponseFactory, make_comparison
from training.models import ModelVersion

pytestmark = pytest.mark.django_db


class Draw(random.Random):
    """An rng whose gold draw is fixed: random() returns `value`, the sides are still random."""

    def __init__(self, value: float) -> None:
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


_serial = itertools.count()
NO_GOLD_DRAW = Draw(0.99)
GOLD_DRAW = Draw(0.0)


def quick_user():
    """A user without a password: hashing one costs a good part of a second, and the gold-rate
    test needs hundreds of annotators."""
    return get_user_model().objects.create(username=f"quick{next(_serial)}")


@pytest.fixture
def annotator(project):
    return colleague(project)


def colleague(project):
    user = quick_user()
    MembershipFactory(project=project, user=user)
    return user


def labelled(comparison: Comparison, n: int) -> Comparison:
    """Gives the comparison n labels from other annotators, the way an import would."""
    for _ in range(n):
        Preference.objects.create(
            project=comparison.project, comparison=comparison, annotator=quick_user(), choice="a", strength=1
        )
    Comparison.objects.filter(pk=comparison.pk).update(label_count=n)
    comparison.refresh_from_db()
    return comparison


def lease(project, annotator, **kwargs) -> Assignment | None:
    kwargs.setdefault("rng", NO_GOLD_DRAW)
    return queue.assignment_next(project=project, annotator=annotator, **kwargs)


def submit(project, annotator, comparison_id, **kwargs):
    kwargs.setdefault("choice", "a")
    kwargs.setdefault("strength", 2 if kwargs["choice"] in ("a", "b") else None)
    return queue.preference_submit(project=project, annotator=annotator, comparison_id=comparison_id, **kwargs)


# Leasing ------------------------------------------------------------------------------------------


def test_it_leases_a_comparison_for_the_projects_lease_time(project, annotator):
    comparison = make_comparison(project=project)
    now = timezone.now()
    assignment = lease(project, annotator, now=now)
    assert assignment.comparison_id == comparison.pk
    assert assignment.status == "leased" and assignment.shown_left in ("a", "b")
    assert assignment.expires_at - assignment.leased_at == timedelta(seconds=project.lease_seconds)


def test_it_gives_back_the_lease_the_annotator_already_holds(project, annotator):
    make_comparison(project=project)
    make_comparison(project=project)
    first = lease(project, annotator)
    assert lease(project, annotator).pk == first.pk
    assert Assignment.objects.count() == 1


def test_excluding_the_comparison_on_screen_leases_the_one_after_it(project, annotator):
    make_comparison(project=project)
    make_comparison(project=project)
    shown = lease(project, annotator)
    prefetched = lease(project, annotator, exclude_ids=[shown.comparison_id])
    assert prefetched.comparison_id != shown.comparison_id
    # Both leases are live; asked again without exclusions, the older one comes first.
    assert lease(project, annotator).pk == shown.pk


def test_it_serves_the_comparison_closest_to_completion_first(project, annotator):
    project.overlap = 3
    project.save()
    fresh = make_comparison(project=project)
    two = labelled(make_comparison(project=project), 2)
    one = labelled(make_comparison(project=project), 1)
    order = []
    for _ in range(3):
        assignment = lease(project, annotator)
        order.append(assignment.comparison_id)
        submit(project, annotator, assignment.comparison_id)
    assert order == [two.pk, one.pk, fresh.pk]


def _policy(project, version: int) -> ModelVersion:
    return ModelVersion.objects.create(
        project=project, kind="policy", version=version, artifact_path=f"/p{version}", base="b"
    )


def _comparison_from(project, policy: ModelVersion | None) -> Comparison:
    prompt = PromptFactory(project=project)
    first = ResponseFactory(prompt=prompt, policy_version=policy)
    second = ResponseFactory(prompt=prompt)
    return Comparison.objects.create(project=project, prompt=prompt, response_a=first, response_b=second)


def test_among_equally_labelled_comparisons_the_newest_policys_come_first(project, annotator):
    old, new = _policy(project, 1), _policy(project, 2)
    imported = _comparison_from(project, None)
    from_old = _comparison_from(project, old)
    from_new = _comparison_from(project, new)
    # The trigger copies the newest policy of the two responses onto the comparison.
    ranks = dict(Comparison.objects.values_list("pk", "policy_rank"))
    assert ranks == {imported.pk: 0, from_old.pk: old.pk, from_new.pk: new.pk}
    order = []
    for _ in range(3):
        assignment = lease(project, annotator)
        order.append(assignment.comparison_id)
        submit(project, annotator, assignment.comparison_id)
    assert order == [from_new.pk, from_old.pk, imported.pk]


def test_an_import_pairing_a_policy_s_response_with_a_new_one_ranks_it_as_the_trigger_would(project):
    """The import sends policy_rank itself (migration 0009): it must be what the trigger computes."""
    import io
    import json

    from annotation import services
    from annotation.jsonl import bounded_lines, read_records

    policy = _policy(project, 3)
    prompt = PromptFactory(project=project, text="Which is kinder?")
    generated = ResponseFactory(prompt=prompt, policy_version=policy, text="A kind answer.")
    lines = [
        {"prompt": "Which is kinder?", "chosen": "A kind answer.", "rejected": "A new answer."},
        {"prompt": "Something new.", "chosen": "One.", "rejected": "Two."},
    ]
    body = io.BytesIO(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    services.preferences_import(project=project, records=read_records(bounded_lines(body)))
    imported = Comparison.objects.filter(project=project)
    ranks = {c.prompt.text: c.policy_rank for c in imported.select_related("prompt")}
    assert ranks == {"Which is kinder?": policy.pk, "Something new.": 0}
    paired = imported.get(prompt=prompt)
    assert generated.pk in (paired.response_a_id, paired.response_b_id)
    # What the trigger computes for the same rows: an update of the responses recomputes the rank.
    imported.update(policy_rank=None)
    imported.update(response_b=F("response_b"))
    assert {c.prompt.text: c.policy_rank for c in imported.select_related("prompt")} == ranks


def test_equally_placed_comparisons_are_served_oldest_first(project, annotator):
    first, second = make_comparison(project=project), make_comparison(project=project)
    assert lease(project, annotator).comparison_id == first.pk
    assert lease(project, annotator, exclude_ids=[first.pk]).comparison_id == second.pk


def test_a_live_lease_of_someone_else_counts_against_the_overlap(project, annotator):
    taken = make_comparison(project=project)
    lease(project, colleague(project))
    assert lease(project, annotator) is None
    free = make_comparison(project=project)
    assert taken.pk != free.pk
    assert lease(project, annotator).comparison_id == free.pk


def test_an_expired_lease_counts_for_nothing(project, annotator):
    comparison = make_comparison(project=project)
    now = timezone.now()
    lease(project, colleague(project), now=now)
    later = now + timedelta(seconds=project.lease_seconds + 1)
    assert lease(project, annotator, now=later).comparison_id == comparison.pk


def test_a_comparison_with_enough_labels_is_not_served(project, annotator):
    project.overlap = 2
    project.save()
    labelled(make_comparison(project=project), 2)
    assert lease(project, annotator) is None


def test_labels_and_live_leases_add_up_against_the_overlap(project, annotator):
    project.overlap = 2
    project.save()
    comparison = labelled(make_comparison(project=project), 1)
    lease(project, colleague(project))
    assert lease(project, annotator) is None
    project.overlap = 3
    project.save()
    assert lease(project, annotator).comparison_id == comparison.pk


def test_it_never_serves_what_the_annotator_labelled_or_skipped(project, annotator):
    project.overlap = 3
    project.save()
    done, skipped = make_comparison(project=project), make_comparison(project=project)
    submit(project, annotator, lease(project, annotator).comparison_id)
    queue.assignment_skip(
        project=project, annotator=annotator, comparison_id=lease(project, annotator).comparison_id, reason="unsure"
    )
    assert lease(project, annotator) is None
    assert {done.pk, skipped.pk} == set(Assignment.objects.values_list("comparison_id", flat=True))


def test_an_annotator_may_be_given_again_a_comparison_whose_lease_they_let_expire(project, annotator):
    comparison = make_comparison(project=project)
    now = timezone.now()
    first = lease(project, annotator, now=now)
    later = now + timedelta(seconds=project.lease_seconds + 5)
    again = lease(project, annotator, now=later)
    assert again.pk == first.pk and again.comparison_id == comparison.pk
    assert again.expires_at == later + timedelta(seconds=project.lease_seconds)


def test_it_only_serves_the_projects_own_comparisons(project, annotator):
    make_comparison()  # another project's
    assert lease(project, annotator) is None


def test_a_gold_comparison_is_served_first_when_the_draw_falls_under_the_gold_rate(project, annotator):
    project.gold_rate = 0.5
    project.save()
    make_comparison(project=project)
    gold = make_comparison(project=project, is_gold=True, gold_choice="b")
    assert lease(project, annotator, rng=GOLD_DRAW).comparison_id == gold.pk


def test_a_regular_comparison_is_served_when_the_draw_is_over_the_gold_rate(project, annotator):
    project.gold_rate = 0.5
    project.save()
    regular = make_comparison(project=project)
    gold = make_comparison(project=project, is_gold=True, gold_choice="b")
    assert lease(project, annotator, rng=NO_GOLD_DRAW).comparison_id == regular.pk
    # With the regular work done, what is left is gold.
    submit(project, annotator, regular.pk)
    assert lease(project, annotator, rng=NO_GOLD_DRAW).comparison_id == gold.pk


def test_gold_comparisons_are_never_served_at_a_gold_rate_of_zero(project, annotator):
    project.gold_rate = 0
    project.save()
    make_comparison(project=project, is_gold=True, gold_choice="a")
    assert lease(project, annotator, rng=GOLD_DRAW) is None


def test_every_annotator_gets_each_gold_comparison_whatever_the_overlap(project, annotator):
    project.gold_rate = 0.1
    project.save()
    gold = labelled(make_comparison(project=project, is_gold=True, gold_choice="a"), 3)
    lease(project, colleague(project), rng=GOLD_DRAW)
    assert lease(project, annotator, rng=GOLD_DRAW).comparison_id == gold.pk


def test_the_gold_share_follows_the_gold_rate(project):
    project.gold_rate = 0.25
    project.overlap = 200
    project.save()
    for _ in range(5):
        make_comparison(project=project, is_gold=True, gold_choice="a")
    for _ in range(5):
        make_comparison(project=project)
    rng = random.Random(7)
    gold = sum(lease(project, colleague(project), rng=rng).comparison.is_gold for _ in range(60))
    assert 3 <= gold <= 30  # 15 expected; the bounds are over 3.5 standard deviations wide


def test_the_sides_are_randomised_per_assignment(project):
    project.overlap = 100
    project.save()
    make_comparison(project=project)
    rng = random.Random(3)
    sides = {lease(project, colleague(project), rng=rng).shown_left for _ in range(20)}
    assert sides == {"a", "b"}


def test_marking_a_lease_shown_records_the_first_time_only(project, annotator):
    make_comparison(project=project)
    assignment = lease(project, annotator)
    first = timezone.now()
    queue.assignment_mark_shown(assignment=assignment, now=first)
    queue.assignment_mark_shown(assignment=assignment, now=first + timedelta(seconds=30))
    assignment.refresh_from_db()
    assert assignment.first_shown_at == first


# Submitting ---------------------------------------------------------------------------------------


def test_a_submit_stores_the_label_and_counts_it(project, annotator):
    comparison = make_comparison(project=project)
    assignment = lease(project, annotator)
    preference, created = submit(
        project,
        annotator,
        comparison.pk,
        choice="b",
        strength=3,
        rationale="B cites its source.",
        time_spent_ms=4200,
        shown_left=assignment.shown_left,
    )
    assert created
    assert (preference.choice, preference.strength, preference.rationale) == ("b", 3, "B cites its source.")
    assert preference.time_spent_ms == 4200 and preference.shown_left == assignment.shown_left
    comparison.refresh_from_db()
    assignment.refresh_from_db()
    assert comparison.label_count == 1 and assignment.status == "submitted"


def test_a_retried_submit_makes_one_label(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, annotator)
    first, created = submit(project, annotator, comparison.pk, choice="tie")
    again, created_again = submit(project, annotator, comparison.pk, choice="tie")
    assert created and not created_again and first.pk == again.pk
    comparison.refresh_from_db()
    assert comparison.label_count == 1 and Preference.objects.count() == 1


def test_a_different_answer_to_a_labelled_comparison_is_refused(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, annotator)
    submit(project, annotator, comparison.pk, choice="a", strength=1)
    with pytest.raises(QueueError) as refused:
        submit(project, annotator, comparison.pk, choice="a", strength=3)
    assert refused.value.code == "already_labelled"
    assert "already labelled" in refused.value.message
    assert Preference.objects.get().strength == 1


def test_a_submit_for_a_comparison_not_leased_to_the_annotator_is_refused(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, colleague(project))
    for comparison_id in (comparison.pk, make_comparison().pk, 10**9, 2**63, -(2**63) - 1, 10**30):
        with pytest.raises(QueueError) as refused:
            submit(project, annotator, comparison_id)
        assert refused.value.code == "not_leased"
    assert Preference.objects.count() == 0


def test_a_submit_after_a_skip_is_refused(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, annotator)
    queue.assignment_skip(project=project, annotator=annotator, comparison_id=comparison.pk, reason="off topic")
    with pytest.raises(QueueError) as refused:
        submit(project, annotator, comparison.pk)
    assert refused.value.code == "not_leased" and "skipped" in refused.value.message


def test_a_late_submit_is_kept_while_nobody_else_took_the_comparison(project, annotator):
    comparison = make_comparison(project=project)
    now = timezone.now()
    lease(project, annotator, now=now)
    late = now + timedelta(seconds=project.lease_seconds + 60)
    _, created = submit(project, annotator, comparison.pk, now=late)
    assert created


def test_a_late_submit_is_refused_once_the_comparison_went_to_someone_else(project, annotator):
    comparison = make_comparison(project=project)
    now = timezone.now()
    lease(project, annotator, now=now)
    late = now + timedelta(seconds=project.lease_seconds + 60)
    lease(project, colleague(project), now=late)
    with pytest.raises(QueueError) as refused:
        submit(project, annotator, comparison.pk, now=late)
    assert refused.value.code == "lease_expired"
    comparison.refresh_from_db()
    assert comparison.label_count == 0 and Preference.objects.count() == 0


@pytest.mark.parametrize(
    ("answer", "field"),
    [
        ({"choice": "left"}, "choice"),
        ({"choice": "tie", "strength": 2}, "strength"),
        ({"choice": "a", "strength": 4}, "strength"),
        ({"choice": "a", "strength": True}, "strength"),
        ({"choice": "a", "time_spent_ms": -1}, "time_spent_ms"),
        ({"choice": "a", "rationale": "x" * 5001}, "rationale"),
        ({"choice": "a", "rationale": "nul\x00"}, "rationale"),
        ({"choice": "a", "shown_left": "c"}, "shown_left"),
    ],
)
def test_an_invalid_answer_is_refused_naming_the_field_and_changes_nothing(project, annotator, answer, field):
    comparison = make_comparison(project=project)
    assignment = lease(project, annotator)
    with pytest.raises(QueueError) as refused:
        submit(project, annotator, comparison.pk, **answer)
    assert (refused.value.code, refused.value.field) == ("invalid", field)
    assignment.refresh_from_db()
    assert assignment.status == "leased" and Preference.objects.count() == 0


def test_a_submit_that_names_the_wrong_left_side_is_refused(project, annotator):
    comparison = make_comparison(project=project)
    assignment = lease(project, annotator)
    wrong = "b" if assignment.shown_left == "a" else "a"
    with pytest.raises(QueueError) as refused:
        submit(project, annotator, comparison.pk, shown_left=wrong)
    assert (refused.value.code, refused.value.field) == ("invalid", "shown_left")
    assert Preference.objects.count() == 0


def test_a_strength_is_optional_for_a_or_b(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, annotator)
    preference, _ = submit(project, annotator, comparison.pk, choice="b", strength=None)
    assert preference.strength is None


# Skipping -----------------------------------------------------------------------------------------


def test_a_skip_records_the_reason_and_frees_the_comparison_for_others(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, annotator)
    skipped = queue.assignment_skip(
        project=project, annotator=annotator, comparison_id=comparison.pk, reason="  I can't read Python  "
    )
    assert (skipped.status, skipped.skip_reason) == ("skipped", "I can't read Python")
    assert lease(project, colleague(project)).comparison_id == comparison.pk


def test_skipping_twice_is_harmless(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, annotator)
    first = queue.assignment_skip(project=project, annotator=annotator, comparison_id=comparison.pk, reason="a")
    second = queue.assignment_skip(project=project, annotator=annotator, comparison_id=comparison.pk, reason="b")
    assert first.pk == second.pk and second.skip_reason == "a"


def test_a_skip_needs_a_reason(project, annotator):
    comparison = make_comparison(project=project)
    lease(project, annotator)
    with pytest.raises(QueueError) as refused:
        queue.assignment_skip(project=project, annotator=annotator, comparison_id=comparison.pk, reason="  ")
    assert (refused.value.code, refused.value.field) == ("invalid", "reason")
    assert Assignment.objects.get().status == "leased"


def test_a_labelled_or_unleased_comparison_cannot_be_skipped(project, annotator):
    done, other = make_comparison(project=project), make_comparison(project=project)
    lease(project, annotator)
    submit(project, annotator, done.pk)
    with pytest.raises(QueueError) as labelled_error:
        queue.assignment_skip(project=project, annotator=annotator, comparison_id=done.pk, reason="x")
    with pytest.raises(QueueError) as unleased_error:
        queue.assignment_skip(project=project, annotator=annotator, comparison_id=other.pk, reason="x")
    assert (labelled_error.value.code, unleased_error.value.code) == ("already_labelled", "not_leased")


# Gold accuracy ------------------------------------------------------------------------------------


def test_gold_accuracy_counts_each_annotators_right_answers(project, annotator):
    project.gold_rate = 1
    project.overlap = 5
    project.save()
    golds = [make_comparison(project=project, is_gold=True, gold_choice=c) for c in ("a", "b", "tie")]
    make_comparison(project=project)  # regular work does not count
    other = colleague(project)
    answers = {annotator: ["a", "b", "both_bad", "a"], other: ["b", "b", "tie", "b"]}
    for user, choices in answers.items():
        for choice in choices:
            assignment = lease(project, user, rng=GOLD_DRAW)
            gold_answer = assignment.comparison.gold_choice
            submit(project, user, assignment.comparison_id, choice=choice if gold_answer else "a")
    assert {c.pk for c in golds} <= set(Preference.objects.values_list("comparison_id", flat=True))
    assert queue.gold_accuracy(project=project) == {annotator.pk: (2, 3), other.pk: (2, 3)}


# What the page shows ------------------------------------------------------------------------------


def test_a_dialogue_prompt_is_shown_as_turns(project):
    text = "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?\n\nHuman: Tell me a joke.\n\nAssistant:"
    prompt = Prompt(project=project, text=text)
    assert queue.prompt_turns(prompt) == [
        ("user", "Hi there"),
        ("assistant", "Hello! How can I help?"),
        ("user", "Tell me a joke."),
    ]
    chat = Prompt(
        project=project, messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    )
    assert queue.prompt_turns(chat) == [("system", "Be brief."), ("user", "Hi")]
    assert queue.prompt_turns(Prompt(project=project, text="What is 2+2?")) == [("user", "What is 2+2?")]


def test_the_display_puts_each_response_on_the_side_the_lease_recorded(project, annotator):
    prompt = PromptFactory(project=project)
    first = ResponseFactory(prompt=prompt, text="**first**")
    second = ResponseFactory(prompt=prompt, text="second")
    Comparison.objects.create(project=project, prompt=prompt, response_a=first, response_b=second)
    assignment = lease(project, annotator)
    display = queue.assignment_display(assignment=assignment)
    left, right = (display.left_html, display.right_html)
    if assignment.shown_left == "b":
        left, right = right, left
    assert "<strong>first</strong>" in left and "second" in right
    assert Response.objects.count() == 2
