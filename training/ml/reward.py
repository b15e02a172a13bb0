"""Reward model: scalar head on a pretrained encoder/decoder, Bradley-Terry or rating regression.

`train()` is the entry point (data files in, saved model + metrics out); `fit()` is the training
loop itself, top to bottom, usable on an already loaded model.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .config import RewardConfig
from .data import (
    DataError,
    PairDataset,
    PairEncoder,
    RatingDataset,
    bucketed_batches,
    build_pair_dataset,
    build_rating_dataset,
    file_sha256,
    flatten_prompt,
    load_pair_records,
    load_rating_records,
    pad_rows,
    read_jsonl,
    shard_batches,
)
from .distributed import (
    Runtime,
    all_gather_lists,
    autocast,
    broadcast_object,
    maybe_no_sync,
    mean_across_ranks,
    setup_runtime,
    teardown_runtime,
)

Dataset = PairDataset | RatingDataset
ProgressFn = Callable[[int, int, float | None, float | None], None]  # (step, total_steps, loss, eta_seconds)
LogFn = Callable[[int, dict[str, float]], None]  # (step, metrics)
PhaseFn = Callable[[str], None]  # "load" | "train" | "eval" | "save" | "done"

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# The new model's scores of the snapshot's comparisons, next to its weights (see score_comparisons).
SCORES_FILE = "scores.jsonl"


class ModelLoadError(RuntimeError):
    """The base model or its tokenizer could not be loaded."""


def load_model_and_tokenizer(base: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(base)
        model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=1, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelLoadError(f"cannot load base model from {base}: {exc}") from exc
    if tokenizer.pad_token is None:
        # Decoder-only bases (GPT-2, Llama) ship without a pad token; eos is the usual stand-in.
        if tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        else:
            tokenizer.add_special_tokens({"pad_token": "[PAD]"})
            model.resize_token_embeddings(len(tokenizer))
    # Sequence-classification heads of decoder models pool the last non-pad token: they need this.
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_records(path: str | Path, cfg: RewardConfig) -> list[Any]:
    return load_pair_records(path) if cfg.objective == "pairwise" else load_rating_records(path)


def build_dataset(records: list[Any], tokenizer: Any, cfg: RewardConfig) -> Dataset:
    encoder = PairEncoder(tokenizer, cfg.max_length, cfg.min_prompt_tokens)
    if cfg.objective == "pairwise":
        return build_pair_dataset(records, encoder)
    return build_rating_dataset(records, encoder)


# ---------------------------------------------------------------------------- losses and metrics


def pairwise_loss(
    r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | None = None,
    center_coef: float | None = None,
) -> torch.Tensor:
    """-log sigmoid(r_c - r_r - margin), plus optional coef * mean((r_c + r_r)^2) centring."""
    diff = r_chosen - r_rejected  # (B,)
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff).mean()  # logsigmoid: no overflow for large reward gaps
    if center_coef:
        # The BT loss only sees differences, so rewards can drift; this pins their mean near zero.
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def expected_calibration_error(p_chosen: torch.Tensor, n_bins: int = 10) -> float:
    """ECE of p = sigmoid(r_c - r_r) read as P(chosen wins), against the human label, 10 equal bins.

    Each pair is counted in both orders, (p, 1) and (1 - p, 0): the label is always "chosen wins",
    so the one-sided version collapses to 1 - mean(p) and cannot see over-confidence. Symmetrised,
    it equals the usual top-label ECE of a binary classifier (confidence max(p, 1 - p)).
    """
    p = p_chosen.double().flatten()
    if p.numel() == 0:
        return float("nan")
    probs = torch.cat([p, 1 - p])  # (2N,)
    labels = torch.cat([torch.ones_like(p), torch.zeros_like(p)])  # (2N,)
    bins = (probs * n_bins).long().clamp(0, n_bins - 1)  # (2N,)
    ece = 0.0
    for b in range(n_bins):
        in_bin = bins == b
        if in_bin.any():
            gap = (probs[in_bin].mean() - labels[in_bin].mean()).abs().item()
            ece += in_bin.float().mean().item() * gap
    return ece


def compute_rewards(model: torch.nn.Module, batch: dict[str, torch.Tensor], rt: Runtime, bf16: bool) -> torch.Tensor:
    inputs = {k: batch[k].to(rt.device, non_blocking=True) for k in MODEL_INPUTS if k in batch}
    with autocast(rt, bf16):
        logits = model(**inputs).logits  # (rows, 1)
    return logits.squeeze(-1).float()  # (rows,)


def batch_loss(
    model: torch.nn.Module, batch: dict[str, torch.Tensor], cfg: RewardConfig, rt: Runtime
) -> tuple[torch.Tensor, float]:
    """(loss, accuracy-or-nan) for one micro-batch."""
    rewards = compute_rewards(model, batch, rt, cfg.bf16)  # (2B,) pairwise, (B,) regression
    if cfg.objective == "regression":
        return F.mse_loss(rewards, batch["rating"].to(rt.device)), float("nan")
    n = batch["margin"].shape[0]
    r_chosen, r_rejected = rewards[:n], rewards[n:]  # (B,), (B,)
    margin = batch["margin"].to(rt.device) if cfg.use_margin else None
    loss = pairwise_loss(r_chosen, r_rejected, margin, cfg.center_rewards_coefficient)
    return loss, (r_chosen > r_rejected).float().mean().item()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module, dataset: Dataset, cfg: RewardConfig, rt: Runtime | None = None
) -> dict[str, float]:
    """Eval metrics over the whole dataset; under DDP each rank scores a shard and results are gathered."""
    rt = rt or Runtime(device=next(model.parameters()).device)
    model = getattr(model, "module", model)  # bypass DDP: ranks may run different numbers of eval batches
    was_training = model.training
    model.eval()
    batches = bucketed_batches(dataset.lengths, cfg.eval_batch_size, 0, 0, 1, shuffle=False)
    local: list[tuple[float, ...]] = []
    for indices in shard_batches(batches, rt.rank, rt.world_size, pad=False):
        batch = dataset.collate(indices)
        rewards = compute_rewards(model, batch, rt, cfg.bf16).cpu()
        if isinstance(dataset, PairDataset):
            n = len(indices)
            local.extend(zip(rewards[:n].tolist(), rewards[n:].tolist(), batch["margin"].tolist(), strict=True))
        else:
            local.extend(zip(rewards.tolist(), batch["rating"].tolist(), strict=True))
    model.train(was_training)
    rows = torch.tensor(all_gather_lists(rt, local), dtype=torch.float64)  # (N, 3) pairwise, (N, 2) regression

    if isinstance(dataset, RatingDataset):
        pred, rating = rows[:, 0], rows[:, 1]  # (N,), (N,)
        return {
            "reward/loss": F.mse_loss(pred, rating).item(),
            "reward/mae": (pred - rating).abs().mean().item(),
            "reward/mean": pred.mean().item(),
            "reward/std": pred.std(unbiased=False).item(),
            "reward/count": float(len(pred)),
        }
    r_chosen, r_rejected, margin = rows[:, 0], rows[:, 1], rows[:, 2]  # (N,) each
    diff = r_chosen - r_rejected  # (N,)
    loss_diff = diff - margin if cfg.use_margin else diff
    all_rewards = torch.cat([r_chosen, r_rejected])  # (2N,)
    return {
        "reward/accuracy": (diff > 0).double().mean().item(),  # strict: ties count as wrong
        "reward/margin_mean": diff.mean().item(),
        "reward/loss": -F.logsigmoid(loss_diff).mean().item(),
        "reward/ece": expected_calibration_error(torch.sigmoid(diff)),
        "reward/mean": all_rewards.mean().item(),
        "reward/std": all_rewards.std(unbiased=False).item(),
        "reward/count": float(len(diff)),
    }


def lr_at(step: int, total_steps: int, warmup_steps: int, peak: float) -> float:
    """Linear warmup to peak, then linear decay towards zero; step is 0-based."""
    if step < warmup_steps:
        return peak * (step + 1) / (warmup_steps + 1)  # +1: the first step should not be a no-op at lr=0
    return peak * (total_steps - step) / max(1, total_steps - warmup_steps)


# ---------------------------------------------------------------------------- training loop


def fit(
    model: torch.nn.Module,
    train_ds: Dataset,
    eval_ds: Dataset | None,
    cfg: RewardConfig,
    rt: Runtime | None = None,
    progress: ProgressFn | None = None,
    log: LogFn | None = None,
    phase: PhaseFn | None = None,
) -> dict[str, float]:
    """Train `model` in place and return train + eval metrics. progress/log/phase fire on rank 0 only."""
    rt = rt or Runtime(device=next(model.parameters()).device)
    if not rt.is_main:
        progress = log = phase = None

    # 1. model in train mode, dropout off unless asked for, wrapped for DDP when distributed
    model.to(rt.device).train()
    if not cfg.dropout:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = 0.0
    ddp_model: torch.nn.Module = model
    if rt.distributed:
        device_ids = [rt.device.index] if rt.device.type == "cuda" else None
        ddp_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    # 2. AdamW; decay only on matrices (nanoGPT): biases and norm gains have no scale to regularise.
    # Fused on CPU too: torch's CPU default is a per-tensor Python loop, which on MiniLM (22M params,
    # half of them the word embeddings) cost ~1 s of a ~6 s step on 2 cores; the fused kernel ~0.1 s.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8,
                                  fused=rt.device.type in ("cuda", "cpu"))

    # 3. plan: every rank gets the same number of micro-batches (shard_batches pads)
    lengths = train_ds.lengths
    n_local = len(shard_batches(bucketed_batches(lengths, cfg.batch_size, cfg.seed, 0, cfg.bucket_size_multiplier),
                                rt.rank, rt.world_size))
    steps_per_epoch = math.ceil(n_local / cfg.grad_accum_steps)
    total_steps = steps_per_epoch * cfg.epochs
    warmup_steps = int(cfg.warmup_ratio * total_steps)

    # 4. train
    if phase:
        phase("train")
    if progress:
        progress(0, total_steps, None, None)
    step, t0 = 0, time.time()
    window_loss, window_acc, window_n = 0.0, 0.0, 0
    last_loss = float("nan")
    pairs_seen = 0
    for epoch in range(cfg.epochs):
        batches = bucketed_batches(lengths, cfg.batch_size, cfg.seed, epoch, cfg.bucket_size_multiplier)
        batches = shard_batches(batches, rt.rank, rt.world_size)
        for start in range(0, len(batches), cfg.grad_accum_steps):
            group = batches[start : start + cfg.grad_accum_steps]
            lr = lr_at(step, total_steps, warmup_steps, cfg.lr)
            for g in optimizer.param_groups:
                g["lr"] = lr

            step_loss, step_acc = 0.0, 0.0
            for i, indices in enumerate(group):
                batch = train_ds.collate(indices)  # pairwise: input_ids (2B, seq_len), chosen rows first
                with maybe_no_sync(ddp_model, skip_sync=i < len(group) - 1):
                    loss, acc = batch_loss(ddp_model, batch, cfg, rt)
                    (loss / len(group)).backward()
                step_loss += loss.item() / len(group)
                step_acc += acc / len(group)
                pairs_seen += len(indices)

            # the norm of all-reduced grads is the same on every rank, so all ranks stop together
            max_norm = cfg.max_grad_norm if cfg.max_grad_norm is not None else float("inf")
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm).item()
            if not math.isfinite(grad_norm):
                raise FloatingPointError(f"non-finite gradients at step {step + 1} (loss {step_loss}); try a lower lr")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            window_loss, window_acc, window_n = window_loss + step_loss, window_acc + step_acc, window_n + 1
            if step % cfg.log_every == 0 or step == total_steps:
                # collective on every rank at the same steps; only rank 0 reports
                last_loss, train_acc = mean_across_ranks(rt, [window_loss / window_n, window_acc / window_n])
                if log:
                    logged = {"train/loss": last_loss, "train/lr": lr, "train/grad_norm": grad_norm,
                              "train/epoch": epoch + (start + len(group)) / max(1, len(batches))}
                    if cfg.objective == "pairwise":
                        logged["train/accuracy"] = train_acc
                    log(step, logged)
                window_loss, window_acc, window_n = 0.0, 0.0, 0
            if progress:
                elapsed = time.time() - t0
                progress(step, total_steps, step_loss, elapsed / step * (total_steps - step))

    train_seconds = time.time() - t0
    metrics: dict[str, float] = {
        "train/loss": last_loss,
        "train/steps": float(total_steps),
        "train/seconds": train_seconds,
        "train/pairs_per_second": pairs_seen * rt.world_size / max(train_seconds, 1e-9),
    }

    # 5. evaluate
    if eval_ds is not None:
        if phase:
            phase("eval")
        metrics.update(evaluate(model, eval_ds, cfg, rt))
    return metrics


def train(
    cfg: RewardConfig,
    train_path: str | Path,
    eval_path: str | Path,
    out_dir: str | Path | None = None,
    parent: str | None = None,
    progress: ProgressFn | None = None,
    log: LogFn | None = None,
    phase: PhaseFn | None = None,
    score_path: str | Path | None = None,
    score_seconds: float | None = None,
) -> dict[str, float]:
    """Load data and base model, fit, evaluate, and (rank 0) save to out_dir. Returns the metrics.

    With `score_path` (comparisons, see `load_comparison_records`), rank 0 then scores them with the
    trained model into out_dir/scores.jsonl, for at most `score_seconds`; a failure there is
    reported in the log and the metrics ("score/failed") and does not undo the training."""
    from .checkpoint import build_metadata, save_reward_model

    rt = setup_runtime(cfg.device)
    if not rt.is_main:
        progress = log = phase = None
    try:
        # 1. hash and validate the data before the (slow) model load, so bad input fails fast
        if phase:
            phase("load")
        train_records, eval_records = load_records(train_path, cfg), load_records(eval_path, cfg)
        data_sha256, eval_sha256 = file_sha256(train_path), file_sha256(eval_path)
        to_score = load_comparison_records(score_path) if score_path is not None else None

        # 2. base model; identical seed on every rank so the fresh head starts the same everywhere
        torch.manual_seed(cfg.seed)
        model, tokenizer = load_model_and_tokenizer(cfg.base_model)
        limits = [cfg.max_length, getattr(model.config, "max_position_embeddings", None) or cfg.max_length]
        if 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
            limits.append(tokenizer.model_max_length)
        cfg = cfg.replace(max_length=min(limits))
        torch.manual_seed(cfg.seed + rt.rank)

        # 3. tokenize
        train_ds = build_dataset(train_records, tokenizer, cfg)
        eval_ds = build_dataset(eval_records, tokenizer, cfg)

        # 4. fit + evaluate
        metrics = fit(model, train_ds, eval_ds, cfg, rt, progress=progress, log=log, phase=phase)

        # 5. save: rank 0 writes, the others wait so nobody tears down the group mid-write
        error = None
        if out_dir is not None and rt.is_main:
            if phase:
                phase("save")
            meta = build_metadata(cfg, metrics, data_sha256, eval_sha256, parent, rt,
                                  n_train=len(train_ds), n_eval=len(eval_ds))
            try:
                save_reward_model(out_dir, model, tokenizer, meta)
            except Exception as exc:  # reported after the barrier so every rank exits consistently
                error = f"{type(exc).__name__}: {exc}"
        error = broadcast_object(rt, error)
        if error:
            raise RuntimeError(f"saving to {out_dir} failed: {error}")

        # 6. score the comparisons (rank 0; the others wait at the teardown barrier)
        if to_score is not None and out_dir is not None and rt.is_main:
            if phase:
                phase("score")
            try:
                metrics.update(
                    score_comparisons(model, tokenizer, cfg, to_score, Path(out_dir) / SCORES_FILE, rt, score_seconds)
                )
            except (RuntimeError, OSError, ValueError) as exc:
                print(f"scoring the comparisons failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
                metrics["score/failed"] = 1.0
        if phase:
            phase("done")
        teardown_runtime(rt)
        return metrics
    except BaseException:
        teardown_runtime(rt, barrier=False)  # a peer may be stuck in a collective: do not wait for it
        raise


def evaluate_saved(model_dir: str | Path, eval_path: str | Path, device: str = "auto") -> dict[str, float]:
    """Held-out metrics of an already trained model on another eval file, with the config it was
    trained with (so tokenisation matches). Promotion uses it to score the active model on the new
    model's eval pairs: the two are compared on the same data, not each on its own split."""
    from .checkpoint import load_reward_model

    rt = setup_runtime(device)
    loaded = load_reward_model(model_dir, device=rt.device)
    saved = dict(loaded.metadata.get("config", {}))
    saved["base_model"] = str(model_dir)
    cfg = RewardConfig.from_dict({k: v for k, v in saved.items() if k in RewardConfig.__dataclass_fields__})
    dataset = build_dataset(load_records(eval_path, cfg), loaded.tokenizer, cfg)
    return evaluate(loaded.model, dataset, cfg, rt)


# ---------------------------------------------------------------------------- scoring comparisons


@dataclass
class ComparisonRecord:
    comparison_id: int
    prompt: str
    response_a: str
    response_b: str


def load_comparison_records(path: str | Path) -> list[ComparisonRecord]:
    """{"comparison_id": int, "prompt": str | chat turns, "response_a": str, "response_b": str}
    per line (other fields, such as "split", are ignored)."""
    records = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        cid = obj.get("comparison_id")
        if not isinstance(cid, int) or isinstance(cid, bool):
            raise DataError(f"{where}: 'comparison_id' must be an integer")
        texts = [obj.get(k) for k in ("response_a", "response_b")]
        if not all(isinstance(t, str) for t in texts):
            raise DataError(f"{where}: 'response_a' and 'response_b' must be strings")
        records.append(ComparisonRecord(cid, flatten_prompt(obj.get("prompt"), where), *texts))
    return records


@torch.no_grad()
def score_comparisons(
    model: torch.nn.Module,
    tokenizer: Any,
    cfg: RewardConfig,
    records: list[ComparisonRecord],
    out_path: str | Path,
    rt: Runtime | None = None,
    max_seconds: float | None = None,
    chunk: int = 256,
) -> dict[str, float]:
    """Scores both responses of each comparison with the model, tokenised as in training, and writes
    scores.jsonl: one {"comparison_id", "score_a", "score_b"} line per comparison, raw rewards
    (the model's probability that A is preferred is sigmoid(score_a - score_b)).

    Comparisons are scored in the order given (a reward run puts its eval side first) in chunks of
    `chunk`, length-bucketed within a chunk; after `max_seconds` it stops at the end of a chunk, so
    a big project costs a bounded time and keeps what was scored. The file is written under a
    temporary name and renamed when complete, so a reader never sees half of it."""
    rt = rt or Runtime(device=next(model.parameters()).device)
    was_training = model.training
    model.eval()
    started = time.time()
    encoder = PairEncoder(tokenizer, cfg.max_length, cfg.min_prompt_tokens)
    out_path = Path(out_path)
    partial = out_path.with_name(out_path.name + ".partial")
    scored = 0
    with partial.open("w", encoding="utf-8") as out:
        for start in range(0, len(records), chunk):
            if max_seconds is not None and time.time() - started > max_seconds:
                break
            part = records[start : start + chunk]
            prompts = [r.prompt for r in part]
            rows = encoder.encode(prompts, [r.response_a for r in part]) + encoder.encode(
                prompts, [r.response_b for r in part]
            )  # a rows, then b rows
            lengths = [max(len(rows[i][0]), len(rows[i + len(part)][0])) for i in range(len(part))]
            scores = [0.0] * len(rows)
            for indices in bucketed_batches(lengths, cfg.eval_batch_size, 0, 0, 1, shuffle=False):
                taken = list(indices) + [i + len(part) for i in indices]
                batch = pad_rows([rows[i] for i in taken], encoder.pad_id, encoder.use_token_types)
                for i, value in zip(taken, compute_rewards(model, batch, rt, cfg.bf16).cpu().tolist(), strict=True):
                    scores[i] = value
            for i, record in enumerate(part):
                line = {"comparison_id": record.comparison_id, "score_a": scores[i], "score_b": scores[i + len(part)]}
                out.write(json.dumps(line) + "\n")
            scored += len(part)
    partial.replace(out_path)
    model.train(was_training)
    return {
        "score/comparisons": float(scored),
        "score/available": float(len(records)),
        "score/seconds": time.time() - started,
    }


def score_saved(
    model_dir: str | Path, data_path: str | Path, out_path: str | Path, max_seconds: float | None = None,
    device: str = "auto",
) -> dict[str, float]:
    """`score_comparisons` with a saved reward model and the config it was trained with."""
    from .checkpoint import load_reward_model

    records = load_comparison_records(data_path)
    rt = setup_runtime(device)
    loaded = load_reward_model(model_dir, device=rt.device)
    saved = dict(loaded.metadata.get("config", {}))
    saved["base_model"] = str(model_dir)
    cfg = RewardConfig.from_dict({k: v for k, v in saved.items() if k in RewardConfig.__dataclass_fields__})
    return score_comparisons(loaded.model, loaded.tokenizer, cfg, records, out_path, rt, max_seconds)
