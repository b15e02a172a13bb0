"""PPO arithmetic against values worked out by hand on small tensors (see the comments for the sums)."""

from __future__ import annotations

import math

import pytest
import torch

from training.ml.config import ConfigError
from training.ml.ppo_config import GenerateConfig, PPOConfig
from training.ml.ppo_core import (
    KLController,
    first_stop_lengths,
    gae,
    lengths_to_mask,
    logprobs_from_logits,
    masked_mean,
    masked_whiten,
    normalize_scores,
    policy_loss,
    rewards_with_kl,
    value_loss,
)


def close(actual: torch.Tensor, expected: list, tol: float = 1e-5) -> bool:
    return torch.allclose(actual.float(), torch.tensor(expected, dtype=torch.float32), atol=tol)


def test_masked_mean_ignores_padded_positions():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert masked_mean(x, mask).item() == pytest.approx(2.0)


def test_whitening_uses_real_tokens_only_and_zeroes_the_padding():
    # real values 1, 2, 3, 4: mean 2.5, unbiased variance (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 50.0, -50.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    s = math.sqrt(5 / 3)
    assert close(masked_whiten(x, mask), [[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]])
    # without the mean shift the mean is kept: only the scale changes
    assert close(
        masked_whiten(x, mask, shift_mean=False),
        [[-1.5 / s + 2.5, -0.5 / s + 2.5, 0.5 / s + 2.5], [1.5 / s + 2.5, 0.0, 0.0]],
    )


def test_responses_are_cut_at_their_first_stop_token():
    responses = torch.tensor([[5, 1, 7], [5, 6, 7], [2, 9, 1]])
    lengths, finished = first_stop_lengths(responses, stop_ids=[1, 2])
    assert lengths.tolist() == [2, 3, 1]  # the stop token itself is kept
    assert finished.tolist() == [True, False, True]
    assert lengths_to_mask(lengths, 3).tolist() == [[1, 1, 0], [1, 1, 1], [1, 0, 0]]


def test_scores_are_normalised_clipped_then_penalised_when_unfinished():
    raw = torch.tensor([3.0, -7.0, 1.0])
    finished = torch.tensor([True, True, False])
    # (raw - 1) / 2 = [1, -4, 0] -> clip to +-2 -> [1, -2, 0] -> unfinished third one loses 1
    scores = normalize_scores(raw, mean=1.0, std=2.0, clip=2.0, finished=finished, missing_eos_penalty=1.0)
    assert close(scores, [1.0, -2.0, -1.0])
    assert close(normalize_scores(raw, 0.0, 1.0, None, finished, None), [3.0, -7.0, 1.0])


def test_rewards_carry_the_kl_penalty_on_every_token_and_the_score_on_the_last_real_one():
    scores = torch.tensor([1.0, -2.0])
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref_logprobs = torch.tensor([[-1.5, -2.0, -2.0], [-2.0, -1.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = rewards_with_kl(scores, logprobs, ref_logprobs, mask, beta=0.1)
    assert close(kl, [[0.5, 0.0, -1.0], [1.0, 0.0, 0.0]])  # the padded -9 does not count
    # -0.1 * kl, plus the score at index 2 (row 0) and index 1 (row 1, whose last real token it is)
    assert close(rewards, [[-0.05, 0.0, 0.1 + 1.0], [-0.1, -2.0, 0.0]])


def test_gae_by_hand_bootstraps_from_zero_after_the_last_real_token():
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the 5 sits in padding and must be ignored
    values = torch.tensor([[0.5, 0.2, 0.4, 9.0]])  # so must the 9
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    advantages, returns = gae(rewards, values, mask, gamma=0.9, lam=0.5)
    # t=2: delta = 1 + 0.9*0 - 0.4 = 0.6;                       A = 0.6
    # t=1: delta = 0 + 0.9*0.4 - 0.2 = 0.16;                    A = 0.16 + 0.45*0.6 = 0.43
    # t=0: delta = 0 + 0.9*0.2 - 0.5 = -0.32;                   A = -0.32 + 0.45*0.43 = -0.1265
    assert close(advantages, [[-0.1265, 0.43, 0.6, 0.0]])
    assert close(returns, [[-0.1265 + 0.5, 0.43 + 0.2, 0.6 + 0.4, 0.0]])


def test_gae_with_gamma_and_lambda_one_gives_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.5, 0.5]])
    advantages, returns = gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    assert close(returns, [[6.0, 5.0, 3.0]]) and close(advantages, [[5.5, 4.5, 2.5]])


def test_clipped_policy_loss_by_hand():
    # ratios 1.5, 0.5, 1.1 with advantages 1, 1, -1; a padded 4th token with an absurd ratio
    logprobs = torch.log(torch.tensor([[1.5, 0.5, 1.1, 50.0]]))
    old = torch.zeros(1, 4)
    adv = torch.tensor([[1.0, 1.0, -1.0, 100.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    pg_loss, clipfrac, approx_kl = policy_loss(logprobs, old, adv, mask, cliprange=0.2)
    # unclipped -A*r = [-1.5, -0.5, 1.1]; clipped -A*clip(r) = [-1.2, -0.8, 1.1]; max = [-1.2, -0.5, 1.1]
    assert pg_loss.item() == pytest.approx((-1.2 - 0.5 + 1.1) / 3, abs=1e-6)
    assert clipfrac.item() == pytest.approx(1 / 3)  # only the first token is clipped
    logs = [math.log(1.5), math.log(0.5), math.log(1.1)]
    assert approx_kl.item() == pytest.approx(0.5 * sum(v * v for v in logs) / 3, abs=1e-6)


def test_policy_loss_gradient_is_zero_where_the_ratio_is_clipped():
    logprobs = torch.log(torch.tensor([[1.5, 1.0]])).requires_grad_(True)
    pg_loss, _, _ = policy_loss(logprobs, torch.zeros(1, 2), torch.tensor([[1.0, 1.0]]), torch.ones(1, 2), 0.2)
    pg_loss.backward()
    # d/dlogp of -A * r / 2 at r=1 is -0.5; the clipped token gets nothing
    assert close(logprobs.grad, [[0.0, -0.5]])


def test_clipped_value_loss_by_hand():
    vpreds = torch.tensor([[1.0, 0.0, 7.0]])
    old = torch.tensor([[0.5, 0.5, 7.0]])
    returns = torch.tensor([[1.0, 1.0, -7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    vf_loss, vf_clipfrac = value_loss(vpreds, old, returns, mask, cliprange_value=0.2)
    # clipped predictions [0.7, 0.3]; losses unclipped [0, 1], clipped [0.09, 0.49]; max [0.09, 1]
    assert vf_loss.item() == pytest.approx(0.5 * (0.09 + 1.0) / 2, abs=1e-6)
    assert vf_clipfrac.item() == pytest.approx(0.5)


def test_logprobs_use_the_sampling_temperature():
    logits = torch.tensor([[[0.0, math.log(3.0)]]])
    token = torch.tensor([[1]])
    assert logprobs_from_logits(logits, token, 1.0).item() == pytest.approx(math.log(0.75), abs=1e-6)
    root3 = math.sqrt(3.0)  # at temperature 2 the logits halve: p = e^(ln3/2) / (1 + e^(ln3/2))
    assert logprobs_from_logits(logits, token, 2.0).item() == pytest.approx(math.log(root3 / (1 + root3)), abs=1e-6)


def test_adaptive_kl_controller_moves_beta_towards_the_target_at_most_20_percent_per_horizon():
    ctl = KLController(beta=0.1, target=6.0, horizon=10_000)
    ctl.update(kl=12.0, n_episodes=16)  # error 1.0, clipped to 0.2
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.2 * 16 / 10_000))
    ctl = KLController(beta=0.1, target=6.0, horizon=10_000)
    ctl.update(kl=4.5, n_episodes=100)  # error -0.25, clipped to -0.2
    assert ctl.beta == pytest.approx(0.1 * (1 - 0.2 * 100 / 10_000))
    ctl = KLController(beta=0.1, target=6.0, horizon=1_000)
    ctl.update(kl=6.6, n_episodes=10)  # error 0.1, inside the clip
    assert ctl.beta == pytest.approx(0.1 * (1 + 0.1 * 10 / 1_000))
    restored = KLController(beta=1.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored == ctl


def test_fixed_kl_controller_never_changes_beta():
    ctl = KLController(beta=0.05, target=None)
    ctl.update(kl=100.0, n_episodes=1000)
    assert ctl.beta == 0.05


def test_ppo_config_round_trips_and_rejects_bad_values_with_clear_messages():
    cfg = PPOConfig(iterations=3, rollout_batch_size=8, mini_batch_size=4, grad_accum_steps=2)
    assert PPOConfig.from_dict(cfg.to_dict()) == cfg and cfg.micro_batch_size == 2
    with pytest.raises(ConfigError, match="unknown config key.*learning_rate"):
        PPOConfig.from_dict({"learning_rate": 1e-5})
    with pytest.raises(ConfigError, match="rollout_batch_size .*multiple of mini_batch_size"):
        PPOConfig(rollout_batch_size=10, mini_batch_size=4)
    with pytest.raises(ConfigError, match="mini_batch_size .*multiple of grad_accum_steps"):
        PPOConfig(mini_batch_size=8, grad_accum_steps=3)
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        PPOConfig(temperature=0)
    with pytest.raises(ConfigError, match="gamma must be in"):
        PPOConfig(gamma=1.5)
    with pytest.raises(ConfigError, match="target_kl must be > 0 or null"):
        PPOConfig.from_dict({"target_kl": -1})
    with pytest.raises(ConfigError, match="stop_tokens"):
        GenerateConfig.from_dict({"stop_tokens": "<eos>"})
    assert PPOConfig(target_kl=None).target_kl is None  # null means a fixed beta
