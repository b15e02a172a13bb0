"""A reward run through a real Celery worker scores its snapshot's comparisons with the model it
trained (scores.jsonl beside the weights), and the console's disagreements page ranks the labels
the model disagrees with first, each linked to its comparison."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from django.urls import reverse

from annotation.models import Comparison, Preference, Role
from tests.conftest import ROOT
from tests.factories import MembershipFactory, UserFactory
from tests.training.test_reward_task import FAST, queue_run, wait_for
from training import selectors
from training.models import ModelVersion

pytestmark = pytest.mark.slow


def test_a_reward_run_scores_its_comparisons_and_the_console_ranks_the_disagreements(
    start_worker, labelled_project, client, tmp_path
):
    project = labelled_project
    # Four labels chose the rude answer: the model, trained on the other 56, should disagree.
    flipped = list(Comparison.objects.filter(project=project).order_by("id")[:4])
    for comparison in flipped:
        label = Preference.objects.get(comparison=comparison)
        Preference.objects.filter(pk=label.pk).update(choice="b" if label.choice == "a" else "a")
    start_worker("gpu", name="gpu-scores")
    run = wait_for(queue_run(project, {**FAST, "promotion": "always"}), {"succeeded", "failed"})
    assert run.status == "succeeded", run.error
    version = ModelVersion.objects.get(run=run)
    assert version.is_active

    scores = [json.loads(line) for line in (Path(version.artifact_path) / "scores.jsonl").read_text().splitlines()]
    assert {s["comparison_id"] for s in scores} == set(
        Comparison.objects.filter(project=project).values_list("id", flat=True)
    )
    assert run.metrics["score/comparisons"] == run.metrics["score/available"] == 60

    data = selectors.disagreements(project=project)
    assert data["model"] == version and not data["reason"]
    top = [row["comparison_id"] for row in data["rows"][:4]]
    assert len(set(top) & {c.pk for c in flipped}) >= 3, (top, [c.pk for c in flipped], data["rows"][:6])
    assert data["rows"][0]["gap"] > 0.5 > data["rows"][-1]["gap"]

    admin = UserFactory(username="scores-admin")
    MembershipFactory(project=project, user=admin, role=Role.ADMIN)
    client.force_login(admin)
    page = client.get(reverse("console-disagreements", kwargs={"slug": project.slug}))
    assert page.status_code == 200
    link = reverse("api-comparison", kwargs={"slug": project.slug, "pk": top[0]})
    assert f'href="{link}"' in page.content.decode()
    assert client.get(link).status_code == 200

    # The same scores come from the command line, and its time limit stops it early.
    comparisons = Path(run.data_snapshot) / "comparisons.jsonl"
    out = tmp_path / "scores.jsonl"
    command = [
        sys.executable,
        "-m",
        "training.ml",
        "score",
        "--model",
        version.artifact_path,
        "--data",
        str(comparisons),
    ]
    done = subprocess.run([*command, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    again = {s["comparison_id"]: s for s in map(json.loads, out.read_text().splitlines())}
    for s in scores:
        assert again[s["comparison_id"]]["score_a"] == pytest.approx(s["score_a"], abs=1e-4)
        assert again[s["comparison_id"]]["score_b"] == pytest.approx(s["score_b"], abs=1e-4)
    stopped = subprocess.run(
        [*command, "--out", str(tmp_path / "none.jsonl"), "--max-seconds", "0.000001"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert stopped.returncode == 0, stopped.stderr
    assert json.loads(stopped.stdout.splitlines()[-1])["score/comparisons"] == 0
    assert (tmp_path / "none.jsonl").read_text() == ""
    bad = subprocess.run(
        [*command[:-2], "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "x")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and "no records" in bad.stderr
