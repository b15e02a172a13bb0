"""Policy evaluation: which prompts make the fixed evaluation set, and a PPO run through a real Celery
worker that stores the new version's score (with its 95% interval) and KL on them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from django.db import transaction

from annotation.models import Prompt
from tests.factories import PromptFactory
from tests.ml.tiny_causal import build_tiny_causal
from tests.training.test_reward_task import wait_for
from training import services
from training.models import ModelVersion
from training.policy_runs import EVAL_PROMPTS_MAX, eval_prompts, in_eval_fallback, next_prompts
from training.runner import run_dir

EVAL_KEYS = ("eval/reward/mean", "eval/reward/ci_low", "eval/reward/ci_high", "eval/kl", "eval/prompts")


def test_marked_prompts_are_the_evaluation_set_and_never_train(project):
    prompts = [PromptFactory(project=project, text=f"prompt {i}") for i in range(10)]
    for p in prompts[3:6]:
        p.is_eval = True
        p.save()
    assert [p.pk for p in eval_prompts(project)] == [p.pk for p in prompts[3:6]]
    assert not {p.pk for p in prompts[3:6]} & {p.pk for p in next_prompts(project, 100)}


def test_without_marked_prompts_a_fixed_hashed_subset_is_used_and_adding_prompts_keeps_it(project):
    prompts = [PromptFactory(project=project, text=f"prompt {i}") for i in range(200)]
    chosen = eval_prompts(project)
    expected = [p.pk for p in prompts if in_eval_fallback(p.pk)][:EVAL_PROMPTS_MAX]
    assert [p.pk for p in chosen] == expected and len(chosen) == EVAL_PROMPTS_MAX
    assert len({p.pk for p in chosen}) == EVAL_PROMPTS_MAX
    assert chosen[-1].pk < prompts[-1].pk  # spread by the hash, not simply the first 32
    for i in range(50):  # new prompts have higher ids: a full set does not change
        PromptFactory(project=project, text=f"later {i}")
    assert [p.pk for p in eval_prompts(project)] == expected


def test_a_project_of_a_few_prompts_evaluates_on_them(project):
    prompts = [PromptFactory(project=project, text=f"prompt {i}") for i in range(3)]
    assert eval_prompts(project) == ([p for p in prompts if in_eval_fallback(p.pk)] or prompts)
    Prompt.objects.filter(project=project).delete()
    assert eval_prompts(project) == []


TINY_PPO = {
    "trainer": {
        "iterations": 2,
        "rollout_batch_size": 4,
        "mini_batch_size": 4,
        "ppo_epochs": 1,
        "max_new_tokens": 8,
        "lr": 1e-3,
        "device": "cpu",
    },
    "num_prompts": 8,
}


@pytest.fixture
def reward_version(labelled_project, tiny_reward_base, tmp_path):
    """An (untrained) reward model registered and active, saved the way a reward run saves one."""
    from training.ml.checkpoint import save_reward_model
    from training.ml.reward import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_reward_base))
    meta = {"config": {"max_length": 64, "min_prompt_tokens": 8}, "reward_mean": 0.0, "reward_std": 1.0}
    path = save_reward_model(tmp_path / "reward", model, tokenizer, meta)
    return ModelVersion.objects.create(
        project=labelled_project, kind="reward", version=1, artifact_path=str(path), base="tiny", is_active=True
    )


@pytest.mark.slow
def test_a_ppo_run_stores_the_new_policys_evaluation_in_its_version(
    start_worker, labelled_project, reward_version, tmp_path
):
    project = labelled_project
    project.policy_base = str(build_tiny_causal(tmp_path / "tiny-policy"))
    project.save()
    marked = list(Prompt.objects.filter(project=project).order_by("id")[:5])
    Prompt.objects.filter(pk__in=[p.pk for p in marked]).update(is_eval=True)
    start_worker("gpu", name="gpu")
    with transaction.atomic():
        run = services.training_run_create(project=project, kind="ppo", config=TINY_PPO)
    run = wait_for(run, {"succeeded", "failed"}, timeout=300)
    assert run.status == "succeeded", run.error

    version = ModelVersion.objects.get(run=run)
    metrics = version.metrics
    assert set(EVAL_KEYS) <= metrics.keys(), metrics.keys()
    assert metrics["eval/prompts"] == 5
    assert all(isinstance(metrics[k], float) and math.isfinite(metrics[k]) for k in EVAL_KEYS)
    assert metrics["eval/reward/ci_low"] <= metrics["eval/reward/mean"] <= metrics["eval/reward/ci_high"]
    assert metrics["eval/kl"] > -1.0  # a sampled estimate: near 0 after 2 small updates, never far below
    # the subprocess evaluated exactly the marked prompts, and trained on none of them
    folder = run_dir(run)
    evaluated = [json.loads(line)["id"] for line in (folder / "eval-prompts.jsonl").read_text().splitlines()]
    trained = [json.loads(line)["id"] for line in (folder / "prompts.jsonl").read_text().splitlines()]
    assert evaluated == [p.pk for p in marked] and not set(evaluated) & set(trained)
    saved = json.loads((Path(version.artifact_path) / "metadata.json").read_text())
    assert saved["metrics"]["eval/reward/mean"] == pytest.approx(metrics["eval/reward/mean"])
    assert len(saved["evaluation"]["scores"]) == 5
