"""The rules of the data model hold in the database itself, whatever writes the rows."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation.models import Assignment, Comparison, Preference, Project
from tests.factories import PromptFactory, ResponseFactory, UserFactory, make_comparison, make_preference
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


def refused(fn) -> bool:
    try:
        with transaction.atomic():
            fn()
    except IntegrityError:
        return True
    return False


def test_it_refuses_a_second_preference_from_the_same_annotator(project):
    comparison = make_comparison(project=project)
    user = UserFactory()
    make_preference(comparison=comparison, annotator=user, choice="a")
    assert refused(lambda: make_preference(comparison=comparison, annotator=user, choice="b"))
    assert Preference.objects.count() == 1


def test_it_refuses_a_comparison_whose_responses_answer_different_prompts(project):
    prompt, other = PromptFactory(project=project), PromptFactory(project=project)
    mine, theirs = ResponseFactory(prompt=prompt), ResponseFactory(prompt=other)
    assert refused(
        lambda: Comparison.objects.create(project=project, prompt=prompt, response_a=mine, response_b=theirs)
    )
    assert Comparison.objects.count() == 0


def test_it_refuses_the_same_check_through_raw_sql(project):
    prompt, other = PromptFactory(project=project), PromptFactory(project=project)
    mine, theirs = ResponseFactory(prompt=prompt), ResponseFactory(prompt=other)
    sql = (
        "INSERT INTO annotation_comparison (project_id, prompt_id, response_a_id, response_b_id, is_gold,"
        " gold_choice, label_count, created_at) VALUES (%s, %s, %s, %s, false, '', 0, %s)"
    )

    def insert():
        with connection.cursor() as cursor:
            cursor.execute(sql, [project.pk, prompt.pk, mine.pk, theirs.pk, timezone.now()])

    assert refused(insert)


def test_it_refuses_a_comparison_in_another_project_than_its_prompt(project):
    comparison_prompt = PromptFactory(project=project)
    a, b = ResponseFactory(prompt=comparison_prompt), ResponseFactory(prompt=comparison_prompt)
    elsewhere = Project.objects.create(name="Other", slug="other")
    assert refused(
        lambda: Comparison.objects.create(project=elsewhere, prompt=comparison_prompt, response_a=a, response_b=b)
    )


def test_it_refuses_a_response_compared_with_itself_and_a_pair_twice(project):
    prompt = PromptFactory(project=project)
    a, b = ResponseFactory(prompt=prompt), ResponseFactory(prompt=prompt)
    assert refused(lambda: Comparison.objects.create(project=project, prompt=prompt, response_a=a, response_b=a))
    Comparison.objects.create(project=project, prompt=prompt, response_a=a, response_b=b)
    assert refused(lambda: Comparison.objects.create(project=project, prompt=prompt, response_a=a, response_b=b))
    # The reversed spelling of the same unordered pair breaks the a < b rule.
    assert refused(lambda: Comparison.objects.create(project=project, prompt=prompt, response_a=b, response_b=a))


def test_it_refuses_a_strength_on_a_tie_and_an_unknown_choice(project):
    comparison = make_comparison(project=project)
    assert refused(lambda: make_preference(comparison=comparison, annotator=UserFactory(), choice="tie", strength=2))
    assert refused(lambda: make_preference(comparison=comparison, annotator=UserFactory(), choice="c", strength=None))
    assert refused(lambda: make_preference(comparison=comparison, annotator=UserFactory(), choice="a", strength=7))
    make_preference(comparison=comparison, annotator=UserFactory(), choice="both_bad", strength=None)


def test_it_refuses_a_preference_filed_under_another_project(project):
    comparison = make_comparison(project=project)
    elsewhere = Project.objects.create(name="Other", slug="other")
    assert refused(
        lambda: Preference.objects.create(project=elsewhere, comparison=comparison, annotator=UserFactory(), choice="a")
    )


def test_it_refuses_a_gold_comparison_without_an_answer(project):
    assert refused(lambda: make_comparison(project=project, is_gold=True))
    make_comparison(project=project, is_gold=True, gold_choice="b")


def test_it_refuses_a_lease_that_ends_before_it_starts(project):
    comparison = make_comparison(project=project)
    now = timezone.now()
    assert refused(
        lambda: Assignment.objects.create(
            project=project,
            comparison=comparison,
            annotator=UserFactory(),
            shown_left="a",
            leased_at=now,
            expires_at=now - timedelta(seconds=1),
        )
    )


def test_it_refuses_an_overlap_of_zero(db):
    assert refused(lambda: Project.objects.create(name="Zero", slug="zero", overlap=0))


def test_it_keeps_one_active_model_per_kind(project):
    ModelVersion.objects.create(
        project=project, kind="reward", version=1, artifact_path="/m/1", base="b", is_active=True
    )
    assert refused(
        lambda: ModelVersion.objects.create(
            project=project, kind="reward", version=2, artifact_path="/m/2", base="b", is_active=True
        )
    )
    ModelVersion.objects.create(
        project=project, kind="policy", version=1, artifact_path="/p/1", base="b", is_active=True
    )


def test_it_keeps_one_queued_or_running_run_per_kind(project):
    TrainingRun.objects.create(project=project, kind="reward")
    assert refused(lambda: TrainingRun.objects.create(project=project, kind="reward"))
    TrainingRun.objects.create(project=project, kind="ppo")
    assert refused(lambda: TrainingRun.objects.create(project=project, kind="reward", status="succeeded"))
    TrainingRun.objects.create(project=project, kind="reward", status="succeeded", finished_at=timezone.now())
