"""Celery tasks of the training side, on the `gpu` queue (see CELERY_TASK_ROUTES).

A task takes a run id, claims the run, and hands the heavy work to a `python -m training.ml`
subprocess through training.runner. It never imports torch itself.
"""

from __future__ import annotations

import json
from pathlib import Path

from celery import shared_task
from django.conf import settings

from training import services
from training.bases import BaseModelError, resolve_base
from training.models import ModelKind, ModelVersion, RunKind, RunStatus, TrainingRun
from training.policy_runs import generate_run, ppo_run
from training.runner import RunCancelled, remove_partial, run_dir, run_label, supervise
from training.snapshot import write_reward_snapshot

PROMOTION_RULES = ("not_worse", "always", "never")
# After training, the new model scores the snapshot's comparisons that have a majority (eval side
# first) into scores.jsonl beside its weights, for the console's disagreements page: at most this
# many comparisons and this many seconds unless the run's config says otherwise.
SCORE_SECONDS = 300
SCORE_MAX_COMPARISONS = 20_000


@shared_task(acks_late=True)
def training_run_execute(run_id: int) -> str:
    if not services.training_run_claim(run_id=run_id):
        return "not claimed: the run is not queued (redelivered, or cancelled before it started)"
    run = TrainingRun.objects.select_related("project").get(pk=run_id)
    try:
        if run.kind == RunKind.REWARD:
            reward_run(run)
        elif run.kind == RunKind.PPO:
            ppo_run(run)
        else:
            generate_run(run)
    except RunCancelled:
        return "cancelled"
    except (services.TrainingError, BaseModelError, RuntimeError, OSError) as exc:
        services.training_run_finish(run_id=run_id, status=RunStatus.FAILED, error=str(exc))
        return "failed"
    return "succeeded"


def reward_run(run: TrainingRun) -> None:
    """Snapshot -> train and score the comparisons -> evaluate the active model on the same eval
    pairs -> register -> promote."""
    config = run.config or {}
    rule = config.get("promotion", "not_worse")
    if rule not in PROMOTION_RULES:
        raise services.TrainingError(f"config.promotion must be one of {', '.join(PROMOTION_RULES)}")
    score_seconds = _positive(config, "score_seconds", SCORE_SECONDS)
    score_max = int(_positive(config, "score_max_comparisons", SCORE_MAX_COMPARISONS))
    project = run.project
    folder = run_dir(run)

    # 1. Freeze the data: everything, or for a warm start the new labels and a replay sample.
    active = ModelVersion.objects.filter(project=project, kind=ModelKind.REWARD, is_active=True).first()
    warm = bool(config.get("warm_start") and active and active.run and active.run.data_watermark)
    snapshot = write_reward_snapshot(
        project=project,
        folder=folder / "data",
        eval_percent=config.get("eval_percent", 20),
        new_since=active.run.data_watermark if warm else None,
        replay_percent=config.get("replay_percent", 20),
        max_scored=score_max,
    )
    TrainingRun.objects.filter(pk=run.pk).update(
        data_snapshot=str(folder / "data"), data_hash=snapshot.sha256, data_watermark=snapshot.watermark
    )
    if snapshot.train_pairs < 1 or snapshot.eval_pairs < 1:
        raise services.TrainingError(
            f"not enough A/B preferences to train and evaluate: {snapshot.train_pairs} train and "
            f"{snapshot.eval_pairs} eval pairs (each side needs at least one)"
        )

    # 2. Train, from the project's base or (warm start) from the active reward model, then score
    # the comparisons into the model's folder.
    base_name = config.get("base") or project.reward_model_base
    start_from = active.artifact_path if warm else resolve_base(base_name)
    out = Path(settings.ARTIFACT_ROOT) / "models" / str(project.pk) / "reward" / f"run-{run_label(run)}"
    argv = [
        "reward",
        "--data",
        str(snapshot.train_path),
        "--eval",
        str(snapshot.eval_path),
        "--base",
        start_from,
        "--out",
        str(out),
        "--config-json",
        json.dumps(config.get("trainer", {})),
    ]
    if snapshot.comparisons:
        argv += ["--score-data", str(snapshot.comparisons_path), "--score-seconds", str(score_seconds)]
    if active:
        argv += ["--parent", str(active.pk)]
    try:
        metrics = supervise(run_id=run.pk, argv=argv, folder=folder, timeout_s=config.get("timeout_s"))
    except BaseException:
        # A model folder from a failed or cancelled run is never registered, and not kept.
        remove_partial(out)
        raise

    # 3. Score the active model on the same eval pairs, so the rule compares like with like.
    active_metrics = None
    if active is not None and rule == "not_worse":
        argv = ["evaluate", "--model", active.artifact_path, "--eval", str(snapshot.eval_path)]
        try:
            active_metrics = supervise(run_id=run.pk, argv=argv, folder=folder / "eval-active")
        except RuntimeError as exc:
            active_metrics = {"error": str(exc)[-2000:]}

    # 4. Register, and promote by the rule.
    version = services.model_version_register(
        project=project,
        kind=ModelKind.REWARD,
        artifact_path=str(out),
        base=base_name,
        run=run,
        parent=active,
        metrics=metrics,
    )
    promote, reason = decide_promotion(rule=rule, new_metrics=metrics, active=active, active_metrics=active_metrics)
    if promote:
        services.model_version_promote(version=version)
    summary = {
        **metrics,
        "promotion": {"promoted": promote, "reason": reason, "version": version.version, "active": active_metrics},
    }
    services.training_run_finish(run_id=run.pk, status=RunStatus.SUCCEEDED, metrics=summary)


def _positive(config: dict, key: str, default: float) -> float:
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise services.TrainingError(f"config.{key} must be a positive number")
    return float(value)


def decide_promotion(
    *, rule: str, new_metrics: dict, active: ModelVersion | None, active_metrics: dict | None = None
) -> tuple[bool, str]:
    if active is None:
        return True, "no reward model was active"
    if rule == "always":
        return True, "promotion rule is 'always'"
    if rule == "never":
        return False, "promotion rule is 'never'; promote it by hand"
    new = new_metrics.get("reward/accuracy")
    old = (active_metrics or {}).get("reward/accuracy")
    if new is None or old is None:
        return False, "the new or the active model could not be scored on the eval pairs; promote it by hand"
    if new >= old:
        return True, f"held-out accuracy {new:.3f} is not worse than the active model's {old:.3f} on the same pairs"
    return False, f"held-out accuracy {new:.3f} is worse than the active model's {old:.3f} on the same pairs"


@shared_task
def loop_tick() -> list[int]:
    """Beat's entry into the loop (schedule: the "training loop" periodic task, editable in the admin)."""
    from training.loop import loop_tick as tick

    return tick()
