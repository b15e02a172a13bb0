"""Labelling over HTTP: next, submit and skip call annotation.queue, which owns the rules; these
tests check the translation (statuses, bodies, error shapes), not the queue's policy."""

from __future__ import annotations

import pytest

from annotation.models import Assignment, Comparison, Preference
from tests.api.test_tokens_and_errors import assert_error_shape

pytestmark = pytest.mark.django_db

Q = "/api/v1/projects/main/queue"


def test_next_leases_a_comparison_with_its_texts_and_keeps_it_until_answered(world):
    client = world.client("annotator")
    lease = client.post(f"{Q}/next/")
    assert lease.status_code == 200
    body = lease.json()
    assert set(body) == {"comparison_id", "prompt", "response_a", "response_b", "shown_left", "leased_at", "expires_at"}
    comparison = Comparison.objects.get(pk=body["comparison_id"])
    assert body["prompt"] == "Which is kinder?"
    assert body["response_a"] == {"id": comparison.response_a_id, "text": comparison.response_a.text}
    assert body["shown_left"] in ("a", "b")
    assert client.post(f"{Q}/next/").json()["comparison_id"] == body["comparison_id"]
    assert Assignment.objects.get(annotator=world.users["annotator"]).first_shown_at is not None


def test_submit_stores_the_label_and_a_retry_returns_the_same_one(world):
    client = world.client("annotator")
    lease = client.post(f"{Q}/next/").json()
    answer = {"comparison_id": lease["comparison_id"], "choice": "b", "strength": 3, "time_spent_ms": 4200}
    first = client.post(f"{Q}/submit/", {**answer, "rationale": "less rude"}, format="json")
    assert first.status_code == 201
    assert (first.json()["choice"], first.json()["strength"], first.json()["shown_left"]) == (
        "b",
        3,
        lease["shown_left"],
    )
    retry = client.post(f"{Q}/submit/", answer, format="json")
    assert retry.status_code == 200 and retry.json()["id"] == first.json()["id"]
    changed = client.post(f"{Q}/submit/", {**answer, "choice": "a"}, format="json")
    assert_error_shape(changed, 409)
    assert Preference.objects.filter(annotator=world.users["annotator"]).count() == 1


def test_submit_without_a_lease_is_a_409_and_bad_fields_are_400s(world):
    client = world.client("annotator")
    unleased = client.post(f"{Q}/submit/", {"comparison_id": world.comparisons[2].pk, "choice": "a"}, format="json")
    assert "not assigned" in assert_error_shape(unleased, 409)["message"]
    lease = client.post(f"{Q}/next/").json()
    tie_with_strength = {"comparison_id": lease["comparison_id"], "choice": "tie", "strength": 2}
    assert (
        "strength" in assert_error_shape(client.post(f"{Q}/submit/", tie_with_strength, format="json"), 400)["errors"]
    )
    wrong_side = {
        "comparison_id": lease["comparison_id"],
        "choice": "a",
        "shown_left": "b" if lease["shown_left"] == "a" else "a",
    }
    assert "shown_left" in assert_error_shape(client.post(f"{Q}/submit/", wrong_side, format="json"), 400)["errors"]
    garbage = client.post(f"{Q}/submit/", {"comparison_id": "x", "choice": "maybe", "strength": 9}, format="json")
    assert set(assert_error_shape(garbage, 400)["errors"]) == {"comparison_id", "choice", "strength"}
    assert not Preference.objects.filter(annotator=world.users["annotator"]).exists()


def test_skip_gives_the_comparison_back_and_the_next_one_is_another(world):
    client = world.client("annotator")
    first = client.post(f"{Q}/next/").json()["comparison_id"]
    assert (
        "reason"
        in assert_error_shape(client.post(f"{Q}/skip/", {"comparison_id": first}, format="json"), 400)["errors"]
    )
    skipped = client.post(f"{Q}/skip/", {"comparison_id": first, "reason": "needs a doctor"}, format="json")
    assert skipped.status_code == 200
    assert (skipped.json()["status"], skipped.json()["skip_reason"]) == ("skipped", "needs a doctor")
    assert client.post(f"{Q}/next/").json()["comparison_id"] != first


def test_an_empty_queue_answers_204(world):
    client = world.client("annotator")
    # Overlap 1: the annotator labels what is open until nothing is left.
    for _ in range(5):
        lease = client.post(f"{Q}/next/")
        if lease.status_code == 204:
            break
        client.post(f"{Q}/submit/", {"comparison_id": lease.json()["comparison_id"], "choice": "a"}, format="json")
    assert lease.status_code == 204 and lease.content == b""
    assert Preference.objects.filter(annotator=world.users["annotator"]).count() == 2


def test_assignments_are_listed_for_their_annotator_and_all_of_them_for_admins(world):
    world.client("annotator").post(f"{Q}/next/")
    world.client("other").post(f"{Q}/next/")
    mine = world.client("annotator").get("/api/v1/projects/main/assignments/").json()["results"]
    assert [a["annotator"] for a in mine] == ["annotator"]
    assert_error_shape(
        world.client("annotator").get("/api/v1/projects/main/assignments/?annotator=other-annotator"), 403
    )
    everyone = world.client("admin").get("/api/v1/projects/main/assignments/?status=leased").json()["results"]
    assert {a["annotator"] for a in everyone} == {"annotator", "other-annotator"}


def test_a_gold_comparison_is_served_without_saying_so(world):
    Comparison.objects.filter(pk__in=[c.pk for c in world.comparisons]).update(is_gold=True, gold_choice="a")
    world.project.gold_rate = 1.0
    world.project.save()
    lease = world.client("annotator").post(f"{Q}/next/")
    assert lease.status_code == 200
    assert "gold" not in lease.content.decode()
