"""Projects, members, bulk import, prompts, comparisons, preferences, training runs and model
versions through the API."""

from __future__ import annotations

import io
import json

import pytest
from django.utils import timezone

from annotation.models import Comparison, Membership, Preference, Prompt, Response
from tests.api.test_tokens_and_errors import assert_error_shape
from tests.factories import ResponseFactory, make_preference
from training.models import ModelVersion, RunStatus, TrainingRun

pytestmark = pytest.mark.django_db

BASE = "/api/v1/projects/main"
PAIR = {"prompt": "Is water wet?", "chosen": "Yes.", "rejected": "No.", "margin": 2, "annotator": "alice"}


def counts() -> tuple[int, int, int, int]:
    return Prompt.objects.count(), Response.objects.count(), Comparison.objects.count(), Preference.objects.count()


def test_staff_create_a_project_and_a_duplicate_slug_is_a_409(world):
    staff = world.client("staff")
    created = staff.post("/api/v1/projects/", {"name": "New", "slug": "new", "overlap": 3}, format="json")
    assert created.status_code == 201 and created.json()["overlap"] == 3
    assert_error_shape(staff.post("/api/v1/projects/", {"name": "Again", "slug": "new"}, format="json"), 409)
    assert_error_shape(staff.post("/api/v1/projects/", {"name": "Bad", "slug": "no spaces"}, format="json"), 400)


def test_annotators_list_only_their_projects(world):
    slugs = [p["slug"] for p in world.client("annotator").get("/api/v1/projects/").json()["results"]]
    assert slugs == ["main"]
    staff = [p["slug"] for p in world.client("staff").get("/api/v1/projects/").json()["results"]]
    assert set(staff) == {"main", "elsewhere"}


def test_admins_add_change_and_remove_members(world):
    admin = world.client("admin")
    added = admin.put(f"{BASE}/members/", {"username": "outsider", "role": "admin"}, format="json")
    assert added.status_code == 200 and added.json()["role"] == "admin"
    assert Membership.objects.get(project=world.project, user=world.users["outsider"]).role == "admin"
    assert_error_shape(admin.put(f"{BASE}/members/", {"username": "ghost"}, format="json"), 400)
    assert admin.delete(f"{BASE}/members/{world.users['outsider'].pk}/").status_code == 204
    assert_error_shape(admin.delete(f"{BASE}/members/{world.users['outsider'].pk}/"), 404)
    usernames = {m["username"] for m in admin.get(f"{BASE}/members/").json()["results"]}
    assert usernames == {"annotator", "other-annotator", "project-admin"}


def test_a_json_import_writes_everything_and_a_repeat_writes_nothing(world):
    admin = world.client("admin")
    before = counts()
    body = {"records": [PAIR, {"prompt": [{"role": "user", "content": "Hi"}], "responses": ["Hello", "Hey", "Yo"]}]}
    first = admin.post(f"{BASE}/import/", body, format="json")
    assert first.status_code == 201, first.json()
    assert first.json() == {
        "prompts_created": 2,
        "responses_created": 5,
        "comparisons_created": 4,
        "preferences_created": 1,
        "preferences_existing": 0,
    }
    assert counts() == (before[0] + 2, before[1] + 5, before[2] + 4, before[3] + 1)
    again = admin.post(f"{BASE}/import/", body, format="json")
    assert again.status_code == 200 and again.json()["preferences_existing"] == 1
    assert counts() == (before[0] + 2, before[1] + 5, before[2] + 4, before[3] + 1)
    preference = Preference.objects.get(comparison__prompt__text="Is water wet?")
    assert preference.strength == 2 and preference.annotator.username == "import:alice"
    assert preference.comparison.label_count == 1


def test_label_counts_follow_labels_from_new_and_repeated_annotators(world):
    admin = world.client("admin")
    bob = {**PAIR, "annotator": "bob"}
    carol_flipped = {**PAIR, "chosen": PAIR["rejected"], "rejected": PAIR["chosen"], "annotator": "carol"}
    assert admin.post(f"{BASE}/import/", {"records": [PAIR, bob]}, format="json").status_code == 201
    comparison = Comparison.objects.get(prompt__text=PAIR["prompt"])
    assert comparison.label_count == 2
    assert admin.post(f"{BASE}/import/", {"records": [carol_flipped]}, format="json").status_code == 201
    comparison.refresh_from_db()
    assert comparison.label_count == 3
    assert sorted(Preference.objects.filter(comparison=comparison).values_list("choice", flat=True)) == ["a", "a", "b"]


def test_a_bare_json_list_is_accepted_too(world):
    response = world.client("admin").post(f"{BASE}/import/", [PAIR], format="json")
    assert response.status_code == 201 and response.json()["preferences_created"] == 1


def test_one_bad_record_refuses_the_import_with_every_bad_row_listed(world):
    before = counts()
    body = {
        "records": [
            PAIR,
            {"prompt": "", "chosen": "a", "rejected": "b"},
            {"prompt": "x", "chosen": "same", "rejected": "same"},
            "not an object",
            {"prompt": "Is water wet?", "chosen": "No.", "rejected": "Yes.", "annotator": "alice"},
        ]
    }
    response = world.client("admin").post(f"{BASE}/import/", body, format="json")
    errors = assert_error_shape(response, 400)["errors"]
    assert set(errors) == {"records[1]", "records[2]", "records[3]"}
    assert "empty" in errors["records[1]"][0] and "identical" in errors["records[2]"][0]
    assert counts() == before
    # With the format errors fixed, the contradiction (same annotator, flipped pair) is reported.
    body["records"] = [body["records"][0], body["records"][4]]
    errors = assert_error_shape(world.client("admin").post(f"{BASE}/import/", body, format="json"), 400)["errors"]
    assert list(errors) == ["records[1]"] and "contradicts" in errors["records[1]"][0]
    assert counts() == before


def test_a_jsonl_upload_and_a_raw_jsonl_body_import_the_same_way(world):
    admin = world.client("admin")
    lines = "\n".join(json.dumps({**PAIR, "prompt": f"Question {i}?"}) for i in range(5)) + "\n"
    upload = io.BytesIO(lines.encode())
    upload.name = "pairs.jsonl"
    response = admin.post(f"{BASE}/import/", {"file": upload, "source": "gpt-x"}, format="multipart")
    assert response.status_code == 201 and response.json()["preferences_created"] == 5
    assert Response.objects.filter(source="gpt-x").count() == 10
    raw = "\n".join(json.dumps({**PAIR, "prompt": f"Other {i}?"}) for i in range(3))
    response = admin.generic("POST", f"{BASE}/import/?source=raw-model", raw.encode(), content_type="application/jsonl")
    assert response.status_code == 201 and response.json()["preferences_created"] == 3
    assert Response.objects.filter(source="raw-model").count() == 6


def test_a_bad_jsonl_upload_names_its_lines(world):
    before = counts()
    content = (
        json.dumps(PAIR).encode() + b'\n{"prompt": "x"\n' + b'{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n'
    )
    upload = io.BytesIO(content)
    upload.name = "bad.jsonl"
    response = world.client("admin").post(f"{BASE}/import/", {"file": upload}, format="multipart")
    errors = assert_error_shape(response, 400)["errors"]
    assert set(errors) == {"file: line 2", "file: line 3"}
    assert "UTF-8" in errors["file: line 3"][0]
    assert counts() == before
    missing = world.client("admin").post(f"{BASE}/import/", {"source": "x"}, format="multipart")
    assert "file" in assert_error_shape(missing, 400)["errors"]


def test_prompts_list_and_detail_show_responses_and_counts(world):
    admin = world.client("admin")
    listed = admin.get(f"{BASE}/prompts/").json()["results"]
    assert [(p["id"], p["n_responses"], p["n_comparisons"]) for p in listed] == [(world.prompt.pk, 3, 3)]
    detail = admin.get(f"{BASE}/prompts/{world.prompt.pk}/").json()
    assert {r["text"] for r in detail["responses"]} == {"Kind words.", "Rude words.", "No words."}
    elsewhere = Prompt.objects.create(project=world.other_project, text="hidden", content_hash="h" * 64)
    assert_error_shape(admin.get(f"{BASE}/prompts/{elsewhere.pk}/"), 404)


def test_pairing_a_prompt_makes_all_pairs_or_up_to_a_cap_and_never_duplicates(world):
    admin = world.client("admin")
    for i in range(3):
        ResponseFactory(prompt=world.prompt, text=f"Extra answer {i}")
    # 6 responses: 15 pairs, 3 of which exist.
    capped = admin.post(f"{BASE}/prompts/{world.prompt.pk}/comparisons/", {"max_pairs": 7}, format="json")
    assert capped.status_code == 201 and len(capped.json()) == 4
    assert Comparison.objects.filter(prompt=world.prompt).count() == 7
    again = admin.post(f"{BASE}/prompts/{world.prompt.pk}/comparisons/", {"max_pairs": 7}, format="json")
    assert again.json() == []
    every = admin.post(f"{BASE}/prompts/{world.prompt.pk}/comparisons/", {}, format="json")
    assert len(every.json()) == 8
    assert Comparison.objects.filter(prompt=world.prompt).count() == 15
    assert all(c["response_a_id"] < c["response_b_id"] for c in every.json())
    bad = admin.post(f"{BASE}/prompts/{world.prompt.pk}/comparisons/", {"max_pairs": 0}, format="json")
    assert "max_pairs" in assert_error_shape(bad, 400)["errors"]


def test_comparisons_list_filters_and_detail_carries_the_texts(world):
    admin = world.client("admin")
    Comparison.objects.filter(pk=world.comparisons[2].pk).update(is_gold=True, gold_choice="b")
    gold = admin.get(f"{BASE}/comparisons/?is_gold=true").json()["results"]
    assert [c["id"] for c in gold] == [world.comparisons[2].pk]
    by_prompt = admin.get(f"{BASE}/comparisons/?prompt={world.prompt.pk}&page_size=2").json()
    assert len(by_prompt["results"]) == 2 and by_prompt["next"]
    rest = admin.get(by_prompt["next"]).json()
    assert len(rest["results"]) == 1
    detail = admin.get(f"{BASE}/comparisons/{world.comparisons[0].pk}/").json()
    assert detail["prompt"] == "Which is kinder?" and detail["response_a"]["text"] == "Kind words."


def test_annotators_see_their_own_preferences_only(world):
    mine = make_preference(comparison=world.comparisons[1], annotator=world.users["annotator"], choice="b")
    annotator = world.client("annotator")
    listed = annotator.get(f"{BASE}/preferences/").json()["results"]
    assert [p["id"] for p in listed] == [mine.pk]
    assert annotator.get(f"{BASE}/preferences/{mine.pk}/").status_code == 200
    assert_error_shape(annotator.get(f"{BASE}/preferences/{world.others_preference.pk}/"), 404)
    assert_error_shape(annotator.get(f"{BASE}/preferences/?annotator=other-annotator"), 403)
    assert annotator.get(f"{BASE}/preferences/?comparison={world.comparisons[0].pk}").json()["results"] == []


def test_admins_filter_preferences_by_annotator_choice_comparison_and_time(world):
    make_preference(comparison=world.comparisons[1], annotator=world.users["annotator"], choice="b")
    admin = world.client("admin")
    assert len(admin.get(f"{BASE}/preferences/").json()["results"]) == 2
    by_other = admin.get(f"{BASE}/preferences/?annotator=other-annotator").json()["results"]
    assert [p["annotator"] for p in by_other] == ["other-annotator"]
    assert len(admin.get(f"{BASE}/preferences/?choice=b").json()["results"]) == 1
    future = (timezone.now() + timezone.timedelta(days=1)).isoformat()
    assert admin.get(f"{BASE}/preferences/", {"since": future}).json()["results"] == []
    assert len(admin.get(f"{BASE}/preferences/", {"until": future}).json()["results"]) == 2
    assert admin.get(f"{BASE}/preferences/?annotator=nobody").json()["results"] == []


def test_a_training_run_is_queued_once_per_kind_and_cancelled(world):
    admin = world.client("admin")
    assert_error_shape(admin.post(f"{BASE}/training-runs/", {"kind": "reward"}, format="json"), 409)
    world.run.status, world.run.finished_at = RunStatus.FAILED, timezone.now()
    world.run.save()
    created = admin.post(f"{BASE}/training-runs/", {"kind": "reward", "config": {"epochs": 2}}, format="json")
    assert created.status_code == 201, created.json()
    run = created.json()
    assert run["status"] == "queued" and run["config"]["epochs"] == 2 and run["created_by"] == "project-admin"
    typo = admin.post(f"{BASE}/training-runs/", {"kind": "ppo", "config": "x"}, format="json")
    assert "config" in assert_error_shape(typo, 400)["errors"]
    assert (
        "kind"
        in assert_error_shape(admin.post(f"{BASE}/training-runs/", {"kind": "sft"}, format="json"), 400)["errors"]
    )
    listed = admin.get(f"{BASE}/training-runs/?status=failed").json()["results"]
    assert [r["id"] for r in listed] == [world.run.pk]


def test_cancelling_a_running_run_marks_it_cancelled_and_a_finished_one_is_a_409(world):
    admin = world.client("admin")
    TrainingRun.objects.filter(pk=world.run.pk).update(status=RunStatus.RUNNING, started_at=timezone.now())
    TrainingRun.objects.filter(pk=world.run.pk).update(progress=0.5, step=5, total_steps=10, metrics={"loss": 0.3})
    detail = admin.get(f"{BASE}/training-runs/{world.run.pk}/").json()
    assert (detail["progress"], detail["step"], detail["metrics"]) == (0.5, 5, {"loss": 0.3})
    cancelled = admin.post(f"{BASE}/training-runs/{world.run.pk}/cancel/")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["finished_at"]
    assert_error_shape(admin.post(f"{BASE}/training-runs/{world.run.pk}/cancel/"), 409)


def test_promote_and_roll_back_keep_one_active_model_per_kind(world):
    admin = world.client("admin")
    v1, v2 = world.versions
    promoted = admin.post(f"{BASE}/model-versions/{v1.pk}/promote/").json()
    assert promoted["is_active"] is True and promoted["promoted_at"]
    assert list(ModelVersion.objects.filter(is_active=True).values_list("pk", flat=True)) == [v1.pk]
    # v1 is the oldest: nothing to roll back to.
    assert_error_shape(admin.post(f"{BASE}/model-versions/rollback/", {"kind": "reward"}, format="json"), 409)
    admin.post(f"{BASE}/model-versions/{v2.pk}/promote/")
    rolled = admin.post(f"{BASE}/model-versions/rollback/", {"kind": "reward"}, format="json").json()
    assert rolled["id"] == v1.pk and rolled["is_active"]
    assert ModelVersion.objects.filter(is_active=True).count() == 1
    assert_error_shape(admin.post(f"{BASE}/model-versions/rollback/", {"kind": "policy"}, format="json"), 409)
    listed = admin.get(f"{BASE}/model-versions/?kind=reward").json()["results"]
    assert [(v["label"], v["is_active"]) for v in listed] == [("reward-v2", False), ("reward-v1", True)]
