"""Evaluation of a policy on a fixed set of prompts: mean reward-model score (with a 95% confidence
interval) and KL to the reference, as stored in every policy version's metrics.

Each prompt gets one response, sampled the way PPO samples (same temperature, top_k=0, top_p=1,
same response length) from a generator seeded with a fixed seed, so two versions evaluated on the
same prompts differ only by their weights. The KL is the sampled estimate of KL(pi || pi_ref) of a
whole response: the sum over its tokens of log pi - log pi_ref, averaged over prompts (the quantity
PPO's `ppo/kl` reports on training batches); it is exactly 0 for a policy identical to the reference.
The score is the reward model's raw score (no normalisation, no penalty for unfinished responses),
what `reward/mean` reports during training.

The keys are a contract with the web side, which shows them: eval/reward/mean, eval/reward/ci_low,
eval/reward/ci_high, eval/kl, eval/prompts.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from .generate import encode_prompt, left_pad, pad_id_of, sample_rollout, stop_token_ids, uses_chat_template
from .ppo_core import first_stop_lengths, lengths_to_mask

EVAL_KEYS = ("eval/reward/mean", "eval/reward/ci_low", "eval/reward/ci_high", "eval/kl", "eval/prompts")


def student_t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with df degrees of freedom (p in (0.5, 1)), by Newton's method on
    its CDF, which is integrated numerically (Simpson's rule): no scipy needed for one number."""
    if not (0.5 < p < 1) or df < 1:
        raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(x: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(x * x / df))

    def cdf(x: float, n: int = 2000) -> float:  # x >= 0
        h = x / n
        total = pdf(0.0) + pdf(x) + sum((4 if i % 2 else 2) * pdf(i * h) for i in range(1, n))
        return 0.5 + total * h / 3

    # start from the normal quantile (Acklam-free: a few bisection steps on erf are enough)
    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < p else (lo, mid)
    x = (lo + hi) / 2
    for _ in range(50):
        step = (cdf(x) - p) / pdf(x)
        x = max(x - step, x / 2)  # the t tail is heavier than the normal's: x only grows from the start
        if abs(step) < 1e-10 * max(1.0, x):
            break
    return x


def mean_confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the t interval mean +- t_{(1+level)/2, n-1} * s / sqrt(n). With a single value
    the interval is unknown, reported as (mean, nan, nan)."""
    n = len(values)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = student_t_quantile((1 + level) / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def evaluate_as_configured(
    cfg: Any, policy: Any, tokenizer: Any, reference: Any, reward_fn: Callable, prompts: list[Any]
) -> tuple[dict[str, float], dict[str, Any]]:
    """evaluate_policy with the sampling settings, batch size, seed and time limit of a PPOConfig: the
    evaluation every PPO run gives its final policy."""
    return evaluate_policy(
        policy,
        tokenizer,
        reference,
        reward_fn,
        prompts,
        max_new_tokens=cfg.max_new_tokens,
        temperature=cfg.temperature,
        max_prompt_tokens=cfg.max_prompt_tokens,
        chat_template=cfg.chat_template,
        stop_tokens=cfg.stop_tokens,
        batch_size=cfg.forward_batch_size,
        seed=cfg.eval_seed,
        time_limit_s=cfg.eval_time_limit_s,
    )


@torch.no_grad()
def evaluate_policy(
    policy: Any,
    tokenizer: Any,
    reference: Any,
    reward_fn: Callable[[list[Any], list[str], list[bool]], list[float]],
    prompts: list[Any],
    *,
    max_new_tokens: int,
    temperature: float,
    max_prompt_tokens: int,
    chat_template: bool = True,
    stop_tokens: list[str] | None = None,
    batch_size: int = 16,
    seed: int = 1234,
    time_limit_s: float | None = None,
) -> tuple[dict[str, float], dict[str, Any]]:
    """(metrics with EVAL_KEYS, details) of `policy` on `prompts`, in batches of batch_size.

    time_limit_s bounds the evaluation: no new batch starts once it has passed, and eval/prompts says
    how many prompts were evaluated (at least one batch always is). details has the per-prompt scores,
    KLs and lengths, and the seconds taken.
    """
    from .ppo import forward  # ppo imports this module's neighbours; a late import keeps the graph simple

    t0 = time.time()
    device = next(policy.parameters()).device
    was_training = policy.training
    policy.eval()
    chat = uses_chat_template(tokenizer, chat_template)
    stop_ids = stop_token_ids(tokenizer, policy, stop_tokens or [])
    pad_id = pad_id_of(tokenizer, stop_ids)
    encoded = [encode_prompt(tokenizer, p, max_prompt_tokens, chat, f"eval prompt {i}") for i, p in enumerate(prompts)]
    generator = torch.Generator(device=device).manual_seed(seed)
    scores: list[float] = []
    kls: list[float] = []
    lengths_all: list[int] = []
    finished_all: list[bool] = []
    try:
        for start in range(0, len(prompts), batch_size):
            if start > 0 and time_limit_s is not None and time.time() - t0 > time_limit_s:
                break
            rows = encoded[start : start + batch_size]
            queries, prompt_mask = left_pad(rows, pad_id, device)  # (b, P)
            rollout = sample_rollout(
                policy, queries, prompt_mask, max_new_tokens, temperature, stop_ids, pad_id, generator
            )
            lengths, finished = first_stop_lengths(rollout.tokens.cpu(), stop_ids)  # (b,), (b,)
            R = int(lengths.max())
            mask = lengths_to_mask(lengths, R).to(device)  # (b, R)
            responses = torch.where(mask.bool(), rollout.tokens[:, :R], torch.full_like(rollout.tokens[:, :R], pad_id))
            ids = torch.cat([queries, responses], dim=1)  # (b, P + R)
            am = torch.cat([prompt_mask, mask.long()], dim=1)  # (b, P + R)
            # both through the same full forward pass, so an unchanged policy gives a KL of exactly 0
            logprobs = forward(policy, None, ids, am, responses, temperature).logprobs  # (b, R)
            ref_logprobs = forward(reference, None, ids, am, responses, temperature).logprobs  # (b, R)
            kls.extend(((logprobs - ref_logprobs) * mask).sum(dim=1).tolist())
            texts = tokenizer.batch_decode(
                [responses[i, : lengths[i]].tolist() for i in range(len(rows))], skip_special_tokens=True
            )
            batch_prompts = prompts[start : start + batch_size]
            scores.extend(float(s) for s in reward_fn(batch_prompts, texts, finished.tolist()))
            lengths_all.extend(int(n) for n in lengths)
            finished_all.extend(bool(f) for f in finished)
    finally:
        policy.train(was_training)
    mean, low, high = mean_confidence_interval(scores)
    n = len(scores)
    metrics = {
        "eval/reward/mean": mean,
        "eval/reward/ci_low": low,
        "eval/reward/ci_high": high,
        "eval/kl": sum(kls) / n if n else math.nan,
        "eval/prompts": float(n),
    }
    details = {
        "scores": scores,
        "kls": kls,
        "lengths": lengths_all,
        "finished": finished_all,
        "seconds": time.time() - t0,
        "seed": seed,
        "temperature": temperature,
        "max_new_tokens": max_new_tokens,
    }
    return metrics, details
