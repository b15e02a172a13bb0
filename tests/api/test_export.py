"""The streamed export: four formats, raw and aggregated, and its filters."""

from __future__ import annotations

import csv
import io
import json

import pyarrow.parquet as pq
import pytest
from django.utils import timezone

from annotation import exports
from annotation.models import Comparison, Preference
from annotation.selectors import annotator_pseudonym
from tests.api.test_tokens_and_errors import assert_error_shape
from tests.factories import PromptFactory, ResponseFactory, UserFactory, make_preference
from training.models import ModelVersion

pytestmark = pytest.mark.django_db

URL = "/api/v1/projects/main/export/"


@pytest.fixture
def labelled(world):
    """c0: other=a(2), annotator=a(3), admin=b -> majority a, 2/3. c1: annotator=tie, other=tie
    -> majority tie. c2: annotator=b, other=a -> split vote. Plus a chat prompt labelled b by admin."""
    users = world.users
    c0, c1, c2 = world.comparisons
    make_preference(comparison=c0, annotator=users["annotator"], choice="a", strength=3)
    make_preference(comparison=c0, annotator=users["admin"], choice="b", strength=None)
    make_preference(comparison=c1, annotator=users["annotator"], choice="tie", strength=None)
    make_preference(comparison=c1, annotator=users["other"], choice="tie", strength=None)
    make_preference(comparison=c2, annotator=users["annotator"], choice="b", strength=1)
    make_preference(comparison=c2, annotator=users["other"], choice="a", strength=1)
    chat = PromptFactory(project=world.project, messages=[{"role": "user", "content": "Hi there"}], text="")
    first, second = ResponseFactory(prompt=chat, text="Hello!"), ResponseFactory(prompt=chat, text="Go away.")
    c3 = Comparison.objects.create(project=world.project, prompt=chat, response_a=first, response_b=second)
    make_preference(comparison=c3, annotator=users["admin"], choice="b", strength=2)
    return world


def rows_of(response) -> list[dict]:
    assert response.status_code == 200, response.content[:300] if not response.streaming else response
    assert response.streaming
    return [json.loads(line) for line in b"".join(response.streaming_content).decode().splitlines()]


def test_trl_rows_carry_prompt_chosen_rejected_margin_and_a_pseudonym(labelled):
    response = labelled.client("admin").get(URL)
    assert response["Content-Type"].startswith("application/jsonl")
    assert 'filename="main-preferences-raw.jsonl"' in response["Content-Disposition"]
    rows = rows_of(response)
    # 8 labels, 2 of them ties: 6 rows, in id order.
    assert len(rows) == 6
    assert [r["comparison_id"] for r in rows] == sorted(r["comparison_id"] for r in rows)
    first = rows[0]
    assert set(first) == {"prompt", "chosen", "rejected", "margin", "comparison_id", "annotator", "created_at"}
    assert (first["prompt"], first["chosen"], first["rejected"], first["margin"]) == (
        "Which is kinder?",
        "Kind words.",
        "Rude words.",
        2.0,
    )
    assert first["annotator"] == annotator_pseudonym(labelled.users["other"].pk)
    admin_b = next(r for r in rows if r["annotator"] == annotator_pseudonym(labelled.users["admin"].pk))
    assert (admin_b["chosen"], admin_b["rejected"], admin_b["margin"]) == ("Rude words.", "Kind words.", 0.0)
    chat = rows[-1]
    assert chat["prompt"] == [{"role": "user", "content": "Hi there"}] and chat["chosen"] == "Go away."
    assert "project-admin" not in json.dumps(rows)


def test_ties_and_both_bad_are_included_on_request_with_a_choice(labelled):
    rows = rows_of(labelled.client("admin").get(URL + "?include_ties=true"))
    assert len(rows) == 8
    assert sorted(r.get("choice", "") for r in rows).count("tie") == 2


def test_the_conversational_variant_has_messages(labelled):
    rows = rows_of(labelled.client("admin").get(URL + "?format=conversational"))
    assert rows[0]["prompt"] == [{"role": "user", "content": "Which is kinder?"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Kind words."}]
    assert rows[-1]["prompt"] == [{"role": "user", "content": "Hi there"}]


def test_csv_has_a_header_and_chat_prompts_as_json(labelled):
    response = labelled.client("admin").get(URL + "?format=csv")
    assert response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(b"".join(response.streaming_content).decode())))
    assert len(table) == 6
    assert list(table[0]) == [c.name for c in exports.RAW_COLUMNS]
    assert json.loads(table[-1]["prompt"]) == [{"role": "user", "content": "Hi there"}]
    assert table[0]["choice"] == ""


def test_parquet_is_written_one_row_group_per_chunk(labelled, monkeypatch):
    monkeypatch.setattr(exports, "CHUNK_ROWS", 3)
    response = labelled.client("admin").get(URL + "?format=parquet&include_ties=1")
    assert response["Content-Type"] == "application/vnd.apache.parquet"
    chunks = list(response.streaming_content)
    assert len(chunks) >= 4  # three row groups and the footer, each sent as it is ready
    data = io.BytesIO(b"".join(chunks))
    assert pq.ParquetFile(data).num_row_groups == 3
    table = pq.read_table(data)
    assert table.num_rows == 8 and table.column_names == [c.name for c in exports.RAW_COLUMNS]
    assert sorted(x for x in table.column("choice").to_pylist() if x) == ["tie", "tie"]


def test_aggregated_rows_are_majority_votes_with_their_agreement(labelled):
    rows = rows_of(labelled.client("admin").get(URL + "?mode=aggregated"))
    # c0: a wins 2 of 3; c1: a tie majority (left out); c2: split (left out); chat: b, 1 of 1.
    assert [(r["comparison_id"], r["chosen"], r["agreement"], r["n_labels"]) for r in rows] == [
        (labelled.comparisons[0].pk, "Kind words.", 0.6667, 3),
        (rows[1]["comparison_id"], "Go away.", 1.0, 1),
    ]
    assert rows[0]["margin"] == 2.5  # the mean strength of the two votes for a
    assert "annotator" not in rows[0]
    with_ties = rows_of(labelled.client("admin").get(URL + "?mode=aggregated&include_ties=true"))
    assert [r.get("choice") for r in with_ties] == [None, "tie", None]
    strict = rows_of(labelled.client("admin").get(URL + "?mode=aggregated&min_agreement=0.9"))
    assert [r["agreement"] for r in strict] == [1.0]


def test_aggregated_parquet_and_csv_have_agreement_columns(labelled):
    data = b"".join(labelled.client("admin").get(URL + "?mode=aggregated&format=parquet").streaming_content)
    table = pq.read_table(io.BytesIO(data))
    assert table.column("agreement").to_pylist() == [0.6667, 1.0]
    text = b"".join(labelled.client("admin").get(URL + "?mode=aggregated&format=csv").streaming_content).decode()
    assert text.splitlines()[0] == ",".join(c.name for c in exports.AGGREGATED_COLUMNS)


def test_raw_rows_with_a_minimum_agreement_keep_only_agreed_comparisons(labelled):
    rows = rows_of(labelled.client("admin").get(URL + "?min_agreement=0.6"))
    assert sorted({r["comparison_id"] for r in rows}) == sorted([labelled.comparisons[0].pk, rows[-1]["comparison_id"]])
    assert len(rows) == 4


def test_filters_by_annotator_name_or_pseudonym_and_by_time(labelled):
    admin = labelled.client("admin")
    mine = rows_of(admin.get(URL + "?annotator=annotator"))
    pseudonym = annotator_pseudonym(labelled.users["annotator"].pk)
    assert {r["annotator"] for r in mine} == {pseudonym} and len(mine) == 2
    assert rows_of(admin.get(URL, {"annotator": pseudonym})) == mine
    assert "annotator" in assert_error_shape(admin.get(URL + "?annotator=ann_000000000000"), 400)["errors"]
    Preference.objects.filter(annotator=labelled.users["other"]).update(
        created_at=timezone.now() - timezone.timedelta(days=10)
    )
    cutoff = (timezone.now() - timezone.timedelta(days=1)).isoformat()
    recent = rows_of(admin.get(URL, {"since": cutoff}))
    assert pseudonym in {r["annotator"] for r in recent}
    assert annotator_pseudonym(labelled.users["other"].pk) not in {r["annotator"] for r in recent}
    old = rows_of(admin.get(URL, {"until": cutoff}))
    assert {r["annotator"] for r in old} == {annotator_pseudonym(labelled.users["other"].pk)}


def test_filter_by_source_policy_version(labelled):
    policy = ModelVersion.objects.create(
        project=labelled.project, kind="policy", version=4, artifact_path="/p", base="b"
    )
    prompt = PromptFactory(project=labelled.project)
    generated = ResponseFactory(prompt=prompt, text="From the policy", policy_version=policy)
    human = ResponseFactory(prompt=prompt, text="From elsewhere")
    comparison = Comparison.objects.create(
        project=labelled.project, prompt=prompt, response_a=generated, response_b=human
    )
    make_preference(comparison=comparison, annotator=UserFactory(), choice="a")
    rows = rows_of(labelled.client("admin").get(URL + "?policy_version=4"))
    assert [r["chosen"] for r in rows] == ["From the policy"]
    missing = labelled.client("admin").get(URL + "?policy_version=5")
    assert "policy_version" in assert_error_shape(missing, 400)["errors"]


def test_an_empty_project_exports_an_empty_file_in_every_format(world):
    admin = world.client("admin")
    world.others_preference.delete()
    assert b"".join(admin.get(URL).streaming_content) == b""
    assert b"".join(admin.get(URL + "?format=csv").streaming_content).decode().startswith("prompt,")
    table = pq.read_table(io.BytesIO(b"".join(admin.get(URL + "?format=parquet").streaming_content)))
    assert table.num_rows == 0


def test_bad_export_parameters_are_400s_with_their_fields(world):
    response = world.client("admin").get(URL + "?format=xml&mode=both&min_agreement=1.5&include_ties=maybe")
    assert set(assert_error_shape(response, 400)["errors"]) == {"format", "mode", "min_agreement", "include_ties"}
