"""PPO benchmark: our trainer (training/ml/ppo.py) against TRL 1.9.0's trl.experimental.ppo.PPOTrainer.

Same policy (SmolLM2-135M-Instruct, the embedded default), same reward model, same prompts, batch
sizes, response length, PPO epochs, temperature, learning rate and its linear decay, Adam epsilon, no
gradient clipping and a fixed KL coefficient. Runs alternate A B B A (ours, TRL, TRL, ours, ... one
pair per seed) in one process, so a machine whose load drifts slows both sides alike. Reported per
run: episodes per second of the training loop (wall clock and CPU time; model loading excluded), and,
measured afterwards by one shared evaluator (training/ml/ppo_eval.py, the one every policy version
gets) on held-out prompts, the mean reward gain over the starting policy and the KL to it.

    .venv/bin/python bench/ppo_bench.py [--iterations 8] [--seeds 2] [--eval-prompts 64] [--threads 2]

TRL runs in its own virtual environment, created on first use (used only by this benchmark):
    python3 -m venv var/venv-trl19
    var/venv-trl19/bin/pip install torch==2.13.0          # first: resolves to the local CPU wheel
    var/venv-trl19/bin/pip install trl==1.9.0 transformers gguf

The reward model (built once, cached under --out): a linear probe on SmolLM2's last hidden state,
fitted with the Bradley-Terry loss on chat-formatted HH-harmless pairs and scaled to unit standard
deviation, saved as a LlamaForSequenceClassification. It is on the policy's backbone and tokenizer
because TRL's trainer never re-tokenises. Both sides score exactly the same text: chat-templated prompt,
response, end-of-turn token.

TRL quirks handled (see shared PEERS.md): it needs a pad token distinct from EOS; we use SmolLM2's
existing <|endoftext|> (id 0) instead of adding one, so no embedding is resized and both sides sample
from identical models. Its value model is initialised from the reward model, as in TRL's examples;
ours is a zero-initialised value head on the policy (see training/ml/ppo.py for why): the one
intended difference, with the reward sitting on the last real token (ours, as in OpenAI's code)
rather than one past it (TRL).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"
TRL_VENV = ROOT / "var" / "venv-trl19"

# shared settings: both sides are configured from these
SETTINGS = dict(
    rollout_batch_size=16,
    mini_batch_size=8,
    ppo_epochs=2,
    max_new_tokens=32,
    temperature=0.7,
    lr=2e-5,
    kl_coef=0.05,
    cliprange=0.2,
    cliprange_value=0.2,
    vf_coef=0.1,
    gamma=1.0,
    lam=0.95,
    missing_eos_penalty=1.0,
    max_prompt_tokens=96,
    # the optimizer as TRL runs it: AdamW, epsilon 1e-8 (transformers' default), no weight decay, and no
    # gradient clipping (TRL's PPO loop calls optimizer.step() without clip_grad_norm_)
    adam_eps=1e-8,
    weight_decay=0.0,
    max_grad_norm=None,
)


# ---------------------------------------------------------------------------- shared preparation


def load_hh(max_prompt_tokens: int, tokenizer) -> tuple[list[dict], list[list[int]], list[str]]:
    """(probe pairs, bench prompts as token ids, their texts) from HH-harmless, prompts <= max tokens."""
    from training.ml.generate import encode_prompt

    rows = [json.loads(line) for line in HH.read_text().splitlines() if line.strip()]
    pairs = rows[:64]
    prompts, texts = [], []
    for row in rows[64:]:
        ids = encode_prompt(tokenizer, row["prompt"], 10_000, chat=True)
        if len(ids) <= max_prompt_tokens:
            prompts.append(ids)
            texts.append(row["prompt"])
    return pairs, prompts, texts


def chat_text(tokenizer, prompt, response: str, finished: bool = True) -> str:
    """What the reward model reads: the end-of-turn token only after a response that ended (as in TRL)."""
    from training.ml.generate import prompt_messages

    head = tokenizer.apply_chat_template(prompt_messages(prompt), add_generation_prompt=True, tokenize=False)
    return head + response + (tokenizer.eos_token if finished else "")


def build_reward_model(policy_dir: Path, out: Path, pairs: list[dict]) -> Path:
    """Linear Bradley-Terry probe on frozen SmolLM2 features -> LlamaForSequenceClassification folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    if (out / "config.json").is_file():
        return out
    tokenizer = AutoTokenizer.from_pretrained(policy_dir)
    lm = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def features(texts: list[str]) -> torch.Tensor:
        """Final hidden state at each text's last token, in right-padded batches of 8."""
        feats = []
        for start in range(0, len(texts), 8):
            rows = [tokenizer(t, add_special_tokens=False)["input_ids"][-128:] for t in texts[start : start + 8]]
            width = max(len(r) for r in rows)
            ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            hidden = lm.model(input_ids=ids, attention_mask=mask).last_hidden_state  # (b, width, H)
            feats.append(hidden[torch.arange(len(rows)), mask.sum(1) - 1])
        return torch.cat(feats)

    t0 = time.time()
    chosen = features([chat_text(tokenizer, p["prompt"], p["chosen"]) for p in pairs])  # (N, H)
    rejected = features([chat_text(tokenizer, p["prompt"], p["rejected"]) for p in pairs])  # (N, H)
    w = torch.zeros(chosen.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(300):
        loss = -torch.nn.functional.logsigmoid((chosen - rejected) @ w).mean() + 1e-3 * (w**2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        scores = torch.cat([chosen, rejected]) @ w
        w /= scores.std()  # unit-scale rewards: comparable to the missing-EOS penalty on both sides
        acc = ((chosen - rejected) @ w > 0).float().mean().item()
    rm = AutoModelForSequenceClassification.from_pretrained(policy_dir, num_labels=1, dtype=torch.float32)
    rm.score.weight.data[0] = w.detach()
    rm.config.pad_token_id = 0  # <|endoftext|>: pooling finds the last real token
    out.mkdir(parents=True, exist_ok=True)
    rm.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "probe.json").write_text(
        json.dumps({"train_pairs": len(pairs), "train_accuracy": acc, "seconds": time.time() - t0}) + "\n"
    )
    return out


def make_scorer(rm_dir: Path, batch_size: int = 16):
    """Our side's reward function: the reward model on chat-templated prompt + response + end token,
    in right-padded batches (the classifier pools at the last token that is not <|endoftext|>)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    pad = rm.config.pad_token_id

    @torch.no_grad()
    def score(prompts: list, responses: list[str], finished: list[bool]) -> list[float]:
        rows = [
            tokenizer(chat_text(tokenizer, p, r, f), add_special_tokens=False)["input_ids"]
            for p, r, f in zip(prompts, responses, finished, strict=True)
        ]
        out: list[float] = []
        for start in range(0, len(rows), batch_size):
            chunk = rows[start : start + batch_size]
            width = max(len(r) for r in chunk)
            ids = torch.tensor([r + [pad] * (width - len(r)) for r in chunk])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in chunk])
            out.extend(rm(input_ids=ids, attention_mask=mask).logits[:, 0].tolist())
        return out

    return score


# ---------------------------------------------------------------------------- our side


def run_ours(policy_dir: Path, rm_dir: Path, prompts: list[str], iterations: int, seed: int, out: Path) -> dict:
    import torch

    from training.ml.policy import load_policy
    from training.ml.ppo import train
    from training.ml.ppo_config import PPOConfig

    cfg = PPOConfig(
        iterations=iterations,
        **SETTINGS,
        target_kl=None,
        normalize_reward=False,
        reward_clip=None,
        forward_batch_size=16,
        device="cpu",
        seed=seed,
    )
    policy, tokenizer = load_policy(str(policy_dir))
    reference, _ = load_policy(str(policy_dir))
    scorer = make_scorer(rm_dir)
    history: list[dict] = []
    torch.manual_seed(seed)
    t0, cpu0 = time.time(), time.process_time()
    train(
        cfg,
        policy,
        tokenizer,
        reference,
        scorer,
        prompts,
        log=lambda i, m: (
            history.append(m),
            print(
                f"    ours iteration {i}: reward {m['reward/mean']:.3f} kl {m['ppo/kl']:.3f} "
                f"{m['time/iteration_seconds']:.1f}s",
                flush=True,
            ),
        ),
    )
    seconds, cpu = time.time() - t0, time.process_time() - cpu0
    policy.save_pretrained(out)
    tokenizer.save_pretrained(out)
    episodes = iterations * cfg.rollout_batch_size
    return {
        "train_seconds": seconds,
        "cpu_seconds": cpu,
        "episodes": episodes,
        "config": cfg.to_dict(),  # all of it in effect: AdamW (fused) with these lr, eps, weight decay
        "history": history,
    }


# ---------------------------------------------------------------------------- TRL side (runs in its own venv)


def run_trl_inside(spec_path: Path) -> None:
    """Executed by the TRL venv's python: train with trl.experimental.ppo and report timings."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    spec = json.loads(spec_path.read_text())
    s, out = spec["settings"], Path(spec["out"])
    torch.set_num_threads(spec["threads"])
    tokenizer = AutoTokenizer.from_pretrained(spec["policy"], padding_side="left")
    tokenizer.pad_token = spec.get("pad_token", "<|endoftext|>")  # distinct from EOS, in the vocabulary: no resize
    policy = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    ref = AutoModelForCausalLM.from_pretrained(spec["policy"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["rm"], num_labels=1, dtype=torch.float32)
    value = AutoModelForSequenceClassification.from_pretrained(spec["rm"], num_labels=1, dtype=torch.float32)
    for m in (policy, ref, reward, value):
        m.config.pad_token_id = tokenizer.pad_token_id
    train_ds = Dataset.from_dict({"input_ids": spec["prompt_ids"]})
    eval_ds = Dataset.from_dict({"input_ids": spec["prompt_ids"][:4]})
    cfg = PPOConfig(
        output_dir=str(out.parent / f"{out.name}-run"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        num_sample_generations=0,
        stop_token="eos",
        # TRL's rollout batch is per_device_train_batch_size * gradient_accumulation_steps (trl 1.9's
        # ppo_trainer.py: local_batch_size), split into num_mini_batches optimizer steps: 16 in 2 of 8
        per_device_train_batch_size=s["rollout_batch_size"],
        gradient_accumulation_steps=1,
        num_mini_batches=s["rollout_batch_size"] // s["mini_batch_size"],
        num_ppo_epochs=s["ppo_epochs"],
        total_episodes=spec["iterations"] * s["rollout_batch_size"],
        response_length=s["max_new_tokens"],
        temperature=s["temperature"],
        learning_rate=s["lr"],
        lr_scheduler_type="linear",  # stepped once per rollout batch over num_total_batches: as ours
        warmup_steps=0,
        adam_epsilon=s["adam_eps"],
        weight_decay=s["weight_decay"],
        kl_coef=s["kl_coef"],
        kl_estimator="k1",
        cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        whiten_rewards=False,
        missing_eos_penalty=s["missing_eos_penalty"],
        local_rollout_forward_batch_size=16,
        seed=spec["seed"],
        logging_steps=1,
        dataloader_num_workers=0,
    )
    trainer = PPOTrainer(
        args=cfg,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        train_dataset=train_ds,
        value_model=value,
        eval_dataset=eval_ds,
    )
    t0, cpu0 = time.time(), time.process_time()
    trainer.train()
    seconds, cpu = time.time() - t0, time.process_time() - cpu0
    policy.save_pretrained(out)
    AutoTokenizer.from_pretrained(spec["policy"]).save_pretrained(out)
    episodes = spec["iterations"] * s["rollout_batch_size"]
    result = {
        "train_seconds": seconds,
        "cpu_seconds": cpu,
        "episodes": episodes,
        # what TRL's optimizer actually ran with (transformers builds it from TrainingArguments)
        "optimizer": {
            "class": type(getattr(trainer.optimizer, "optimizer", trainer.optimizer)).__name__,
            **{
                k: v
                for k, v in trainer.optimizer.param_groups[0].items()
                if k in ("eps", "betas", "weight_decay", "fused", "initial_lr")
            },
        },
        "lr_per_update": [h["lr"] for h in trainer.state.log_history if "lr" in h],
        "history": [h for h in trainer.state.log_history if "objective/scores" in h],
    }
    (out.parent / f"{out.name}-result.json").write_text(json.dumps(result, indent=2) + "\n")


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(TRL_VENV / "bin" / "pip"), "install", "torch==2.13.0"], check=True)
        subprocess.run([str(TRL_VENV / "bin" / "pip"), "install", "trl==1.9.0", "transformers", "gguf"], check=True)
    return python


def run_trl(python: Path, policy_dir: Path, rm_dir: Path, prompt_ids, iterations, seed, threads, out: Path) -> dict:
    spec = {
        "policy": str(policy_dir),
        "rm": str(rm_dir),
        "prompt_ids": prompt_ids,
        "settings": SETTINGS,
        "iterations": iterations,
        "seed": seed,
        "threads": threads,
        "out": str(out),
    }
    spec_path = out.parent / f"{out.name}-spec.json"
    spec_path.write_text(json.dumps(spec))
    env = {**os.environ, "PYTHONPATH": "", "OMP_NUM_THREADS": str(threads)}
    subprocess.run([str(python), __file__, "--trl-inside", str(spec_path)], check=True, env=env)
    return json.loads((out.parent / f"{out.name}-result.json").read_text())


# ---------------------------------------------------------------------------- shared evaluation


def evaluate(path: Path, ref_dir: Path, scorer, prompts: list[str]) -> dict:
    """The policy at `path` on the held-out prompts: training/ml/ppo_eval's evaluation (the one each policy
    version gets), sampling as in training (same temperature and length) with one fixed seed."""
    from training.ml.policy import load_policy
    from training.ml.ppo_eval import evaluate_policy

    policy, tokenizer = load_policy(str(path))
    reference, _ = load_policy(str(ref_dir))
    metrics, details = evaluate_policy(
        policy,
        tokenizer,
        reference,
        scorer,
        prompts,
        max_new_tokens=SETTINGS["max_new_tokens"],
        temperature=SETTINGS["temperature"],
        max_prompt_tokens=SETTINGS["max_prompt_tokens"],
        batch_size=16,
        seed=1234,
    )
    penalty = SETTINGS["missing_eos_penalty"]
    return {
        "reward_mean": metrics["eval/reward/mean"],
        "reward_ci": [metrics["eval/reward/ci_low"], metrics["eval/reward/ci_high"]],
        "kl_mean": metrics["eval/kl"],
        # what both trainers maximise (before the KL term): the score minus the penalty for not ending
        "objective_mean": sum(
            s - penalty * (not f) for s, f in zip(details["scores"], details["finished"], strict=True)
        )
        / len(details["scores"]),
        "length_mean": sum(details["lengths"]) / len(details["lengths"]),
        "finished_share": sum(details["finished"]) / len(details["finished"]),
        "scores": details["scores"],
    }


def paired_gain(scores: list[float], start: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-prompt score differences against the starting policy."""
    diffs = [a - b for a, b in zip(scores, start, strict=True)]
    n = len(diffs)
    mean = sum(diffs) / n
    sd = (sum((d - mean) ** 2 for d in diffs) / (n - 1)) ** 0.5 if n > 1 else float("nan")
    return mean, sd / n**0.5


def mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    return mean, ((sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5 if n > 1 else 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=8, help="PPO updates (rollout batches of 16) per run")
    parser.add_argument("--seeds", type=int, default=2, help="runs per side, seeds 0..N-1, in A B B A order")
    parser.add_argument("--eval-prompts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2, help="torch threads, the same on both sides")
    parser.add_argument("--out", default=str(ROOT / "var" / "bench" / "ppo"))
    parser.add_argument("--cache-dir", default=str(ROOT / "var" / "artifacts"))
    parser.add_argument("--skip-trl", action="store_true")
    parser.add_argument("--trl-inside", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.trl_inside:
        run_trl_inside(Path(args.trl_inside))
        return 0

    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    import torch

    torch.set_num_threads(args.threads)
    import transformers

    from training.ml.policy import resolve_policy

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    policy_dir = Path(resolve_policy("embedded", args.cache_dir))
    tokenizer = transformers.AutoTokenizer.from_pretrained(policy_dir)
    pairs, prompt_ids, prompt_texts = load_hh(SETTINGS["max_prompt_tokens"], tokenizer)
    n_train = args.iterations * SETTINGS["rollout_batch_size"]
    train_ids, train_texts = prompt_ids[:n_train], prompt_texts[:n_train]
    eval_texts = prompt_texts[n_train : n_train + args.eval_prompts]
    print(f"policy {policy_dir}; {len(train_texts)} training prompts, {len(eval_texts)} eval prompts", flush=True)
    rm_dir = build_reward_model(policy_dir, out / "reward-model", pairs)
    print(f"reward model {rm_dir}: {(rm_dir / 'probe.json').read_text().strip()}", flush=True)
    scorer = make_scorer(rm_dir)

    report: dict = {
        "settings": {**SETTINGS, "iterations": args.iterations, "seeds": args.seeds},
        "torch_threads": args.threads,
        "cpu": os.cpu_count(),
        "runs": [],
    }
    print("evaluating the starting policy", flush=True)
    start = evaluate(policy_dir, policy_dir, scorer, eval_texts)
    report["start"] = {k: v for k, v in start.items() if k != "scores"}
    python = None if args.skip_trl else ensure_trl_venv()
    order = []
    for seed in range(args.seeds):  # A B | B A | A B ...
        pair = ["ours", "trl"] if seed % 2 == 0 else ["trl", "ours"]
        order += [(side, seed) for side in pair if side == "ours" or python is not None]
    for side, seed in order:
        run_out = out / f"{side}-seed{seed}"
        load_before = os.getloadavg()
        print(f"{side} seed {seed}: training (load {load_before[0]:.2f})", flush=True)
        if side == "ours":
            result = run_ours(policy_dir, rm_dir, train_texts, args.iterations, seed, run_out)
        else:
            result = run_trl(python, policy_dir, rm_dir, train_ids, args.iterations, seed, args.threads, run_out)
        result["load_before"], result["load_after"] = load_before, os.getloadavg()
        evaluation = evaluate(run_out, policy_dir, scorer, eval_texts)
        gain, gain_se = paired_gain(evaluation.pop("scores"), start["scores"])
        row = {
            "side": side,
            "seed": seed,
            "episodes_per_second": result["episodes"] / result["train_seconds"],
            "episodes_per_cpu_second": result["episodes"] / result["cpu_seconds"],
            "train_seconds": result["train_seconds"],
            "reward_gain": gain,
            "reward_gain_se": gain_se,
            "objective_gain": evaluation["objective_mean"] - start["objective_mean"],
            "kl_to_start": evaluation["kl_mean"],
            "eval": evaluation,
            **{k: v for k, v in result.items() if k not in ("train_seconds",)},
        }
        report["runs"].append(row)
        print(
            f"  {side} seed {seed}: {row['episodes_per_second']:.3f} episodes/s "
            f"({row['episodes_per_cpu_second']:.3f}/CPU-s), reward gain {gain:+.3f} +- {gain_se:.3f}, "
            f"KL {row['kl_to_start']:.3f}, load {load_before[0]:.2f} -> {result['load_after'][0]:.2f}",
            flush=True,
        )
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")

    summary: dict = {}
    for side in ("ours", "trl"):
        rows = [r for r in report["runs"] if r["side"] == side]
        if rows:
            summary[side] = {}
            for key in (
                "episodes_per_second",
                "episodes_per_cpu_second",
                "reward_gain",
                "objective_gain",
                "kl_to_start",
            ):
                mean, sd = mean_sd([r[key] for r in rows])
                summary[side][key] = round(mean, 4)
                summary[side][f"{key}_sd"] = round(sd, 4)
    if "trl" in summary:
        summary["speedup"] = round(summary["ours"]["episodes_per_second"] / summary["trl"]["episodes_per_second"], 2)
        summary["speedup_cpu"] = round(
            summary["ours"]["episodes_per_cpu_second"] / summary["trl"]["episodes_per_cpu_second"], 2
        )
        by_seed = {}
        for r in report["runs"]:
            by_seed.setdefault(r["seed"], {})[r["side"]] = r["episodes_per_second"]
        summary["speedup_per_seed"] = [
            round(v["ours"] / v["trl"], 2) for _, v in sorted(by_seed.items()) if len(v) == 2
        ]
    report["summary"] = summary
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
