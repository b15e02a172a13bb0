"""Resumable PPO checkpoints and the final policy folder.

Layout of a run's output folder:
    OUT/checkpoints/iter-000004/   while the run is going (only the newest is kept):
        policy/                    save_pretrained() of the policy and its tokenizer
        value_head.pt              the value model (a linear head on the policy, see ppo.ValueHead)
        optimizer.pt               AdamW state of policy + value head
        state.pt                   iteration, KL controller, RNG states, config, metrics history
    OUT/ (at the end)              the final policy, loadable as any causal LM, plus value_head.pt,
                                   metrics.jsonl and metadata.json, which is written last: a reader
                                   that finds metadata.json finds a complete policy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .checkpoint import finite, library_versions
from .policy import VALUE_HEAD_FILE

POLICY_FORMAT = "rlhf-policy/1"
METADATA_FILE = "metadata.json"
CHECKPOINTS = "checkpoints"
# settings that do not change what a run computes (beyond float rounding): a resumed run may change them
RUNTIME_KEYS = frozenset({"threads", "eval_time_limit_s", "checkpoint_every"})


class ResumeError(ValueError):
    """The checkpoint to resume from is missing, incomplete or from another run."""


def _atomic_dir(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))


def save_checkpoint(
    out_dir: Path,
    iteration: int,
    policy: Any,
    tokenizer: Any,
    value_head: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Write checkpoint `iteration` (number of finished iterations) atomically, then drop older ones."""
    root = out_dir / CHECKPOINTS
    target = root / f"iter-{iteration:06d}"
    tmp = _atomic_dir(target)
    try:
        policy.save_pretrained(tmp / "policy")
        tokenizer.save_pretrained(tmp / "policy")
        torch.save(value_head.state_dict(), tmp / VALUE_HEAD_FILE)
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({**state, "iteration": iteration}, tmp / "state.pt")
        if target.exists():
            shutil.rmtree(target)
        os.rename(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old in root.glob("iter-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)
    return target


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or the newest one in a run's output folder."""
    path = Path(path)
    if (path / "state.pt").is_file():
        return path
    found = sorted((path / CHECKPOINTS).glob("iter-*/state.pt"))
    if not found:
        raise ResumeError(f"no PPO checkpoint in {path}")
    return found[-1].parent


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Load save_pretrained() safetensors into an existing model (tied weights come back through their twin)."""
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise ResumeError(f"no weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(file))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])  # a list, or (transformers 5) a dict by key
    if unexpected or set(missing) - tied:
        raise ResumeError(
            f"checkpoint {folder} does not fit this policy (missing {sorted(set(missing) - tied)[:5]}, "
            f"unexpected {sorted(unexpected)[:5]})"
        )


def load_checkpoint(
    ckpt: Path, policy: Any, value_head: torch.nn.Module, optimizer: torch.optim.Optimizer, config: dict[str, Any]
) -> dict[str, Any]:
    """Restore weights and optimizer in place; return the saved state dict (iteration, KL, RNG, history).

    The run's config must be the checkpoint's: another schedule or batch size would silently break
    "resuming gives what running straight through would have".
    """
    state = torch.load(ckpt / "state.pt", map_location="cpu", weights_only=True)
    changed = sorted(
        k
        for k in set(config) | set(state["config"])
        if k not in RUNTIME_KEYS and state["config"].get(k) != config.get(k)
    )
    if changed:
        raise ResumeError(f"{ckpt} was written with a different config ({', '.join(changed)}); resume with the same")
    load_weights(policy, ckpt / "policy")
    value_head.load_state_dict(torch.load(ckpt / VALUE_HEAD_FILE, map_location="cpu", weights_only=True))
    optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", map_location="cpu", weights_only=True))
    return state


def save_final(
    out_dir: Path,
    policy: Any,
    tokenizer: Any,
    value_head: torch.nn.Module,
    metadata: dict[str, Any],
    history: list[dict[str, float]],
) -> Path:
    """The final policy into out_dir (beside checkpoints/, which is then removed); metadata.json last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".final.tmp-", dir=out_dir))
    try:
        policy.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        torch.save(value_head.state_dict(), tmp / VALUE_HEAD_FILE)
        with open(tmp / "metrics.jsonl", "w", encoding="utf-8") as f:
            for row in history:
                f.write(json.dumps(finite(row), sort_keys=True) + "\n")
        for item in sorted(tmp.iterdir()):
            item.chmod(0o644)
            os.replace(item, out_dir / item.name)
        with open(out_dir / (METADATA_FILE + ".tmp"), "w", encoding="utf-8") as f:
            json.dump(
                {**metadata, "metrics": finite(metadata.get("metrics", {}))},
                f,
                indent=2,
                sort_keys=True,
                allow_nan=False,
            )
            f.write("\n")
        os.replace(out_dir / (METADATA_FILE + ".tmp"), out_dir / METADATA_FILE)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
    return out_dir


def build_metadata(
    cfg_dict: dict[str, Any],
    metrics: dict[str, float],
    policy_source: str,
    reference: str,
    reward_model: str | None,
    prompts_sha256: str | None,
    parent: str | None,
    device: str,
    num_prompts: int,
) -> dict[str, Any]:
    return {
        "format": POLICY_FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parent": parent,
        "policy_source": policy_source,
        "reference": reference,
        "reward_model": reward_model,
        "value_model": "linear value head on the policy's last hidden state (" + VALUE_HEAD_FILE + ")",
        "config": cfg_dict,
        "prompts_sha256": prompts_sha256,
        "num_prompts": num_prompts,
        "metrics": finite(metrics),
        "device": device,
        "versions": library_versions(),
    }
