"""PPO for causal LMs against a reward model (framework-free: torch + transformers, no Django).

`train()` is the whole loop, top to bottom, in numbered steps; the arithmetic (KL rewards, GAE,
whitening, clipped losses, KL controller) lives in ppo_core as pure, tested functions.

Cost per iteration, in forward-pass equivalents of the rollout batch: sampling (prefill + one cached step
per token), which also yields the old log-probs and values (no second pass of the policy); one no-grad
pass of the reference (skipped in the first iteration, where the policy still is the reference); the
reward model; and ppo_epochs x (forward + backward) of the policy, which dominates.

Models:
- policy: the causal LM being trained; kept in eval mode throughout (dropout off), which does not
  stop gradients;
- reference: a frozen copy of the starting policy (or another model with the same tokenizer); the
  per-token KL penalty -beta * (log pi - log pi_ref) keeps the policy near it;
- value model: a linear head on the policy's last hidden state (ValueHead). Why not a separate critic
  initialised from the reward model, as in OpenAI's original code and TRL: the reward model here may be a
  different architecture with a different tokenizer (MiniLM by default), so it cannot give one value
  per policy token; and a second copy of the policy as critic doubles memory and the forward/backward
  cost of every PPO step, which on a CPU is the whole budget. The head is zero-initialised: rewards are
  normalised to mean 0, so an initial value of 0 everywhere is the unbiased guess and the first
  advantages are just the (whitened) returns. It learns at its own rate, value_lr (1e-3): a fresh linear
  head under Adam moves its output by about lr x sum|h| per step, and at the policy's 2e-5 it would still
  be near 0 after a whole run (measured on SmolLM2: 0.08 against returns of 0.7 after 16 steps at 1e-4),
  leaving the mean score in every advantage; vf_coef keeps its gradient into the shared body small;
- reward model: any function (prompts, response texts, finished flags) -> scores. With a saved reward model the
  policy's responses are decoded to text and re-tokenised by the reward model's own tokenizer, so the
  two may use different vocabularies.
"""

from __future__ import annotations

import inspect
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .distributed import Runtime, autocast
from .generate import (
    encode_prompt,
    left_pad,
    pad_id_of,
    position_ids_from_mask,
    sample_rollout,
    stop_token_ids,
    uses_chat_template,
)
from .ppo_checkpoint import find_checkpoint, load_checkpoint, save_checkpoint, save_final
from .ppo_config import PPOConfig
from .ppo_core import (
    KLController,
    entropy_from_logits,
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
from .ppo_eval import evaluate_as_configured

RewardFn = Callable[[list[Any], list[str], list[bool]], list[float]]  # (prompts, texts, finished) -> raw scores
ProgressFn = Callable[[int, int, float | None, float | None], None]  # (iteration, total, loss, eta_seconds)
LogFn = Callable[[int, dict[str, float]], None]
PhaseFn = Callable[[str], None]


class ValueHead(torch.nn.Module):
    """V(s_t) = w . h_t + b on the policy's final hidden state; zero-initialised (see module docstring)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.float()).squeeze(-1)  # (..., hidden) -> (...)


@dataclass
class ForwardOut:
    logprobs: torch.Tensor  # (B, R)
    values: torch.Tensor | None  # (B, R)
    entropy: torch.Tensor | None  # (B, R)


def forward(
    model: Any,
    value_head: ValueHead | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    responses: torch.Tensor,
    temperature: float,
    entropy: bool = False,
) -> ForwardOut:
    """Log-probs (and values) of the response tokens, the last R columns of left-padded input_ids (B, P + R).

    Position ids count real tokens only, so a left-padded prompt sees the positions it would unpadded.
    Logits at column t predict token t + 1, hence the shift by one: the value of each response token is
    read at the state that chose it.
    """
    R = responses.shape[1]
    kwargs: dict[str, Any] = {"output_hidden_states": value_head is not None, "use_cache": False}
    if "logits_to_keep" in inspect.signature(model.forward).parameters:
        kwargs["logits_to_keep"] = R + 1  # skip the (B, P, V) prompt logits: the largest tensor by far
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids_from_mask(attention_mask),
        **kwargs,
    )
    logits = out.logits[:, -R - 1 : -1]  # (B, R, V)
    logprobs = logprobs_from_logits(logits, responses, temperature)  # (B, R)
    values = value_head(out.hidden_states[-1][:, -R - 1 : -1]) if value_head is not None else None  # (B, R)
    ent = None
    if entropy:
        with torch.no_grad():
            ent = entropy_from_logits(logits.detach() / temperature)  # (B, R)
    return ForwardOut(logprobs, values, ent)


def trimmed(
    rows: torch.Tensor,
    query_responses: torch.Tensor,
    attention_mask: torch.Tensor,
    context_length: int,
    lengths: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows of the rollout without the columns they all pad: prompt pads on the left, response pads on
    the right. Cuts the compute of each micro-batch to its own longest prompt and response."""
    am = attention_mask[rows]  # (b, P + R)
    left = int((am[:, :context_length].sum(dim=0) > 0).nonzero()[0])
    r = int(lengths[rows].max())
    return query_responses[rows, left : context_length + r], am[:, left : context_length + r], r


def reward_model_fn(loaded: Any, batch_size: int = 16) -> tuple[RewardFn, float, float]:
    """(score function, mean, std) of a saved reward model (checkpoint.load_reward_model).

    The mean/std are those the reward trainer measured on its evaluation responses; missing ones
    (an old checkpoint) fall back to 0/1, i.e. no normalisation.
    """
    meta = loaded.metadata
    mean = meta.get("reward_mean")
    std = meta.get("reward_std")
    mean = float(mean) if isinstance(mean, (int, float)) and math.isfinite(mean) else 0.0
    std = float(std) if isinstance(std, (int, float)) and math.isfinite(std) and std > 0 else 1.0
    return (lambda prompts, texts, finished: loaded.score(prompts, texts, batch_size=batch_size)), mean, std


def same_weights(a: Any, b: Any) -> bool:
    """Whether two models hold exactly the same tensors (names, shapes, values)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys():
        return False
    return all(sa[k].shape == sb[k].shape and torch.equal(sa[k], sb[k]) for k in sa)


def _iteration_prompts(n_prompts: int, iteration: int, batch: int, seed: int) -> list[int]:
    """Prompt indices of one iteration: consecutive slices of seeded shuffles of all prompts (one
    shuffle per pass). A function of (seed, iteration) only, so a resumed run picks the same prompts."""
    out: list[int] = []
    position = iteration * batch
    while len(out) < batch:
        epoch, offset = divmod(position, n_prompts)
        order = list(range(n_prompts))
        random.Random(f"{seed}-prompts-{epoch}").shuffle(order)
        take = order[offset : offset + batch - len(out)]
        out.extend(take)
        position += len(take)
    return out


def train(
    cfg: PPOConfig,
    policy: Any,
    tokenizer: Any,
    reference: Any,
    reward_fn: RewardFn,
    prompts: list[Any],
    reward_mean: float = 0.0,
    reward_std: float = 1.0,
    out_dir: str | Path | None = None,
    resume_from: str | Path | None = None,
    metadata: dict[str, Any] | None = None,
    progress: ProgressFn | None = None,
    log: LogFn | None = None,
    phase: PhaseFn | None = None,
    stop_after: int | None = None,
    eval_prompts: list[Any] | None = None,
    before_iteration: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Run cfg.iterations PPO iterations on `policy` in place; returns the last iteration's metrics.

    With out_dir, a resumable checkpoint is written every cfg.checkpoint_every iterations and the final
    policy at the end (ppo_checkpoint has the layout). stop_after ends the run after that many
    iterations without the final save, as if the worker had died there (tests use it). With
    eval_prompts, the final policy is evaluated on them (ppo_eval) and the eval/* keys join the
    returned metrics and the saved metadata. before_iteration(i) runs before iteration i and before the
    evaluation (i = cfg.iterations): the command line re-picks torch's threads there.
    """
    # 1. devices, threads, seeds, frozen reference, value head, optimizer (fused AdamW)
    use_cuda = torch.cuda.is_available() if cfg.device == "auto" else cfg.device == "cuda"
    rt = Runtime(device=torch.device("cuda" if use_cuda else "cpu"))
    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # for the process: train() owns it while it runs
    torch.manual_seed(cfg.seed)
    policy.to(rt.device).eval()  # eval: no dropout; gradients still flow
    reference.to(rt.device).eval().requires_grad_(False)
    hidden_size = policy.get_output_embeddings().weight.shape[1]
    value_head = ValueHead(hidden_size).to(rt.device)
    body = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in body if p.dim() >= 2], "weight_decay": cfg.weight_decay, "lr": cfg.lr},
            {"params": [p for p in body if p.dim() < 2], "weight_decay": 0.0, "lr": cfg.lr},
            {"params": list(value_head.parameters()), "weight_decay": 0.0, "lr": cfg.value_lr},
        ],
        eps=cfg.adam_eps,
        # fused on CPU too: torch's CPU default steps each of the ~270 tensors in a Python loop
        fused=rt.device.type in ("cpu", "cuda"),
    )
    peak_lrs = [g["lr"] for g in optimizer.param_groups]
    kl_ctl = KLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    sampler = torch.Generator(device=rt.device).manual_seed(cfg.seed)
    stop_ids = stop_token_ids(tokenizer, policy, cfg.stop_tokens)
    pad_id = pad_id_of(tokenizer, stop_ids)

    # 2. prompts, tokenised once (chat template when the policy has one, left-truncated)
    chat = uses_chat_template(tokenizer, cfg.chat_template)
    encoded = [encode_prompt(tokenizer, p, cfg.max_prompt_tokens, chat, f"prompt {i}") for i, p in enumerate(prompts)]

    # 3. resume: weights, optimizer, KL controller, sampler RNG and history from the last checkpoint
    start, history = 0, []
    if resume_from is not None:
        if phase:
            phase("resume")
        ckpt = find_checkpoint(resume_from)
        state = load_checkpoint(ckpt, policy, value_head, optimizer, cfg.to_dict())
        start, history = int(state["iteration"]), list(state["history"])
        kl_ctl.load_state_dict(state["kl_controller"])
        sampler.set_state(state["sampler_rng"])
        torch.set_rng_state(state["torch_rng"])
    out_dir = Path(out_dir) if out_dir is not None else None
    ref_is_policy = start == 0 and same_weights(policy, reference)

    if phase:
        phase("train")
    if progress:
        progress(start, cfg.iterations, None, None)
    B, t_run = cfg.rollout_batch_size, time.time()
    metrics: dict[str, Any] = history[-1] if history else {}
    for iteration in range(start, cfg.iterations):
        if before_iteration:
            before_iteration(iteration)
        t0 = time.time()
        # 4. anneal the learning rate linearly towards 0 over the run (per iteration, as CleanRL)
        frac = 1.0 - iteration / cfg.iterations
        for group, peak in zip(optimizer.param_groups, peak_lrs, strict=True):
            group["lr"] = peak * frac

        # 5. rollout: sample a response for each of B prompts, at temperature, top_k=0, top_p=1
        idx = _iteration_prompts(len(prompts), iteration, B, cfg.seed)
        batch_prompts = [prompts[i] for i in idx]
        queries, prompt_mask = left_pad([encoded[i] for i in idx], pad_id, rt.device)  # (B, P)
        P = queries.shape[1]
        with torch.no_grad(), autocast(rt, cfg.bf16):
            rollout = sample_rollout(
                policy,
                queries,
                prompt_mask,
                cfg.max_new_tokens,
                cfg.temperature,
                stop_ids,
                pad_id,
                sampler,
                logprobs=True,
                value_head=value_head,
            )  # (B, R) each
        t_sampled = time.time()

        # 6. truncate at the first stop token (kept: ending is an action too), pad after it
        responses = rollout.tokens
        lengths, finished = first_stop_lengths(responses.cpu(), stop_ids)  # (B,), (B,)
        lengths, finished = lengths.to(rt.device), finished.to(rt.device)
        R = int(lengths.max())
        responses = responses[:, :R]  # (B, R)
        mask = lengths_to_mask(lengths, R)  # (B, R)
        responses = torch.where(mask.bool(), responses, torch.full_like(responses, pad_id))
        query_responses = torch.cat([queries, responses], dim=1)  # (B, P + R)
        attention_mask = torch.cat([prompt_mask, mask.long()], dim=1)  # (B, P + R)

        # 7. old log-probs and values: those the sampler read off its own forward passes (no second pass
        #    of the policy); reference log-probs in no-grad chunks, except while the policy still is the
        #    reference (the first iteration of a run that starts from it), where they are the same numbers
        logprobs = rollout.logprobs[:, :R] * mask  # (B, R)
        values = rollout.values[:, :R] * mask  # (B, R)
        if iteration == 0 and ref_is_policy:
            ref_logprobs = logprobs.clone()
        else:
            ref_logprobs = torch.zeros(B, R, device=rt.device)
            with torch.no_grad(), autocast(rt, cfg.bf16):
                for s in range(0, B, cfg.forward_batch_size):
                    rows = torch.arange(s, min(B, s + cfg.forward_batch_size), device=rt.device)
                    ids, am, r = trimmed(rows, query_responses, attention_mask, P, lengths)
                    ref_logprobs[rows, :r] = forward(
                        reference, None, ids, am, responses[rows, :r], cfg.temperature
                    ).logprobs
            ref_logprobs = ref_logprobs * mask
        t_forward = time.time()

        # 8. score: decode, let the reward model re-tokenise, normalise with its saved mean/std, clip,
        #    penalise responses that never ended
        texts = tokenizer.batch_decode(
            [responses[i, : lengths[i]].tolist() for i in range(B)], skip_special_tokens=True
        )
        raw = reward_fn(batch_prompts, texts, finished.tolist())
        raw_scores = torch.tensor(raw, dtype=torch.float32, device=rt.device)  # (B,)
        mean, std = (reward_mean, reward_std) if cfg.normalize_reward else (0.0, 1.0)
        scores = normalize_scores(raw_scores, mean, std, cfg.reward_clip, finished, cfg.missing_eos_penalty)  # (B,)

        t_scored = time.time()

        # 9. per-token rewards (-beta * KL, score at the last real token), GAE, whitened advantages
        rewards, kl = rewards_with_kl(scores, logprobs, ref_logprobs, mask, kl_ctl.beta)  # (B, R), (B, R)
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)  # (B, R), (B, R)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 10. PPO epochs over shuffled mini-batches, gradient accumulation over micro-batches
        stats: dict[str, list[float]] = {
            k: []
            for k in ("pg_loss", "vf_loss", "clipfrac", "vf_clipfrac", "approx_kl", "entropy", "ratio", "grad_norm")
        }
        shuffler = torch.Generator().manual_seed(cfg.seed * 1_000_003 + iteration)
        for _epoch in range(cfg.ppo_epochs):
            order = torch.randperm(B, generator=shuffler).to(rt.device)
            for mb_start in range(0, B, cfg.mini_batch_size):
                mini = order[mb_start : mb_start + cfg.mini_batch_size]
                for micro_start in range(0, len(mini), cfg.micro_batch_size):
                    rows = mini[micro_start : micro_start + cfg.micro_batch_size]
                    ids, am, r = trimmed(rows, query_responses, attention_mask, P, lengths)
                    m = mask[rows, :r]  # (b, r)
                    with autocast(rt, cfg.bf16):
                        out = forward(policy, value_head, ids, am, responses[rows, :r], cfg.temperature, entropy=True)
                    pg_loss, clipfrac, approx_kl = policy_loss(
                        out.logprobs, logprobs[rows, :r], advantages[rows, :r], m, cfg.cliprange
                    )
                    vf_loss, vf_clipfrac = value_loss(
                        out.values, values[rows, :r], returns[rows, :r], m, cfg.cliprange_value
                    )
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    (loss / cfg.grad_accum_steps).backward()
                    with torch.no_grad():
                        ratio = masked_mean(torch.exp(out.logprobs - logprobs[rows, :r]), m)
                    for key, value in (
                        ("pg_loss", pg_loss),
                        ("vf_loss", vf_loss),
                        ("clipfrac", clipfrac),
                        ("vf_clipfrac", vf_clipfrac),
                        ("approx_kl", approx_kl),
                        ("entropy", masked_mean(out.entropy, m)),
                        ("ratio", ratio),
                    ):
                        stats[key].append(float(value.detach()))
                max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
                params = [p for g in optimizer.param_groups for p in g["params"]]
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
                if not math.isfinite(grad_norm):
                    raise FloatingPointError(f"non-finite gradients in iteration {iteration + 1}; try a lower lr")
                stats["grad_norm"].append(grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

        t_updated = time.time()

        # 11. adapt beta to the measured KL (summed over each response, averaged over the batch)
        mean_kl = float(kl.sum(dim=1).mean())
        beta_used = kl_ctl.beta
        kl_ctl.update(mean_kl, B)

        # 12. metrics, every iteration
        seconds = time.time() - t0
        n_tokens = mask.sum(dim=1)  # (B,)
        metrics = {
            "iteration": float(iteration + 1),
            "reward/mean": float(raw_scores.mean()),
            "reward/std": float(raw_scores.std(unbiased=False)),
            "reward/normalized_mean": float(scores.mean()),
            "ppo/rlhf_reward": float((scores - beta_used * kl.sum(dim=1)).mean()),
            "ppo/kl": mean_kl,
            "ppo/beta": beta_used,
            "ppo/lr": optimizer.param_groups[0]["lr"],
            "ppo/advantage_mean": float(masked_mean(advantages, mask)),
            "ppo/return_mean": float(masked_mean(returns, mask)),
            "ppo/value_mean": float(masked_mean(values, mask)),
            **{f"ppo/{k}": sum(v) / len(v) for k, v in stats.items() if k not in ("pg_loss", "vf_loss")},
            "ppo/policy_loss": sum(stats["pg_loss"]) / len(stats["pg_loss"]),
            "ppo/value_loss": sum(stats["vf_loss"]) / len(stats["vf_loss"]),
            "response/length_mean": float(n_tokens.float().mean()),
            "response/finished_share": float(finished.float().mean()),
            "time/iteration_seconds": seconds,
            "time/threads": float(torch.get_num_threads()),
            "time/sample_seconds": t_sampled - t0,
            "time/forward_seconds": t_forward - t_sampled,
            "time/score_seconds": t_scored - t_forward,
            "time/update_seconds": t_updated - t_scored,
            "time/episodes_per_second": B / max(seconds, 1e-9),
        }
        history.append(metrics)
        if log:
            log(iteration + 1, metrics)
        if progress:
            done = iteration + 1 - start
            progress(
                iteration + 1,
                cfg.iterations,
                metrics["ppo/policy_loss"],
                (time.time() - t_run) / done * (cfg.iterations - iteration - 1),
            )

        # 13. resumable checkpoint (policy, value head, optimizer, KL controller, RNG, iteration)
        last = iteration + 1 == cfg.iterations
        if out_dir is not None and not last and (iteration + 1) % cfg.checkpoint_every == 0:
            if phase:
                phase("checkpoint")
            save_checkpoint(
                out_dir,
                iteration + 1,
                policy,
                tokenizer,
                value_head,
                optimizer,
                {
                    "history": history,
                    "kl_controller": kl_ctl.state_dict(),
                    "sampler_rng": sampler.get_state(),
                    "torch_rng": torch.get_rng_state(),
                    "config": cfg.to_dict(),
                },
            )
            if phase:
                phase("train")
        if stop_after is not None and iteration + 1 >= stop_after:
            return metrics

    # 14. evaluation of the final policy on the fixed evaluation prompts (bounded by eval_time_limit_s)
    evaluation = None
    if eval_prompts:
        if phase:
            phase("evaluate")
        if before_iteration:
            before_iteration(cfg.iterations)
        eval_metrics, evaluation = evaluate_as_configured(cfg, policy, tokenizer, reference, reward_fn, eval_prompts)
        metrics = {**metrics, **eval_metrics}

    # 15. the final policy
    if out_dir is not None:
        if phase:
            phase("save")
        meta = {**(metadata or {}), "metrics": metrics, "config": cfg.to_dict(), "kl_controller": kl_ctl.state_dict()}
        if evaluation is not None:
            meta["evaluation"] = evaluation
        save_final(out_dir, policy, tokenizer, value_head, meta, history)
    if phase:
        phase("done")
    return metrics
