"""The dashboard's figures against values worked out by hand, and the query count of each page
staying the same whatever the amount of data."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.urls import reverse
from django.utils import timezone

from annotation.models import Comparison, Preference, Prompt, Response, Role
from annotation.services import comparisons_recount
from tests.console.conftest import label
from tests.factories import MembershipFactory, UserFactory, make_comparison
from training import selectors
from training.models import ModelVersion, TrainingRun
from training.runner import run_dir

pytestmark = pytest.mark.django_db


def test_krippendorffs_alpha_and_percent_agreement_match_the_hand_computation(project, small_fixture):
    # Units with >= 2 labels: c1 (a, a, b), c2 (tie, tie), c3 (a, b); c4 has one label and is left out.
    # Margins n_a = 3, n_b = 2, n_tie = 2, n = 7. Diagonal of the coincidence matrix:
    # c1 contributes 2*1/2 = 1 to o_aa, c2 contributes 2*1/1 = 2 to o_tt, c3 nothing: sum 3.
    # alpha = 1 - (n - 1)(n - 3) / (n^2 - (9 + 4 + 4)) = 1 - 6*4/32 = 0.25.
    # Percent agreement over ordered pairs: (2 + 2 + 0) agreeing of (6 + 2 + 2) = 0.4.
    result = selectors.agreement(project=project)
    assert result["units"] == 3
    assert result["labels"] == 7
    assert result["alpha"] == pytest.approx(0.25)
    assert result["percent"] == pytest.approx(0.4)


def test_perfect_agreement_gives_alpha_one_and_chance_level_gives_about_zero(project):
    users = [UserFactory() for _ in range(2)]
    perfect = [make_comparison(project=project) for _ in range(4)]
    for comparison, choice in zip(perfect, ["a", "b", "a", "tie"], strict=True):
        for user in users:
            label(comparison, user, choice)
    comparisons_recount(comparison_ids=[c.pk for c in perfect])
    result = selectors.agreement(project=project)
    assert result["alpha"] == pytest.approx(1.0) and result["percent"] == 1.0


def test_per_annotator_agreement_position_bias_and_rates_match_the_hand_computation(project, small_fixture):
    stats = {s.username: s for s in selectors.annotator_stats(project=project)}
    # u1 agrees with 1 of 2 others on c1, 1 of 1 on c2, 0 of 1 on c3: 2/4.
    assert stats["u1"].agreement == pytest.approx(0.5) and stats["u1"].agreement_pairs == 4
    assert stats["u2"].agreement == pytest.approx(0.5)
    assert stats["u3"].agreement == 0 and stats["u3"].agreement_pairs == 2
    # Left choices among A/B labels: u1 chose the left one on c1 only (1/2), u2 on c3 only (1/2),
    # u3 on c1 (1/1); overall 3 of 5.
    assert stats["u1"].left_share == 0.5 and stats["u2"].left_share == 0.5 and stats["u3"].left_share == 1.0
    bias = selectors.position_bias(stats=list(stats.values()))
    assert bias["left_share"] == pytest.approx(0.6) and bias["sided"] == 5
    # 8 labels: 2 ties, 1 both-bad.
    assert bias["tie_rate"] == pytest.approx(0.25) and bias["both_bad_rate"] == pytest.approx(0.125)
    # u1's one gold label (c4, answer a) was both_bad.
    assert (stats["u1"].gold_correct, stats["u1"].gold_total) == (0, 1)
    assert stats["u1"].total == 4 and stats["u1"].last_day == 4 and stats["u1"].mean_seconds == 4.0


def test_annotators_with_low_gold_accuracy_or_agreement_are_listed(project):
    good, careless = UserFactory(username="good"), UserFactory(username="careless")
    for i in range(selectors.MIN_OVERLAP_LABELS + 1):
        comparison = make_comparison(
            project=project,
            is_gold=i < selectors.MIN_GOLD_LABELS,
            **({"gold_choice": "a"} if i < selectors.MIN_GOLD_LABELS else {}),
        )
        label(comparison, good, "a")
        label(comparison, careless, "b")
    third = UserFactory(username="third")
    for comparison in Comparison.objects.filter(project=project):
        label(comparison, third, "a")
    comparisons_recount(comparison_ids=list(Comparison.objects.values_list("pk", flat=True)))
    flagged = {s.username: s.reasons for s in selectors.dashboard(project=project)["low_quality"]}
    assert set(flagged) == {"careless"}
    assert any("gold accuracy 0%" in r for r in flagged["careless"])
    assert any("agrees with others 0%" in r for r in flagged["careless"])


def test_policy_win_rate_against_the_previous_version_has_a_wilson_interval(project):
    v1, v2 = (
        ModelVersion.objects.create(project=project, kind="policy", version=n, artifact_path=f"/p{n}", base="b")
        for n in (1, 2)
    )
    run = TrainingRun.objects.create(project=project, kind="ppo", metrics={"reward/mean": 0.8, "ppo/kl": 0.05})
    ModelVersion.objects.filter(pk=v2.pk).update(run=run)
    prompt = Prompt.objects.create(project=project, text="q", content_hash="q")
    annotators = [UserFactory() for _ in range(4)]
    comparisons = []
    for i in range(2):
        old = Response.objects.create(
            prompt=prompt, text=f"old {i}", content_hash=f"o{i}", source="p", policy_version=v1
        )
        new = Response.objects.create(
            prompt=prompt, text=f"new {i}", content_hash=f"n{i}", source="p", policy_version=v2
        )
        comparisons.append(Comparison.objects.create(project=project, prompt=prompt, response_a=old, response_b=new))
    # The new version (response b) wins 3 of 4 labels, across two comparisons.
    for annotator, (comparison, choice) in zip(
        annotators,
        [(comparisons[0], "b"), (comparisons[0], "b"), (comparisons[1], "b"), (comparisons[1], "a")],
        strict=True,
    ):
        label(comparison, annotator, choice)
    comparisons_recount(comparison_ids=[c.pk for c in comparisons])
    rows = selectors.policy_versions(project=project)
    newest = rows[0]
    assert newest["version"] == v2 and newest["previous"] == v1
    assert newest["labels"] == 4 and newest["win_rate"] == 0.75
    # Wilson 95% interval for 3/4, worked out from the formula.
    assert newest["interval"] == pytest.approx((0.3006, 0.9544), abs=1e-4)
    assert newest["reward"] == 0.8 and newest["kl"] == 0.05
    assert rows[1]["win_rate"] is None


def test_policy_scores_come_from_the_eval_set_when_a_version_has_one_and_from_its_run_otherwise(
    client, project, project_admin
):
    run = TrainingRun.objects.create(project=project, kind="ppo", metrics={"ppo/rlhf_reward": 0.4, "ppo/kl": 0.2})
    old = ModelVersion.objects.create(project=project, kind="policy", version=1, artifact_path="/p1", base="b", run=run)
    evaluated = ModelVersion.objects.create(
        project=project,
        kind="policy",
        version=2,
        artifact_path="/p2",
        base="b",
        metrics={
            "eval/reward/mean": 1.25,
            "eval/reward/ci_low": 1.0,
            "eval/reward/ci_high": 1.5,
            "eval/kl": 0.03,
            "eval/prompts": 64,
            "ppo/kl": 9.0,
        },
    )
    rows = {r["version"]: r for r in selectors.policy_versions(project=project)}
    assert rows[evaluated]["reward"] == 1.25 and rows[evaluated]["reward_interval"] == (1.0, 1.5)
    assert rows[evaluated]["kl"] == 0.03 and rows[evaluated]["eval_prompts"] == 64
    assert rows[evaluated]["reward_source"] == "eval set"
    assert rows[old]["reward"] == 0.4 and rows[old]["kl"] == 0.2 and rows[old]["reward_interval"] is None
    assert rows[old]["reward_source"] == "PPO run"

    client.force_login(project_admin)
    page = client.get(reverse("console-policies", kwargs={"slug": project.slug})).content.decode()
    assert "1 – 1.5" in page and "eval set (64 prompts)" in page
    # The interval is drawn as an error bar on the score chart.
    assert page.count('class="interval') == 1


def test_disagreements_come_from_the_models_scores_file_and_are_explained_without_it(project, tmp_path):
    folder = tmp_path / "rm"
    folder.mkdir()
    ModelVersion.objects.create(
        project=project, kind="reward", version=1, artifact_path=str(folder), base="b", is_active=True
    )
    assert "no scores.jsonl" in selectors.disagreements(project=project)["reason"]
    agree, disagree = make_comparison(project=project), make_comparison(project=project)
    users = [UserFactory() for _ in range(2)]
    for user in users:
        label(agree, user, "a")
        label(disagree, user, "a")
    lines = [
        {"comparison_id": agree.pk, "score_a": 3.0, "score_b": 0.0},
        {"comparison_id": disagree.pk, "score_a": 0.0, "score_b": 4.0},
        "not json",
    ]
    (folder / "scores.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
    rows = selectors.disagreements(project=project)["rows"]
    assert [r["comparison_id"] for r in rows] == [disagree.pk, agree.pk]
    assert rows[0]["human_a"] == 1.0 and rows[0]["model_a"] < 0.05


def test_run_curves_and_log_tail_come_from_the_runs_folder(project, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path
    run = TrainingRun.objects.create(project=project, kind="reward")
    folder = run_dir(run)
    folder.mkdir(parents=True)
    lines = [{"step": s, "total": 3, "loss": 1.0 / (s + 1), "eta": 1, "time": 0, "phase": "train"} for s in range(4)]
    (folder / "progress.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n{broken")
    (folder / "log.txt").write_text("first line\n" + "x" * 10 + "\nlast line\n")
    assert selectors.progress_series(run=run)["loss"] == [(0.0, 1.0), (1.0, 0.5), (2.0, 1 / 3), (3.0, 0.25)]
    assert selectors.log_tail(run=run).endswith("last line\n")
    assert selectors.log_tail(run=run, max_bytes=12) == "last line\n"


def _grow(project, n_comparisons: int, n_annotators: int) -> None:
    users = [UserFactory() for _ in range(n_annotators)]
    for user in users:
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    ids = []
    for i in range(n_comparisons):
        comparison = make_comparison(project=project, **({"is_gold": True, "gold_choice": "a"} if i % 5 == 0 else {}))
        ids.append(comparison.pk)
        for j, user in enumerate(users):
            label(comparison, user, ["a", "b", "tie", "both_bad"][(i + j) % 4], "ab"[(i * j) % 2])
    comparisons_recount(comparison_ids=ids)
    for n in (1, 2):
        ModelVersion.objects.create(
            project=project, kind="reward", version=n, artifact_path=f"/m{n}", base="b", is_active=n == 2
        )
        TrainingRun.objects.create(project=project, kind="ppo", status="succeeded", finished_at=timezone.now())


PAGES = ["console-dashboard", "console-training", "console-policies", "console-disagreements", "console-data"]


@pytest.mark.parametrize("name", PAGES)
def test_each_page_costs_the_same_bounded_number_of_queries_on_small_and_larger_projects(
    client, project, project_admin, django_assert_max_num_queries, name
):
    client.force_login(project_admin)
    url = reverse(name, kwargs={"slug": project.slug})
    # Session, user, project, membership, then the page's own reads.
    bound = {"console-dashboard": 16, "console-training": 16}.get(name, 10)
    with django_assert_max_num_queries(bound):
        assert client.get(url).status_code == 200
    _grow(project, n_comparisons=12, n_annotators=4)
    with django_assert_max_num_queries(bound):
        assert client.get(url).status_code == 200


def test_the_dashboard_counts_a_new_label_at_once_from_the_counters(
    client, project, project_admin, small_fixture, django_assert_max_num_queries
):
    client.force_login(project_admin)
    url = reverse("console-dashboard", kwargs={"slug": project.slug})
    assert client.get(url).context["agreement"]["units"] == 3
    u1, u2, _ = small_fixture["users"]
    fresh = make_comparison(project=project)
    label(fresh, u1, "a", "a")
    label(fresh, u2, "a", "b")
    with django_assert_max_num_queries(20):
        response = client.get(url)
    assert response.context["bias"]["total"] == 10
    assert response.context["agreement"]["units"] == 4
    stats = {s.username: s for s in response.context["annotators"]}
    assert stats["u1"].agreement_pairs == 5 and stats["u1"].agreement == pytest.approx(3 / 5)


@pytest.mark.parametrize("hour, minute", [(3, 10), (3, 50), (20, 10), (20, 50)])
def test_labels_of_the_last_24_hours_and_7_days_are_counted_exactly_at_any_time_of_day(
    project, monkeypatch, hour, minute
):
    """The rolling windows come from day counters, corrected by hour counters for the partial day
    and by label rows for the partial hour, each added or subtracted depending on the time of day:
    these four times take each of the four ways."""
    now = timezone.now().replace(hour=hour, minute=minute, second=0, microsecond=0)
    user = UserFactory(username="clock")
    ages = [
        timedelta(hours=1),
        timedelta(hours=23),
        timedelta(hours=23, minutes=59),  # inside both windows
        timedelta(hours=24, minutes=1),  # outside the last 24 hours
        timedelta(hours=25),
        timedelta(days=5),
        timedelta(days=6, hours=23, minutes=59),  # inside the last 7 days
        timedelta(days=7, minutes=1),  # outside
        timedelta(days=7, hours=1),
        timedelta(days=20),
    ]
    for age in ages:
        preference = label(make_comparison(project=project), user, "a")
        Preference.objects.filter(pk=preference.pk).update(created_at=now - age)
    monkeypatch.setattr(timezone, "now", lambda: now)
    stats = {s.username: s for s in selectors.annotator_stats(project=project)}["clock"]
    assert (stats.last_day, stats.last_week, stats.total) == (3, 7, 10)


def test_charts_are_svg_with_escaped_names_for_one_point_or_many():
    from training.views import line_chart

    one = str(line_chart({"<b>x</b>": [(1.0, 0.5)]}, title="t<script>"))
    assert "<circle" in one and "<b>x</b>" not in one and "&lt;script&gt;" in one
    many = str(line_chart({"loss": [(0, 1.0), (1, 0.5), (2, 0.25)]}, title="loss", x_label="step"))
    assert many.count("<polyline") == 1 and "<svg" in many
    assert "no data yet" in str(line_chart({"loss": []}, title="loss"))


def test_the_polled_status_and_the_index_cost_a_few_queries(
    client, project, project_admin, django_assert_max_num_queries
):
    client.force_login(project_admin)
    run = TrainingRun.objects.create(project=project, kind="reward")
    with django_assert_max_num_queries(6):
        body = client.get(reverse("console-run-status", kwargs={"slug": project.slug, "pk": run.pk})).json()
    assert body["status"] == "queued" and body["step"] == 0
    with django_assert_max_num_queries(4):
        assert client.get(reverse("console")).status_code == 200
