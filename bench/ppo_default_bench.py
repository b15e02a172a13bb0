"""One default PPO run of the embedded setup, as the loop starts it, timed, with the reward before and after.

The embedded setup: the policy is SmolLM2-135M-Instruct (`--policy embedded`), the reward model the
bundled MiniLM-L6 trained by our reward trainer on HH-harmless (built once and cached under --out,
with `python -m training.ml reward` on its defaults). The PPO run is `python -m training.ml ppo` with
no config overrides, in a subprocess started the way training/runner.py starts it (no OMP_NUM_THREADS:
the trainer picks its threads), on 64 HH prompts, with 32 other HH prompts as the fixed evaluation set.

    .venv/bin/python bench/ppo_default_bench.py [--seeds 1] [--out var/bench/ppo-default]

Reported per run: the wall time of the whole command (loading, training, evaluation, saving), the
trainer's own per-iteration metrics (reward, KL), and the evaluation of ppo_eval on the fixed prompts
for the starting policy and for the trained one: mean reward-model score with its 95% interval, the
paired per-prompt gain with its standard error (same prompts, same sampling seed), and the KL.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ppo_bench import paired_gain  # bench/ is on sys.path when a bench script runs

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"
N_TRAIN_PROMPTS, N_EVAL_PROMPTS = 64, 32


def bucket(key: str) -> int:
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") % 100


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def prepare(out: Path) -> tuple[Path, Path, Path, Path]:
    """(reward train pairs, reward eval pairs, PPO prompts, eval prompts), split by a hash of the line
    index as training/snapshot.py splits comparisons (20% eval). The PPO and evaluation prompts are
    distinct prompts of the reward model's eval split."""
    rows = [json.loads(line) for line in HH.read_text().splitlines() if line.strip()]
    train = [r for i, r in enumerate(rows) if bucket(f"comparison:{i}") >= 20]
    held = [r for i, r in enumerate(rows) if bucket(f"comparison:{i}") < 20]
    prompts, seen = [], set()
    for r in held:
        if r["prompt"] not in seen:
            seen.add(r["prompt"])
            prompts.append(r["prompt"])
    ppo = [{"id": i, "prompt": p} for i, p in enumerate(prompts[:N_TRAIN_PROMPTS])]
    ev = [{"id": i, "prompt": p} for i, p in enumerate(prompts[N_TRAIN_PROMPTS : N_TRAIN_PROMPTS + N_EVAL_PROMPTS])]
    return (
        write_jsonl(out / "reward-train.jsonl", train),
        write_jsonl(out / "reward-eval.jsonl", held),
        write_jsonl(out / "ppo-prompts.jsonl", ppo),
        write_jsonl(out / "eval-prompts.jsonl", ev),
    )


def reward_model(out: Path, train: Path, held: Path) -> Path:
    from training.bases import resolve_base

    target = out / "reward-minilm"
    if (target / "metadata.json").is_file():
        return target
    base = resolve_base("bundled:all-MiniLM-L6-v2")
    print(f"training the MiniLM reward model on {train.name} (once)", flush=True)
    cmd = [sys.executable, "-m", "training.ml", "reward", "--data", str(train), "--eval", str(held)]
    cmd += ["--base", str(base), "--out", str(target)]
    done = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    print(f"  reward model: {done.stdout.strip()}", flush=True)
    return target


def evaluate_start(policy_dir: str, rm: Path, eval_prompts: Path) -> dict:
    """The starting policy on the evaluation prompts, exactly as the PPO command evaluates its result."""
    from training.ml.checkpoint import load_reward_model
    from training.ml.cli_ppo import read_prompts, set_threads
    from training.ml.policy import load_policy
    from training.ml.ppo import reward_model_fn
    from training.ml.ppo_config import PPOConfig
    from training.ml.ppo_eval import evaluate_as_configured

    cfg = PPOConfig()
    set_threads(cfg.threads)  # as the PPO command picks them
    policy, tokenizer = load_policy(policy_dir)
    reference, _ = load_policy(policy_dir)
    score, _, _ = reward_model_fn(load_reward_model(rm), cfg.forward_batch_size)
    prompts, _ = read_prompts(str(eval_prompts))
    metrics, details = evaluate_as_configured(cfg, policy, tokenizer, reference, score, prompts)
    return {**metrics, "scores": details["scores"], "seconds": details["seconds"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=1, help="PPO runs, seeds 42, 43, ... (42 is the default)")
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "ppo-default"))
    parser.add_argument("--cache-dir", default=str(ROOT / "var" / "artifacts"))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    from training.ml.policy import resolve_policy

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train, held, ppo_prompts, eval_prompts = prepare(out)
    rm = reward_model(out, train, held)
    rm_meta = json.loads((rm / "metadata.json").read_text())
    policy_dir = resolve_policy("embedded", args.cache_dir)
    print("evaluating the starting policy", flush=True)
    start = evaluate_start(policy_dir, rm, eval_prompts)
    print(
        f"  start: reward {start['eval/reward/mean']:.3f} "
        f"[{start['eval/reward/ci_low']:.3f}, {start['eval/reward/ci_high']:.3f}] in {start['seconds']:.0f} s",
        flush=True,
    )
    report = {
        "reward_model": {k: rm_meta.get(k) for k in ("reward_mean", "reward_std", "metrics")},
        "start": start,
        "runs": [],
    }
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}  # as the runner starts it
    for seed in range(42, 42 + args.seeds):
        run_out = out / f"policy-seed{seed}"
        if run_out.exists():
            import shutil

            shutil.rmtree(run_out)
        config = {} if seed == 42 else {"seed": seed}
        cmd = [sys.executable, "-m", "training.ml", "ppo", "--policy", "embedded", "--reward", str(rm)]
        cmd += ["--prompts", str(ppo_prompts), "--eval-prompts", str(eval_prompts), "--out", str(run_out)]
        cmd += ["--cache-dir", args.cache_dir, "--config-json", json.dumps(config)]
        load_before = os.getloadavg()
        print(f"PPO run, seed {seed}, default config (load {load_before[0]:.2f})", flush=True)
        t0 = time.time()
        done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        seconds = time.time() - t0
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        metrics = json.loads(done.stdout)
        meta = json.loads((run_out / "metadata.json").read_text())
        history = [json.loads(line) for line in (run_out / "metrics.jsonl").read_text().splitlines()]
        gain, gain_se = paired_gain(meta["evaluation"]["scores"], start["scores"])
        row = {
            "seed": seed,
            "wall_seconds": seconds,
            "load_before": load_before,
            "load_after": os.getloadavg(),
            "threads_at_start": meta.get("threads"),
            "eval_seconds": meta["evaluation"]["seconds"],
            "eval": {k: metrics[k] for k in metrics if k.startswith("eval/")},
            "eval_gain": gain,
            "eval_gain_se": gain_se,
            "train_reward": [round(h["reward/mean"], 4) for h in history],
            "train_kl": [round(h["ppo/kl"], 4) for h in history],
            "iteration_seconds": [round(h["time/iteration_seconds"], 1) for h in history],
            "iteration_threads": [int(h["time/threads"]) for h in history],
        }
        report["runs"].append(row)
        print(json.dumps(row, indent=2), flush=True)
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
