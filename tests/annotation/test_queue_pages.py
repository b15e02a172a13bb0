"""The labelling page and its JSON endpoints over Django's test client: who may use them, what they
answer, and that a refused request changes nothing."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from django.test import Client

from annotation import queue
from annotation.models import Assignment, Comparison, Preference, Role
from tests.factories import MembershipFactory, PromptFactory, ResponseFactory, UserFactory, make_comparison

pytestmark = pytest.mark.django_db


@pytest.fixture
def annotator(project):
    user = get_user_model().objects.create(username="pages-annotator")
    MembershipFactory(project=project, user=user)
    return user


@pytest.fixture
def member(client, annotator):
    client.force_login(annotator)
    return client


def post(client, url, body, **extra):
    data = body if isinstance(body, (str, bytes)) else json.dumps(body)
    return client.post(url, data=data, content_type="application/json", **extra)


def urls(project):
    base = f"/p/{project.slug}/"
    return {"page": base, "next": base + "next", "submit": base + "submit", "skip": base + "skip"}


def test_a_visitor_is_sent_to_log_in_from_the_page_and_its_endpoints(client, project):
    for name, url in urls(project).items():
        response = client.get(url) if name == "page" else post(client, url, {})
        assert response.status_code == 302 and response["Location"].startswith("/accounts/login/"), name


def test_someone_outside_the_project_learns_nothing_about_it(client, project):
    make_comparison(project=project)
    outsider = get_user_model().objects.create(username="outsider")
    client.force_login(outsider)
    assert client.get(urls(project)["page"]).status_code == 404
    response = post(client, urls(project)["next"], {})
    assert response.status_code == 404 and response.json()["code"] == "not_found"
    assert Assignment.objects.count() == 0


def test_staff_who_are_not_members_are_told_why_they_cannot_label(client, project, staff):
    client.force_login(staff)
    assert client.get(urls(project)["page"]).status_code == 403
    assert post(client, urls(project)["next"], {}).status_code == 403


def test_the_page_shows_a_leased_comparison_without_saying_what_is_gold_or_who_wrote_it(member, project, annotator):
    prompt = PromptFactory(project=project, text="\n\nHuman: Which is safer?\n\nAssistant:")
    first = ResponseFactory(prompt=prompt, text="Use a **helmet**.", source="secret-model-x")
    second = ResponseFactory(prompt=prompt, text="<script>window.pwned=1</script>", source="secret-model-y")
    Comparison.objects.create(
        project=project, prompt=prompt, response_a=first, response_b=second, is_gold=True, gold_choice="a"
    )
    response = member.get(urls(project)["page"])
    page = response.content.decode()
    assert response.status_code == 200
    assert "<strong>helmet</strong>" in page and "Which is safer?" in page
    assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page and "<script>window" not in page
    assert "secret-model" not in page and "gold" not in page.lower()
    assignment = Assignment.objects.get(annotator=annotator)
    assert assignment.first_shown_at is not None
    assert f'data-shown-left="{assignment.shown_left}"' in page


def test_the_page_says_so_when_nothing_is_left(member, project):
    page = member.get(urls(project)["page"]).content.decode()
    assert "Nothing left for you here" in page


def test_next_prefetches_another_comparison_and_records_the_one_now_shown(member, project, annotator):
    make_comparison(project=project)
    make_comparison(project=project)
    member.get(urls(project)["page"])
    shown = Assignment.objects.get(annotator=annotator)
    body = post(member, urls(project)["next"], {"exclude": [shown.comparison_id]}).json()
    prefetched = body["assignment"]
    assert prefetched["comparison_id"] != shown.comparison_id
    assert f'data-comparison-id="{prefetched["comparison_id"]}"' in body["html"]
    held = Assignment.objects.get(comparison_id=prefetched["comparison_id"])
    assert held.first_shown_at is None
    post(member, urls(project)["next"], {"exclude": [prefetched["comparison_id"]], "shown": held.comparison_id})
    held.refresh_from_db()
    assert held.first_shown_at is not None


def test_shown_marks_only_the_callers_own_live_lease_once(member, project, annotator):
    make_comparison(project=project)
    make_comparison(project=project)
    member.get(urls(project)["page"])
    mine = Assignment.objects.get(annotator=annotator)
    other = UserFactory()
    MembershipFactory(project=project, user=other, role=Role.ANNOTATOR)
    theirs = queue.assignment_next(project=project, annotator=other, exclude_ids=[mine.comparison_id])
    assert theirs.comparison_id != mine.comparison_id
    Assignment.objects.filter(pk=mine.pk).update(first_shown_at=None)
    for shown in (theirs.comparison_id, 2**63, -(2**63) - 1, 999_999_999):
        response = post(member, urls(project)["next"], {"exclude": [mine.comparison_id], "shown": shown})
        assert response.status_code == 200
    theirs.refresh_from_db()
    mine.refresh_from_db()
    assert theirs.first_shown_at is None and mine.first_shown_at is None
    post(member, urls(project)["next"], {"exclude": [mine.comparison_id], "shown": mine.comparison_id})
    mine.refresh_from_db()
    first = mine.first_shown_at
    assert first is not None
    post(member, urls(project)["next"], {"exclude": [mine.comparison_id], "shown": mine.comparison_id})
    mine.refresh_from_db()
    assert mine.first_shown_at == first


def test_next_answers_null_when_the_queue_is_empty(member, project):
    body = post(member, urls(project)["next"], {}).json()
    assert body["assignment"] is None and "Nothing left" in body["html"]


def test_a_submit_is_stored_once_however_often_it_is_sent(member, project, annotator):
    comparison = make_comparison(project=project)
    member.get(urls(project)["page"])
    shown_left = Assignment.objects.get().shown_left
    answer = {
        "comparison_id": comparison.pk,
        "choice": "b",
        "strength": 3,
        "rationale": "B is right",
        "time_spent_ms": 5100,
        "shown_left": shown_left,
    }
    first = post(member, urls(project)["submit"], answer)
    again = post(member, urls(project)["submit"], answer)
    assert first.status_code == again.status_code == 200
    assert (first.json()["created"], again.json()["created"]) == (True, False)
    preference = Preference.objects.get()
    assert (preference.choice, preference.strength, preference.time_spent_ms) == ("b", 3, 5100)


def test_a_changed_answer_is_refused_with_a_clear_message(member, project):
    comparison = make_comparison(project=project)
    member.get(urls(project)["page"])
    post(member, urls(project)["submit"], {"comparison_id": comparison.pk, "choice": "tie"})
    response = post(member, urls(project)["submit"], {"comparison_id": comparison.pk, "choice": "both_bad"})
    assert response.status_code == 409
    assert response.json()["code"] == "already_labelled"
    assert f"already labelled comparison {comparison.pk}" in response.json()["message"]
    assert Preference.objects.get().choice == "tie"


def test_a_submit_for_a_comparison_not_leased_to_the_annotator_is_refused(member, project):
    comparison = make_comparison(project=project)
    response = post(member, urls(project)["submit"], {"comparison_id": comparison.pk, "choice": "tie"})
    assert response.status_code == 409 and response.json()["code"] == "not_leased"
    assert Preference.objects.count() == 0


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"choice": "tie"}, "comparison_id"),
        ({"comparison_id": "7", "choice": "tie"}, "comparison_id"),
        ({"comparison_id": True, "choice": "tie"}, "comparison_id"),
        ({"choice": "left"}, "choice"),
        ({"choice": 1}, "choice"),
        ({"choice": "a", "strength": "2"}, "strength"),
        ({"choice": "tie", "strength": 1}, "strength"),
        ({"choice": "a", "time_spent_ms": 1.5}, "time_spent_ms"),
        ({"choice": "a", "rationale": ["x"]}, "rationale"),
    ],
)
def test_bad_input_is_answered_400_naming_the_field(member, project, body, field):
    comparison = make_comparison(project=project)
    member.get(urls(project)["page"])
    if field != "comparison_id":
        body = {"comparison_id": comparison.pk, **body}
    response = post(member, urls(project)["submit"], body)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid" and field in response.json()["errors"]
    assert Preference.objects.count() == 0


@pytest.mark.parametrize("raw", ["{not json", "[1, 2]", '"text"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_object_is_answered_400(member, project, raw):
    response = post(member, urls(project)["submit"], raw)
    assert response.status_code == 400 and response.json()["code"] == "invalid"


def test_an_oversized_body_is_refused_unread(member, project):
    response = post(member, urls(project)["submit"], {"choice": "a", "rationale": "x" * 70_000})
    assert response.status_code == 400 and "larger than" in response.json()["message"]


def test_next_refuses_a_malformed_exclusion_list(member, project):
    for exclude in ("1,2", list(range(11)), ["a"]):
        response = post(member, urls(project)["next"], {"exclude": exclude})
        assert response.status_code == 400 and "exclude" in response.json()["errors"]


def test_a_skip_needs_a_reason_and_records_it(member, project, annotator):
    comparison = make_comparison(project=project)
    member.get(urls(project)["page"])
    refused = post(member, urls(project)["skip"], {"comparison_id": comparison.pk})
    assert refused.status_code == 400 and "reason" in refused.json()["errors"]
    response = post(member, urls(project)["skip"], {"comparison_id": comparison.pk, "reason": "Outside my expertise"})
    assert response.status_code == 200
    assignment = Assignment.objects.get(annotator=annotator)
    assert (assignment.status, assignment.skip_reason) == ("skipped", "Outside my expertise")


def test_the_endpoints_need_the_csrf_token(project, annotator):
    client = Client(enforce_csrf_checks=True)
    client.force_login(annotator)
    make_comparison(project=project)
    assert post(client, urls(project)["next"], {}).status_code == 403
    assert Assignment.objects.count() == 0
    page = client.get(urls(project)["page"]).content.decode()
    token = page.split('data-csrf-token="')[1].split('"')[0]
    assert post(client, urls(project)["next"], {}, HTTP_X_CSRFTOKEN=token).status_code == 200


def test_the_endpoints_answer_only_post(member, project):
    for name in ("next", "submit", "skip"):
        assert member.get(urls(project)[name]).status_code == 405


def test_the_home_page_links_to_the_projects_the_user_labels(member, project):
    page = member.get("/").content.decode()
    assert f'href="/p/{project.slug}/"' in page
