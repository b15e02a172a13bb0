"""Configuration for reward-model training.

Plain dataclass, no torch import, so the web side can build and validate a
config (and store it as JSON) without loading the ML stack.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

Objective = Literal["pairwise", "regression"]
OBJECTIVES: tuple[str, ...] = ("pairwise", "regression")
DEVICES: tuple[str, ...] = ("auto", "cpu", "cuda")


class ConfigError(ValueError):
    """A config value or key is invalid; the message is meant for end users."""


@dataclass
class RewardConfig:
    """Hyper-parameters and runtime switches for one reward-model training run."""

    base_model: str = ""
    """Path (or hub id) of the pretrained model to put a scalar head on."""
    max_length: int = 256
    """Max tokens of prompt+response, special tokens included; longer inputs are cut, never dropped."""
    min_prompt_tokens: int = 32
    """Prompt tokens kept (from its end) even when the response alone would fill max_length."""
    batch_size: int = 8
    """Pairs per micro-batch and per process (the model sees 2x rows: chosen + rejected)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 2e-5
    """Peak AdamW learning rate."""
    epochs: int = 1
    """Passes over the training data."""
    warmup_ratio: float = 0.1
    """Fraction of optimizer steps spent linearly warming up the learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay, applied to matrices only (not biases / norms)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping threshold; None disables clipping."""
    dropout: bool = False
    """Keep dropout while training; off by default as separate masks on chosen/rejected add noise to r_c - r_r."""
    seed: int = 42
    """Seed for head init, dropout and batch order."""
    objective: Objective = "pairwise"
    """'pairwise' (Bradley-Terry on chosen/rejected) or 'regression' (MSE on ratings)."""
    use_margin: bool = False
    """Subtract each record's 'margin' inside the pairwise loss (Llama-2 style)."""
    center_rewards_coefficient: float | None = None
    """If set, adds coef * mean((r_c + r_r)^2) to keep rewards centred on zero."""
    bucket_size_multiplier: int = 50
    """Mega-batch size in batches; lengths are sorted only inside a mega-batch to keep randomness."""
    eval_batch_size: int = 16
    """Pairs per evaluation batch."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda'."""
    bf16: bool = True
    """Use bf16 autocast when running on a CUDA device that supports it (ignored on CPU)."""
    log_every: int = 10
    """Optimizer steps between metric log lines."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(msg)

        need(isinstance(self.base_model, str), "base_model must be a string path")
        for name in ("max_length", "batch_size", "grad_accum_steps", "epochs", "eval_batch_size",
                     "log_every", "bucket_size_multiplier"):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                 f"{name} must be a positive integer, got {value!r}")
        need(self.max_length >= 8, f"max_length must be >= 8, got {self.max_length}")
        need(isinstance(self.min_prompt_tokens, int) and 0 <= self.min_prompt_tokens < self.max_length,
             f"min_prompt_tokens must be in [0, max_length), got {self.min_prompt_tokens!r}")
        need(_is_number(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(_is_number(self.warmup_ratio) and 0 <= self.warmup_ratio <= 1,
             f"warmup_ratio must be in [0, 1], got {self.warmup_ratio!r}")
        need(_is_number(self.weight_decay) and self.weight_decay >= 0,
             f"weight_decay must be >= 0, got {self.weight_decay!r}")
        need(self.max_grad_norm is None or (_is_number(self.max_grad_norm) and self.max_grad_norm > 0),
             f"max_grad_norm must be > 0 or null, got {self.max_grad_norm!r}")
        need(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        need(self.objective in OBJECTIVES, f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        need(isinstance(self.use_margin, bool), f"use_margin must be true/false, got {self.use_margin!r}")
        need(self.center_rewards_coefficient is None
             or (_is_number(self.center_rewards_coefficient) and self.center_rewards_coefficient >= 0),
             f"center_rewards_coefficient must be >= 0 or null, got {self.center_rewards_coefficient!r}")
        need(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")
        need(isinstance(self.dropout, bool), f"dropout must be true/false, got {self.dropout!r}")
        need(isinstance(self.bf16, bool), f"bf16 must be true/false, got {self.bf16!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RewardConfig:
        """Build from a JSON-like dict; unknown keys are an error (typos must not pass silently)."""
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown config key(s): {', '.join(unknown)}; valid keys are: {', '.join(sorted(known))}"
            )
        try:
            return cls(**data)
        except TypeError as exc:  # e.g. a None where a number is required trips a comparison
            raise ConfigError(f"invalid config: {exc}") from None

    def replace(self, **changes: Any) -> RewardConfig:
        return dataclasses.replace(self, **changes)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
