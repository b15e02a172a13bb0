"""The API's permission rules, extended to the pages: an annotator sees only their own projects,
their own leases and nothing of anyone else's labels, and cannot export or train from any page."""

from __future__ import annotations

import json

import pytest
from django.test import Client

from annotation.models import Assignment, Preference, Role
from annotation.queue import assignment_next
from tests.factories import MembershipFactory, ProjectFactory, UserFactory, make_comparison, make_preference

pytestmark = pytest.mark.django_db

SECRET_RATIONALE = "bob-thinks-a-is-better-because-xyzzy"


@pytest.fixture
def cast(db):
    p = ProjectFactory(slug="p", name="Project P")
    q = ProjectFactory(slug="q", name="Project Q secret")
    alice, bob = UserFactory(username="alice"), UserFactory(username="bob")
    MembershipFactory(project=p, user=alice, role=Role.ANNOTATOR)
    MembershipFactory(project=p, user=bob, role=Role.ANNOTATOR)
    MembershipFactory(project=q, user=bob, role=Role.ANNOTATOR)
    p_items = [make_comparison(project=p) for _ in range(3)]
    q_item = make_comparison(project=q)
    labelled = make_preference(comparison=p_items[0], annotator=bob, choice="b", strength=3)
    labelled.rationale = SECRET_RATIONALE
    labelled.save()
    return {"p": p, "q": q, "alice": alice, "bob": bob, "p_items": p_items, "q_item": q_item}


def logged_in(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def post(client, url, body):
    return client.post(url, json.dumps(body), content_type="application/json")


def test_an_annotator_of_p_learns_nothing_of_project_q(cast):
    alice = logged_in(cast["alice"])
    home = alice.get("/").content.decode()
    assert "Project P" in home and "Project Q secret" not in home and "/p/q/" not in home
    assert alice.get("/p/q/").status_code == 404
    q_id = cast["q_item"].pk
    for endpoint, body in [
        ("next", {}),
        ("submit", {"comparison_id": q_id, "choice": "a", "strength": 1, "shown_left": "a"}),
        ("skip", {"comparison_id": q_id, "reason": "x"}),
    ]:
        response = post(alice, f"/p/q/{endpoint}", body)
        assert response.status_code == 404, endpoint
        assert "Project Q" not in response.content.decode()
    # And a Q comparison id sent through P's endpoints is no way in either.
    response = post(alice, "/p/p/submit", {"comparison_id": q_id, "choice": "a", "strength": 1, "shown_left": "a"})
    assert response.status_code in (404, 409)
    assert not Preference.objects.filter(annotator=cast["alice"]).exists()
    assert not Assignment.objects.filter(annotator=cast["alice"], comparison__project=cast["q"]).exists()


def test_nobody_can_submit_or_skip_a_comparison_leased_to_someone_else(cast):
    leased_to_bob = assignment_next(project=cast["p"], annotator=cast["bob"])
    assert leased_to_bob is not None
    alice = logged_in(cast["alice"])
    body = {"comparison_id": leased_to_bob.comparison_id, "choice": "a", "strength": 2, "shown_left": "a"}
    refused = post(alice, "/p/p/submit", body)
    assert refused.status_code == 409 and refused.json()["code"] == "not_leased"
    refused = post(alice, "/p/p/skip", {"comparison_id": leased_to_bob.comparison_id, "reason": "mine now"})
    assert refused.status_code == 409
    leased_to_bob.refresh_from_db()
    assert leased_to_bob.status == "leased" and leased_to_bob.annotator == cast["bob"]
    assert not Preference.objects.filter(annotator=cast["alice"]).exists()


def test_the_label_page_never_shows_another_annotators_label(cast):
    alice = logged_in(cast["alice"])
    seen = []
    page = alice.get("/p/p/").content.decode()
    seen.append(page)
    exclude = []
    for _ in range(3):
        answer = post(alice, "/p/p/next", {"exclude": exclude}).json()
        seen.append(json.dumps(answer))
        if answer["assignment"]:
            exclude.append(answer["assignment"]["comparison_id"])
    text = "\n".join(seen)
    assert SECRET_RATIONALE not in text and "bob" not in text


def test_an_annotator_cannot_reach_the_admin_the_console_export_or_training(cast):
    alice = logged_in(cast["alice"])
    for url in ["/admin/", "/admin/annotation/preference/", f"/admin/annotation/preference/{cast['p_items'][0].pk}/"]:
        response = alice.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    console = alice.get("/console/")
    assert console.status_code in (302, 403, 404)
    assert SECRET_RATIONALE not in console.content.decode()
    assert alice.get("/api/v1/projects/p/export/").status_code == 403
    assert post(alice, "/api/v1/projects/p/training-runs/", {"kind": "reward"}).status_code == 403
    preferences = alice.get("/api/v1/projects/p/preferences/").json()
    rows = preferences["results"] if isinstance(preferences, dict) else preferences
    assert rows == []  # alice has labelled nothing; bob's label is not hers to see
