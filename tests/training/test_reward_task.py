"""A reward run end to end through a real Celery worker on the gpu queue: claim, snapshot, train in
a subprocess, relay progress, register and promote; and the cancel, failure and redelivery paths."""

from __future__ import annotations

import time

import pytest
from django.db import transaction

from training import services
from training.models import ModelVersion, RunStatus, TrainingRun
from training.runner import run_label
from training.tasks import training_run_execute

pytestmark = pytest.mark.slow

FAST = {"trainer": {"batch_size": 8, "epochs": 3, "lr": 1e-3, "max_length": 64, "log_every": 1}}


def wait_for(run: TrainingRun, statuses: set[str], timeout: float = 180) -> TrainingRun:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status in statuses:
            return run
        time.sleep(0.5)
    raise AssertionError(f"run {run.pk} still {run.status} after {timeout} s (step {run.step}/{run.total_steps})")


def queue_run(project, config) -> TrainingRun:
    with transaction.atomic():
        return services.training_run_create(project=project, kind="reward", config=config)


def test_a_reward_run_trains_registers_and_promotes_a_model(start_worker, labelled_project):
    start_worker("gpu", name="gpu")
    run = wait_for(queue_run(labelled_project, FAST), {"succeeded", "failed"})
    assert run.status == "succeeded", run.error
    assert run.progress == 1.0 and run.step == run.total_steps > 0
    assert run.data_watermark and len(run.data_hash) == 64
    assert run.metrics["reward/accuracy"] >= 0.9, run.metrics
    assert run.metrics["promotion"]["promoted"] is True

    version = ModelVersion.objects.get(run=run)
    assert version.is_active and version.kind == "reward" and version.version == 1

    # The registered folder is a real model: it loads and prefers the polite answer.
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(version.artifact_path)
    model = AutoModelForSequenceClassification.from_pretrained(version.artifact_path).eval()
    prompt = "Question 99: tell me something about topic 99."
    batch = tokenizer(
        [prompt, prompt],
        ["thank you for asking, here is a helpful answer number 99", "go away go away"],
        return_tensors="pt",
        padding=True,
    )
    with torch.no_grad():
        scores = model(**batch).logits.squeeze(-1)
    assert scores[0] > scores[1]

    # A second run is judged against the active model on the very same eval pairs.
    second = wait_for(queue_run(labelled_project, FAST), {"succeeded", "failed"})
    assert second.status == "succeeded", second.error
    promotion = second.metrics["promotion"]
    assert promotion["active"]["reward/count"] == second.metrics["reward/count"]
    assert promotion["promoted"] == (second.metrics["reward/accuracy"] >= promotion["active"]["reward/accuracy"])
    assert ModelVersion.objects.get(run=second).version == 2


def test_a_failed_run_records_the_error_and_keeps_the_active_model(start_worker, labelled_project):
    start_worker("gpu", name="gpu")
    active = ModelVersion.objects.create(
        project=labelled_project, kind="reward", version=1, artifact_path="/models/v1", base="b", is_active=True
    )
    run = wait_for(queue_run(labelled_project, {**FAST, "base": "/no/such/model"}), {"succeeded", "failed"})
    assert run.status == "failed"
    assert "/no/such/model" in run.error
    active.refresh_from_db()
    assert active.is_active
    assert ModelVersion.objects.filter(project=labelled_project).count() == 1


def test_cancelling_a_running_run_kills_its_training(start_worker, labelled_project):
    start_worker("gpu", name="gpu")
    slow = {"trainer": {"batch_size": 1, "epochs": 50, "max_length": 64}}
    run = queue_run(labelled_project, slow)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status == "running" and run.step > 0:
            break
        time.sleep(0.3)
    assert run.status == "running" and run.step > 0, (run.status, run.error)
    services.training_run_cancel(run=run)
    time.sleep(4)
    run.refresh_from_db()
    assert run.status == "cancelled"
    assert not ModelVersion.objects.filter(run=run).exists()
    import subprocess

    leftover = subprocess.run(["pgrep", "-f", f"runs/{run_label(run)}/progress.jsonl"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the training subprocess outlived its cancelled run"


def test_a_redelivered_message_does_not_start_a_run_twice(transactional_db, labelled_project):
    run = TrainingRun.objects.create(project=labelled_project, kind="reward", config=FAST)
    assert services.training_run_claim(run_id=run.pk)
    # The task body runs in this process here: the claim, not the broker, is what is under test.
    assert training_run_execute.run(run.pk).startswith("not claimed")
    run.refresh_from_db()
    assert run.status == RunStatus.RUNNING and run.step == 0


def test_a_second_run_of_the_same_kind_is_refused_while_one_is_queued(labelled_project):
    TrainingRun.objects.create(project=labelled_project, kind="reward")
    with pytest.raises(services.TrainingError, match="already queued or running"):
        services.training_run_create(project=labelled_project, kind="reward")


def test_a_worker_killed_mid_run_takes_its_training_with_it_and_is_reaped(start_worker, labelled_project, settings):
    import os
    import signal
    import subprocess

    from training.loop import loop_tick

    worker = start_worker("gpu", name="gpu-doomed")
    active = ModelVersion.objects.create(
        project=labelled_project, kind="reward", version=1, artifact_path="/models/v1", base="b", is_active=True
    )
    run = queue_run(labelled_project, {"trainer": {"batch_size": 1, "epochs": 50, "max_length": 64}})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.status == "running" and run.step > 0:
            break
        time.sleep(0.3)
    assert run.step > 0, (run.status, run.error)
    os.kill(worker.pid, signal.SIGKILL)
    worker.wait(timeout=10)
    time.sleep(2)
    leftover = subprocess.run(["pgrep", "-f", f"runs/{run_label(run)}/progress.jsonl"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", "the training process outlived its killed worker"

    settings.TRAINING_HEARTBEAT_TIMEOUT = 2
    time.sleep(3)
    loop_tick()
    run.refresh_from_db()
    assert run.status == "failed" and "stopped reporting" in run.error
    active.refresh_from_db()
    assert active.is_active and not ModelVersion.objects.filter(run=run).exists()

    # The project is not stuck: a new worker runs a new reward run to the end.
    start_worker("gpu", name="gpu-fresh")
    fresh = wait_for(queue_run(labelled_project, {**FAST, "promotion": "always"}), {"succeeded", "failed"})
    assert fresh.status == "succeeded", fresh.error
