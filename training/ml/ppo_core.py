"""The arithmetic of PPO for language models, as pure functions on tensors (no models, no I/O).

Conventions, shared by every function here:
- a batch of B rollouts with R response tokens each is a (B, R) tensor, one column per token;
- `mask` is (B, R), 1.0 for real response tokens (up to and including the stop token), 0.0 after it;
- padded positions get exactly 0 in every output, so they never leak into a sum or a mean.

Names follow "The N Implementation Details of RLHF with PPO" (Huang et al.) and CleanRL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where mask is 1 (all positions of the batch pooled, token-level)."""
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Unbiased (Bessel-corrected) variance over the positions where mask is 1."""
    n = mask.sum()
    centred = (x - masked_mean(x, mask)) * mask
    return (centred**2).sum() / (n - 1).clamp(min=1.0)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std with mean and std taken over real tokens only; padded positions become 0.

    Whitening over the full (B, R) tensor would count the zeros after each response's end and bias
    both statistics towards 0, more so the shorter the responses are.
    """
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def first_stop_lengths(responses: torch.Tensor, stop_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Length of each response up to and including its first stop token, and whether it has one.

    responses: (B, R) token ids as sampled. Returns lengths (B,) in 1..R and finished (B,) bool; a
    response that never stops keeps all R tokens and finished=False.
    """
    B, R = responses.shape
    is_stop = torch.zeros_like(responses, dtype=torch.bool)  # (B, R)
    for stop_id in stop_ids:
        is_stop |= responses == stop_id
    finished = is_stop.any(dim=1)  # (B,)
    first = torch.where(finished, is_stop.float().argmax(dim=1), torch.full((B,), R - 1))  # (B,) index of the stop
    return first + 1, finished


def lengths_to_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B,) lengths -> (B, width) float mask with the first `length` positions set."""
    positions = torch.arange(width, device=lengths.device)  # (width,)
    return (positions[None, :] < lengths[:, None]).float()  # (B, width)


def normalize_scores(
    raw: torch.Tensor,
    mean: float,
    std: float,
    clip: float | None,
    finished: torch.Tensor,
    missing_eos_penalty: float | None,
) -> torch.Tensor:
    """Reward-model scores -> PPO scores: standardised with the reward model's own statistics, clipped,
    and lowered by a penalty for responses that hit the length limit without a stop token.

    The penalty comes after clipping so that a response that never ends is always worse than the
    same text with an end, even when its raw score is already at the clip limit.
    """
    scores = (raw - mean) / max(std, 1e-8)  # (B,)
    if clip is not None:
        scores = scores.clamp(-clip, clip)
    if missing_eos_penalty:
        scores = scores - missing_eos_penalty * (~finished).float()
    return scores


def rewards_with_kl(
    scores: torch.Tensor, logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor, beta: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: -beta * (log pi - log pi_ref) at every real token, plus the score at the last one.

    scores: (B,); logprobs, ref_logprobs, mask: (B, R). Returns (rewards, kl), both (B, R) and 0 after
    the end. kl is the per-token estimator log pi - log pi_ref of the sampled tokens (k1: unbiased for
    KL(pi || pi_ref) when summed over a response sampled from pi).
    """
    kl = (logprobs - ref_logprobs) * mask  # (B, R)
    rewards = -beta * kl  # (B, R)
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each response, right to left.

    rewards, values, mask: (B, R). Values after a response's end are treated as 0 (the episode is
    over: nothing more to earn), which is what makes the last real token bootstrap from 0 rather than
    from the value of a pad token. Returns (advantages, returns), both (B, R) and 0 after the end.
    """
    values = values * mask
    rewards = rewards * mask
    B, R = rewards.shape
    advantages = torch.zeros_like(rewards)  # (B, R)
    last_gae = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # (B,)
    for t in reversed(range(R)):
        next_value = values[:, t + 1] if t + 1 < R else torch.zeros_like(last_gae)  # (B,)
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        last_gae = delta + gamma * lam * last_gae * mask[:, t]
        advantages[:, t] = last_gae
    advantages = advantages * mask
    returns = (advantages + values) * mask
    return advantages, returns


def policy_loss(
    logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, cliprange: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Clipped surrogate objective, as a loss. All inputs (B, R). Returns (pg_loss, clipfrac, approx_kl).

    approx_kl is 0.5 * E[(log r)^2], the low-variance estimator of KL(old || new) used by CleanRL.
    """
    log_ratio = (logprobs - old_logprobs) * mask  # (B, R)
    ratio = torch.exp(log_ratio)  # (B, R)
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
    pg_loss = masked_mean(torch.maximum(pg_losses, pg_losses2), mask)
    with torch.no_grad():
        clipfrac = masked_mean((pg_losses2 > pg_losses).float(), mask)
        approx_kl = 0.5 * masked_mean(log_ratio**2, mask)
    return pg_loss, clipfrac, approx_kl


def value_loss(
    vpreds: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, cliprange_value: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Clipped value loss 0.5 * E[max((v - R)^2, (clip(v, v_old +- c) - R)^2)]. Returns (vf_loss, vf_clipfrac)."""
    vpred_clipped = old_values + (vpreds - old_values).clamp(-cliprange_value, cliprange_value)  # (B, R)
    vf_losses1 = (vpreds - returns) ** 2
    vf_losses2 = (vpred_clipped - returns) ** 2
    vf_loss = 0.5 * masked_mean(torch.maximum(vf_losses1, vf_losses2), mask)
    with torch.no_grad():
        vf_clipfrac = masked_mean((vf_losses2 > vf_losses1).float(), mask)
    return vf_loss, vf_clipfrac


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each categorical distribution; logits (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """log p(token) under softmax(logits / temperature): the distribution the tokens were sampled from.

    logits (B, R, V), tokens (B, R) -> (B, R). Using the sampling temperature here (for the policy,
    the old policy and the reference alike) keeps ratio and KL about the same distribution.
    """
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)  # (B, R, V)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, R)


@dataclass
class KLController:
    """Adaptive KL coefficient (Ziegler et al. 2019), or a fixed one when target is None.

    After each batch, beta *= 1 + clip(kl / target - 1, -0.2, 0.2) * n_episodes / horizon:
    beta rises while the measured KL is above target and falls while below, by at most 20% of
    n_episodes/horizon per update, so it moves smoothly over about `horizon` episodes.
    """

    beta: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, kl: float, n_episodes: int) -> None:
        if self.target is None or not math.isfinite(kl):
            return
        proportional_error = min(max(kl / self.target - 1.0, -0.2), 0.2)
        self.beta *= 1.0 + proportional_error * n_episodes / self.horizon

    def state_dict(self) -> dict[str, float | int | None]:
        return {"beta": self.beta, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict[str, float | int | None]) -> None:
        self.beta = float(state["beta"])  # type: ignore[arg-type]
        self.target = state["target"]  # type: ignore[assignment]
        self.horizon = int(state["horizon"])  # type: ignore[arg-type]
