"""Saving a trained reward model atomically, and loading it back for scoring."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import RewardConfig
from .data import PairEncoder, flatten_prompt, pad_rows
from .distributed import Runtime, uses_bf16

METADATA_FILE = "metadata.json"
FORMAT = "rlhf-reward-model/1"


def library_versions() -> dict[str, str]:
    import tokenizers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
    }


def build_metadata(
    cfg: RewardConfig, metrics: dict[str, float], data_sha256: str, eval_sha256: str | None,
    parent: str | None, rt: Runtime, n_train: int, n_eval: int,
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "parent": parent,
        "base_model": cfg.base_model,
        "objective": cfg.objective,
        "config": cfg.to_dict(),
        "data_sha256": data_sha256,
        "eval_data_sha256": eval_sha256,
        "num_train_records": n_train,
        "num_eval_records": n_eval,
        "metrics": finite(metrics),
        # for downstream normalisation (e.g. PPO): statistics of rewards over all eval responses
        "reward_mean": finite(metrics).get("reward/mean"),
        "reward_std": finite(metrics).get("reward/std"),
        "device": rt.device.type,
        "precision": "bf16-autocast" if uses_bf16(rt, cfg.bf16) else "fp32",
        "world_size": rt.world_size,
        "versions": library_versions(),
    }


def save_reward_model(out_dir: str | Path, model: Any, tokenizer: Any, metadata: dict[str, Any]) -> Path:
    """Write into a temporary sibling directory, then rename it into place.

    A reader polling out_dir thus sees nothing or the complete model, never a half-written one
    (rename is atomic within one filesystem, which a sibling guarantees).
    """
    out = Path(out_dir).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} already exists and is not an empty directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        model = getattr(model, "module", model)  # unwrap DDP
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        with open(tmp / METADATA_FILE, "w", encoding="utf-8") as f:
            json.dump(metadata, f, indent=2, sort_keys=True, allow_nan=False, default=_json_default)
            f.write("\n")
        # mkdtemp (and the shard writer) create owner-only files; readers may be another user
        os.chmod(tmp, 0o755)
        for item in tmp.rglob("*"):
            item.chmod(0o755 if item.is_dir() else 0o644)
        if out.exists():
            out.rmdir()  # an empty placeholder (e.g. created by the caller) may be replaced
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _json_default(value: Any) -> Any:
    raise TypeError(f"metadata value {value!r} is not JSON serialisable")


def finite(metrics: dict[str, float]) -> dict[str, float | None]:
    """NaN/inf -> None: strict JSON has no NaN, and consumers (JS, Postgres jsonb) reject it."""
    return {k: (v if math.isfinite(v) else None) for k, v in metrics.items()}


@dataclass
class LoadedRewardModel:
    """A saved reward model with its tokenizer and metadata, ready to score responses."""

    model: Any
    tokenizer: Any
    metadata: dict[str, Any]

    @torch.no_grad()
    def score(self, prompts: list[Any], responses: list[str], batch_size: int = 16) -> list[float]:
        """Raw rewards, tokenized exactly as in training (same max_length and truncation policy)."""
        cfg = self.metadata.get("config", {})
        encoder = PairEncoder(self.tokenizer, cfg.get("max_length", 256), cfg.get("min_prompt_tokens", 32))
        texts = [flatten_prompt(p, f"prompt {i}") for i, p in enumerate(prompts)]
        encoded = encoder.encode(texts, list(responses))
        device = next(self.model.parameters()).device
        out: list[float] = []
        for start in range(0, len(encoded), batch_size):
            batch = pad_rows(encoded[start : start + batch_size], encoder.pad_id, encoder.use_token_types)
            logits = self.model(**{k: v.to(device) for k, v in batch.items()}).logits  # (B, 1)
            out.extend(logits.squeeze(-1).float().cpu().tolist())
        return out


def load_reward_model(path: str | Path, device: str | torch.device = "cpu") -> LoadedRewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = Path(path)
    with open(path / METADATA_FILE, encoding="utf-8") as f:
        metadata = json.load(f)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).to(device).eval()
    return LoadedRewardModel(model=model, tokenizer=tokenizer, metadata=metadata)
