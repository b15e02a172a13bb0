"""The whole loop on tiny models through a real Celery worker: reward run -> PPO run -> generation
-> new comparisons in the queue, each step queued by the loop's tick."""

from __future__ import annotations

import pytest
from django.db import transaction

from annotation.models import Comparison, Response
from tests.ml.tiny_causal import build_tiny_causal
from tests.training.test_reward_task import FAST, wait_for
from training import services
from training.loop import loop_tick
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.slow

TINY_PPO = {
    "trainer": {
        "iterations": 2,
        "rollout_batch_size": 4,
        "mini_batch_size": 4,
        "ppo_epochs": 1,
        "max_new_tokens": 8,
        "checkpoint_every": 1,
    },
    "num_prompts": 8,
}


def test_labels_become_a_reward_model_a_new_policy_and_new_comparisons(start_worker, labelled_project, tmp_path):
    project = labelled_project
    project.policy_base = str(build_tiny_causal(tmp_path / "tiny-policy"))
    project.auto_training = True
    project.retrain_threshold = 10
    project.save()
    start_worker("gpu", name="gpu")
    comparisons_before = Comparison.objects.filter(project=project).count()

    # 1. Enough labels: the tick queues a reward run (sped up here with the test trainer settings).
    with transaction.atomic():
        (reward_id,) = loop_tick()
    reward = TrainingRun.objects.get(pk=reward_id)
    assert reward.kind == "reward"
    TrainingRun.objects.filter(pk=reward_id).update(config=FAST)
    reward = wait_for(reward, {"succeeded", "failed"})
    assert reward.status == "succeeded", reward.error

    # 2. The promoted reward model leads to PPO from the base policy.
    with transaction.atomic():
        (ppo_id,) = loop_tick()
    ppo = TrainingRun.objects.get(pk=ppo_id)
    assert ppo.kind == "ppo"
    TrainingRun.objects.filter(pk=ppo_id).update(config=TINY_PPO)
    ppo = wait_for(ppo, {"succeeded", "failed"}, timeout=300)
    assert ppo.status == "succeeded", ppo.error
    policy = ModelVersion.objects.get(run=ppo)
    assert policy.kind == "policy" and policy.is_active and policy.parent is None
    for key in ("ppo/kl", "ppo/clipfrac", "reward/mean"):
        assert key in ppo.metrics, ppo.metrics.keys()

    # 3. The new policy answers prompts; its answers against the base policy's are new comparisons.
    with transaction.atomic():
        (generate_id,) = loop_tick()
    generate = TrainingRun.objects.get(pk=generate_id)
    assert generate.kind == "generate" and generate.parent_model == policy
    TrainingRun.objects.filter(pk=generate_id).update(config={"num_prompts": 6, "generation": {"max_new_tokens": 8}})
    generate = wait_for(generate, {"succeeded", "failed"}, timeout=300)
    assert generate.status == "succeeded", generate.error
    new = Comparison.objects.filter(project=project).count() - comparisons_before
    assert new == generate.metrics["generate/comparisons_created"] > 0
    assert Response.objects.filter(policy_version=policy, source=policy.label).exists()
    assert Response.objects.filter(policy_version=None, source=project.policy_base).exists()

    # 4. With nothing new to learn from, the loop rests.
    with transaction.atomic():
        assert loop_tick() == []
    assert services.training_runs_reap(stale_after_seconds=3600) == []
