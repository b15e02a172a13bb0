"""Configuration for PPO runs and for generation.

Plain dataclasses, no torch import, so the web side can build and validate a config (and store it
as JSON) without loading the ML stack. Defaults are sized for the embedded setup: SmolLM2-135M on a
2-core CPU, where one PPO iteration (16 episodes, 32-token responses, 2 epochs of 2 optimizer steps)
takes 35-40 s, so a default run of 8 iterations (128 episodes: the loop's 64 prompts twice, 32
optimizer steps), with loading and the final evaluation on 32 prompts, takes about 5-6 minutes
(bench/ppo_default_bench.py measures it; bench/README.md has the figures).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .config import DEVICES, ConfigError


@dataclass
class GenerateConfig:
    """How responses are sampled from a policy (by `generate`, and by PPO's rollouts)."""

    max_new_tokens: int = 64
    """Response length limit in tokens; a response that reaches it without a stop token is 'unfinished'."""
    temperature: float = 0.7
    """Sampling temperature; top_k=0 and top_p=1 always, so the policy's full distribution is sampled."""
    max_prompt_tokens: int = 384
    """Prompt tokens kept, cut from the left (the latest turns matter most)."""
    batch_size: int = 16
    """Prompts sampled together (left-padded to the longest in the batch)."""
    stop_tokens: list[str] = dataclasses.field(default_factory=list)
    """Extra tokens (as text) that end a response, besides the tokenizer's EOS."""
    chat_template: bool = True
    """Format prompts with the tokenizer's chat template when it has one."""
    seed: int = 0
    """Seed of the sampler."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda'."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("max_new_tokens", "max_prompt_tokens", "batch_size"):
            _need_positive_int(self, name)
        _need(
            _is_number(self.temperature) and self.temperature > 0, f"temperature must be > 0, got {self.temperature!r}"
        )
        _need(
            isinstance(self.stop_tokens, list) and all(isinstance(s, str) and s for s in self.stop_tokens),
            f"stop_tokens must be a list of non-empty strings, got {self.stop_tokens!r}",
        )
        _need(isinstance(self.chat_template, bool), f"chat_template must be true/false, got {self.chat_template!r}")
        _need(
            isinstance(self.seed, int) and not isinstance(self.seed, bool),
            f"seed must be an integer, got {self.seed!r}",
        )
        _need(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerateConfig:
        return _from_dict(cls, data)


@dataclass
class PPOConfig:
    """Hyper-parameters and runtime switches for one PPO run (rollouts + updates)."""

    iterations: int = 8
    """PPO iterations: each samples rollout_batch_size responses, scores them and updates the policy."""
    rollout_batch_size: int = 16
    """Prompts (episodes) per iteration."""
    mini_batch_size: int = 8
    """Episodes per optimizer step; rollout_batch_size must be a multiple of it."""
    grad_accum_steps: int = 1
    """Micro-batches per mini-batch (micro-batch = mini_batch_size / grad_accum_steps episodes)."""
    ppo_epochs: int = 2
    """Passes over each rollout batch, reshuffled into mini-batches every pass."""
    max_new_tokens: int = 32
    """Response length limit in tokens."""
    max_prompt_tokens: int = 128
    """Prompt tokens kept, cut from the left."""
    temperature: float = 0.7
    """Sampling temperature, applied as well to every log-prob (policy, old policy, reference)."""
    stop_tokens: list[str] = dataclasses.field(default_factory=list)
    """Extra tokens (as text) that end a response, besides the tokenizer's EOS."""
    chat_template: bool = True
    """Format prompts with the policy tokenizer's chat template when it has one."""
    missing_eos_penalty: float | None = 1.0
    """Subtracted from the (normalised) score of responses that never end; null disables it."""
    normalize_reward: bool = True
    """Standardise reward-model scores with the mean/std saved with the reward model."""
    reward_clip: float | None = 5.0
    """Clip normalised scores to [-reward_clip, reward_clip]; null disables clipping."""
    kl_coef: float = 0.05
    """Initial beta of the per-token KL penalty -beta * (log pi - log pi_ref)."""
    target_kl: float | None = 6.0
    """Adaptive KL target (summed over a response, nats); null keeps beta fixed at kl_coef."""
    kl_horizon: int = 10_000
    """Adaptive KL horizon in episodes: how fast beta adapts."""
    gamma: float = 1.0
    """Discount factor of GAE."""
    lam: float = 0.95
    """Lambda of GAE."""
    cliprange: float = 0.2
    """PPO ratio clip range."""
    cliprange_value: float = 0.2
    """Value clip range around the rollout-time values."""
    vf_coef: float = 0.1
    """Weight of the value loss in the total loss."""
    whiten_advantages: bool = True
    """Whiten advantages over the real tokens of the whole rollout batch (mask-aware)."""
    lr: float = 2e-5
    """Peak AdamW learning rate of the policy, annealed linearly to 0 over the run."""
    value_lr: float = 1e-3
    """Learning rate of the value head: a fresh linear head must track the returns within a few steps,
    which at the body's rate it never does (see ppo.py)."""
    weight_decay: float = 0.0
    """AdamW weight decay (matrices only)."""
    adam_eps: float = 1e-8
    """AdamW epsilon. 1e-8 as in PyTorch, transformers and TRL. OpenAI's 1e-5 was for TensorFlow's Adam,
    where it is added before the bias correction; in PyTorch's Adam 1e-5 damps every parameter whose
    gradient is below ~1e-5, which in a 135M-parameter policy with a clipped gradient is most of them
    (SmolLM2, 4 iterations: KL 1.5 at 1e-5 with clipping at 1.0, 2.3 at 1e-8 without clipping)."""
    max_grad_norm: float | None = 1.0
    """Gradient clipping threshold; null disables clipping."""
    forward_batch_size: int = 16
    """Episodes per no-grad forward pass (old log-probs, values, reference, reward)."""
    checkpoint_every: int = 4
    """Iterations between resumable checkpoints (the last iteration always saves the final policy)."""
    seed: int = 42
    """Seed for sampling, value-head init and mini-batch order."""
    device: str = "auto"
    """'auto' (CUDA if available), 'cpu' or 'cuda'."""
    bf16: bool = True
    """bf16 autocast on a CUDA device that supports it (ignored on CPU)."""
    threads: int = 0
    """torch CPU threads. 0: the command line picks them (OMP_NUM_THREADS if set, else the cores that the
    load average leaves free, at least 1: on a busy machine one thread beats two that keep waiting for each
    other); train() called directly then leaves torch's setting alone."""
    eval_seed: int = 1234
    """Seed of the sampler of the final evaluation: the same for every run, so versions are comparable."""
    eval_time_limit_s: float | None = 300.0
    """The final evaluation starts no new batch of prompts after this many seconds; null: no limit."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in (
            "iterations",
            "rollout_batch_size",
            "mini_batch_size",
            "grad_accum_steps",
            "ppo_epochs",
            "max_new_tokens",
            "max_prompt_tokens",
            "kl_horizon",
            "forward_batch_size",
            "checkpoint_every",
        ):
            _need_positive_int(self, name)
        _need(
            self.rollout_batch_size % self.mini_batch_size == 0,
            f"rollout_batch_size ({self.rollout_batch_size}) must be a multiple of "
            f"mini_batch_size ({self.mini_batch_size})",
        )
        _need(
            self.mini_batch_size % self.grad_accum_steps == 0,
            f"mini_batch_size ({self.mini_batch_size}) must be a multiple of grad_accum_steps "
            f"({self.grad_accum_steps})",
        )
        for name in ("temperature", "kl_horizon", "cliprange", "cliprange_value", "lr", "value_lr", "adam_eps"):
            value = getattr(self, name)
            _need(_is_number(value) and value > 0, f"{name} must be > 0, got {value!r}")
        for name in ("kl_coef", "vf_coef", "weight_decay"):
            value = getattr(self, name)
            _need(_is_number(value) and value >= 0, f"{name} must be >= 0, got {value!r}")
        for name in ("gamma", "lam"):
            value = getattr(self, name)
            _need(_is_number(value) and 0 <= value <= 1, f"{name} must be in [0, 1], got {value!r}")
        for name in ("missing_eos_penalty", "reward_clip", "target_kl", "max_grad_norm", "eval_time_limit_s"):
            value = getattr(self, name)
            _need(value is None or (_is_number(value) and value > 0), f"{name} must be > 0 or null, got {value!r}")
        for name in ("chat_template", "normalize_reward", "whiten_advantages", "bf16"):
            value = getattr(self, name)
            _need(isinstance(value, bool), f"{name} must be true/false, got {value!r}")
        _need(
            isinstance(self.stop_tokens, list) and all(isinstance(s, str) and s for s in self.stop_tokens),
            f"stop_tokens must be a list of non-empty strings, got {self.stop_tokens!r}",
        )
        for name in ("seed", "eval_seed"):
            value = getattr(self, name)
            _need(isinstance(value, int) and not isinstance(value, bool), f"{name} must be an integer, got {value!r}")
        _need(
            isinstance(self.threads, int) and not isinstance(self.threads, bool) and self.threads >= 0,
            f"threads must be an integer >= 0 (0: automatic), got {self.threads!r}",
        )
        _need(self.device in DEVICES, f"device must be one of {DEVICES}, got {self.device!r}")

    @property
    def micro_batch_size(self) -> int:
        return self.mini_batch_size // self.grad_accum_steps

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PPOConfig:
        return _from_dict(cls, data)

    def replace(self, **changes: Any) -> PPOConfig:
        return dataclasses.replace(self, **changes)


def _from_dict(cls: Any, data: dict[str, Any]) -> Any:
    """Build from a JSON-like dict; unknown keys are an error (typos must not pass silently)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown config key(s): {', '.join(unknown)}; valid keys are: {', '.join(sorted(known))}")
    try:
        return cls(**data)
    except TypeError as exc:  # e.g. a None where a number is required trips a comparison
        raise ConfigError(f"invalid config: {exc}") from None


def _need(ok: bool, msg: str) -> None:
    if not ok:
        raise ConfigError(msg)


def _need_positive_int(obj: Any, name: str) -> None:
    value = getattr(obj, name)
    _need(
        isinstance(value, int) and not isinstance(value, bool) and value >= 1,
        f"{name} must be a positive integer, got {value!r}",
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
