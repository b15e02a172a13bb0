"""The data snapshot of a reward run: A/B labels only, split by comparison, reproducible."""

from __future__ import annotations

import json

import pytest

from annotation.models import Preference
from tests.factories import UserFactory, make_comparison, make_preference
from training.snapshot import is_eval_comparison, write_reward_snapshot

pytestmark = pytest.mark.django_db


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def labelled(project):
    annotators = [UserFactory() for _ in range(3)]
    comparisons = [make_comparison(project=project) for _ in range(40)]
    for comparison in comparisons:
        for user in annotators:
            make_preference(comparison=comparison, annotator=user, choice="b", strength=3)
    make_preference(comparison=comparisons[0], annotator=UserFactory(), choice="tie", strength=None)
    return comparisons


def test_all_labels_of_a_comparison_fall_on_one_side(project, labelled, tmp_path):
    snap = write_reward_snapshot(project=project, folder=tmp_path)
    assert snap.train_pairs + snap.eval_pairs == 120, "three A/B labels per comparison, the tie left out"
    assert snap.train_pairs and snap.eval_pairs
    eval_prompts = {r["prompt"] for r in read(snap.eval_path)}
    train_prompts = {r["prompt"] for r in read(snap.train_path)}
    assert not eval_prompts & train_prompts
    expected_eval = {c.prompt.text for c in labelled if is_eval_comparison(c.pk, 20)}
    assert eval_prompts == expected_eval
    row = read(snap.train_path)[0]
    comparison = next(c for c in labelled if c.prompt.text == row["prompt"])
    assert (row["chosen"], row["rejected"], row["margin"]) == (
        comparison.response_b.text,
        comparison.response_a.text,
        3.0,
    )


def test_the_same_data_gives_the_same_snapshot_and_the_watermark_bounds_it(project, labelled, tmp_path):
    first = write_reward_snapshot(project=project, folder=tmp_path / "1")
    second = write_reward_snapshot(project=project, folder=tmp_path / "2")
    assert first.sha256 == second.sha256
    assert first.watermark == Preference.objects.filter(choice__in=["a", "b"]).order_by("-id").first().pk


def test_a_warm_start_trains_on_new_labels_and_a_replay_sample(project, labelled, tmp_path):
    watermark = write_reward_snapshot(project=project, folder=tmp_path / "full").watermark
    fresh = make_comparison(project=project)
    while is_eval_comparison(fresh.pk, 20):
        fresh = make_comparison(project=project)
    make_preference(comparison=fresh, annotator=UserFactory(), choice="a")
    none_old = write_reward_snapshot(project=project, folder=tmp_path / "w0", new_since=watermark, replay_percent=0)
    assert [r["prompt"] for r in read(none_old.train_path)] == [fresh.prompt.text]
    full = write_reward_snapshot(project=project, folder=tmp_path / "w100", new_since=watermark, replay_percent=100)
    some = write_reward_snapshot(project=project, folder=tmp_path / "w30", new_since=watermark, replay_percent=30)
    assert 1 < some.train_pairs < full.train_pairs
    assert none_old.eval_pairs == some.eval_pairs == full.eval_pairs, "the eval side is always whole"


def test_the_comparisons_to_score_are_those_with_a_majority_eval_side_first(project, tmp_path):
    users = [UserFactory() for _ in range(3)]
    majority = [make_comparison(project=project) for _ in range(12)]
    split = make_comparison(project=project)
    for comparison in majority:
        make_preference(comparison=comparison, annotator=users[0], choice="a")
        make_preference(comparison=comparison, annotator=users[1], choice="a")
        make_preference(comparison=comparison, annotator=users[2], choice="b")
    # One A and one B: no majority, nothing to compare a model with.
    make_preference(comparison=split, annotator=users[0], choice="a")
    make_preference(comparison=split, annotator=users[1], choice="b")
    # Only a tie: no A/B label at all.
    tied = make_comparison(project=project)
    make_preference(comparison=tied, annotator=users[0], choice="tie", strength=None)

    snap = write_reward_snapshot(project=project, folder=tmp_path, eval_percent=50)
    rows = read(snap.comparisons_path)
    assert snap.comparisons == len(rows) == 12
    assert {r["comparison_id"] for r in rows} == {c.pk for c in majority}
    sides = [r["split"] for r in rows]
    assert sides == sorted(sides), "the eval side comes first"
    assert sides[0] == "eval" and sides[-1] == "train"
    first = next(c for c in majority if c.pk == rows[0]["comparison_id"])
    assert (rows[0]["prompt"], rows[0]["response_a"], rows[0]["response_b"]) == (
        first.prompt.text,
        first.response_a.text,
        first.response_b.text,
    )
    capped = write_reward_snapshot(project=project, folder=tmp_path / "capped", eval_percent=50, max_scored=5)
    assert [r["comparison_id"] for r in read(capped.comparisons_path)] == [r["comparison_id"] for r in rows[:5]]
