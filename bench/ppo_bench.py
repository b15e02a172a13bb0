"""PPO benchmark: our trainer (training/ml/ppo.py) against TRL 1.9.0's trl.experimental.ppo.PPOTrainer.

Same policy (SmolLM2-135M-Instruct, the embedded default), same reward model, same prompts, batch
sizes, response length, PPO epochs, temperature, learning rate and fixed KL coefficient, run one after
the other on this machine. Reported per side: episodes per second over the training loop (model loading
excluded), and, measured afterwards by one shared evaluator on held-out prompts, the mean reward gain
over the starting policy and the KL to it.

    .venv/bin/python bench/ppo_bench.py [--iterations 4] [--out var/bench/ppo]

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
ours is a zero-initialised value head on the policy (see training/ml/ppo.py for why).
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


def make_scorer(rm_dir: Path):
    """Our side's reward function: the reward model on chat-templated prompt + response + end token."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()

    @torch.no_grad()
    def score(prompts: list, responses: list[str], finished: list[bool]) -> list[float]:
        out = []
        for prompt, response, ended in zip(prompts, responses, finished, strict=True):
            text = chat_text(tokenizer, prompt, response, ended)
            ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out.append(float(rm(input_ids=ids).logits[0, 0]))
        return out

    return score


# ---------------------------------------------------------------------------- our side


def run_ours(policy_dir: Path, rm_dir: Path, prompts: list[str], iterations: int, out: Path) -> dict:
    import torch

    from training.ml.policy import load_policy
    from training.ml.ppo import train
    from training.ml.ppo_config import PPOConfig

    s = SETTINGS
    cfg = PPOConfig(
        iterations=iterations,
        rollout_batch_size=s["rollout_batch_size"],
        mini_batch_size=s["mini_batch_size"],
        ppo_epochs=s["ppo_epochs"],
        max_new_tokens=s["max_new_tokens"],
        temperature=s["temperature"],
        lr=s["lr"],
        kl_coef=s["kl_coef"],
        target_kl=None,
        cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        missing_eos_penalty=s["missing_eos_penalty"],
        max_prompt_tokens=s["max_prompt_tokens"],
        normalize_reward=False,
        reward_clip=None,
        forward_batch_size=16,
        device="cpu",
        seed=0,
    )
    policy, tokenizer = load_policy(str(policy_dir))
    reference, _ = load_policy(str(policy_dir))
    scorer = make_scorer(rm_dir)
    history: list[dict] = []
    torch.manual_seed(0)
    t0 = time.time()
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
                f"  ours iteration {i}: reward {m['reward/mean']:.3f} kl {m['ppo/kl']:.3f} "
                f"{m['time/iteration_seconds']:.1f}s",
                flush=True,
            ),
        ),
    )
    seconds = time.time() - t0
    policy.save_pretrained(out / "ours-policy")
    tokenizer.save_pretrained(out / "ours-policy")
    return {
        "train_seconds": seconds,
        "episodes": iterations * cfg.rollout_batch_size,
        "episodes_per_second": iterations * cfg.rollout_batch_size / seconds,
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
        output_dir=str(out / "trl-run"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        num_sample_generations=0,
        stop_token="eos",
        # TRL's rollout batch is per_device_train_batch_size * gradient_accumulation_steps, split into
        # num_mini_batches optimizer steps: 16 * 1 in 2 mini-batches of 8, as on our side
        per_device_train_batch_size=s["rollout_batch_size"],
        gradient_accumulation_steps=1,
        num_mini_batches=s["rollout_batch_size"] // s["mini_batch_size"],
        num_ppo_epochs=s["ppo_epochs"],
        total_episodes=spec["iterations"] * s["rollout_batch_size"],
        response_length=s["max_new_tokens"],
        temperature=s["temperature"],
        learning_rate=s["lr"],
        kl_coef=s["kl_coef"],
        cliprange=s["cliprange"],
        cliprange_value=s["cliprange_value"],
        vf_coef=s["vf_coef"],
        gamma=s["gamma"],
        lam=s["lam"],
        missing_eos_penalty=s["missing_eos_penalty"],
        local_rollout_forward_batch_size=16,
        seed=0,
        logging_steps=1,
        lr_scheduler_type="linear",
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
    t0 = time.time()
    trainer.train()
    seconds = time.time() - t0
    policy.save_pretrained(out / "trl-policy")
    AutoTokenizer.from_pretrained(spec["policy"]).save_pretrained(out / "trl-policy")
    episodes = spec["iterations"] * s["rollout_batch_size"]
    result = {
        "train_seconds": seconds,
        "episodes": episodes,
        "episodes_per_second": episodes / seconds,
        "history": [h for h in trainer.state.log_history if "objective/scores" in h],
    }
    (out / "trl-result.json").write_text(json.dumps(result, indent=2) + "\n")


def ensure_trl_venv() -> Path:
    python = TRL_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["python3", "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(TRL_VENV / "bin" / "pip"), "install", "torch==2.13.0"], check=True)
        subprocess.run([str(TRL_VENV / "bin" / "pip"), "install", "trl==1.9.0", "transformers", "gguf"], check=True)
    return python


# ---------------------------------------------------------------------------- shared evaluation


def evaluate(policy_dirs: dict[str, Path], ref_dir: Path, rm_dir: Path, prompts: list[str]) -> dict[str, dict]:
    """Each policy answers the same held-out prompts (same seed); mean reward and KL to the start policy."""
    import torch

    from training.ml.generate import encode_prompt, left_pad, sample, stop_token_ids
    from training.ml.policy import load_policy
    from training.ml.ppo import forward
    from training.ml.ppo_core import first_stop_lengths, lengths_to_mask

    scorer = make_scorer(rm_dir)
    reference, tokenizer = load_policy(str(ref_dir))
    results = {}
    for name, path in policy_dirs.items():
        policy, _ = load_policy(str(path))
        stop_ids = stop_token_ids(tokenizer, policy, [])
        rewards, kls, lengths_all, finished_all = [], [], [], []
        generator = torch.Generator().manual_seed(1234)
        for start in range(0, len(prompts), 16):
            batch = prompts[start : start + 16]
            rows = [encode_prompt(tokenizer, p, SETTINGS["max_prompt_tokens"], True) for p in batch]
            q, qm = left_pad(rows, 0)
            with torch.no_grad():
                resp = sample(
                    policy, q, qm, SETTINGS["max_new_tokens"], SETTINGS["temperature"], stop_ids, 0, generator
                )
                lengths, finished = first_stop_lengths(resp, stop_ids)
                R = int(lengths.max())
                resp, mask = resp[:, :R], lengths_to_mask(lengths, R)
                ids, am = torch.cat([q, resp], 1), torch.cat([qm, mask.long()], 1)
                lp = forward(policy, None, ids, am, resp, SETTINGS["temperature"]).logprobs
                ref_lp = forward(reference, None, ids, am, resp, SETTINGS["temperature"]).logprobs
            kls.extend(((lp - ref_lp) * mask).sum(1).tolist())
            texts = tokenizer.batch_decode(
                [resp[i, : lengths[i]].tolist() for i in range(len(batch))], skip_special_tokens=True
            )
            rewards.extend(scorer(batch, texts, finished.tolist()))
            lengths_all.extend(lengths.tolist())
            finished_all.extend(finished.tolist())
        n = len(rewards)
        results[name] = {
            "reward_mean": sum(rewards) / n,
            # what both trainers maximise (before the KL term): score minus the penalty for not ending
            "objective_mean": sum(
                r - SETTINGS["missing_eos_penalty"] * (not f) for r, f in zip(rewards, finished_all, strict=True)
            )
            / n,
            "kl_mean": sum(kls) / n,
            "length_mean": sum(lengths_all) / n,
            "finished_share": sum(finished_all) / n,
        }
        print(f"  eval {name}: {results[name]}", flush=True)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=3, help="PPO updates (rollout batches) per side")
    parser.add_argument("--eval-prompts", type=int, default=32)
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
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # inherited by the TRL subprocess
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

    report: dict = {"settings": {**SETTINGS, "iterations": args.iterations}, "torch_threads": args.threads}
    print("ours: training", flush=True)
    report["ours"] = run_ours(policy_dir, rm_dir, train_texts, args.iterations, out)
    policies = {"start": policy_dir, "ours": out / "ours-policy"}
    if not args.skip_trl:
        python = ensure_trl_venv()
        spec = {
            "policy": str(policy_dir),
            "rm": str(rm_dir),
            "prompt_ids": train_ids,
            "settings": SETTINGS,
            "iterations": args.iterations,
            "out": str(out),
        }
        (out / "trl-spec.json").write_text(json.dumps(spec))
        print("TRL 1.9.0: training", flush=True)
        env = {**os.environ, "PYTHONPATH": ""}
        subprocess.run([str(python), __file__, "--trl-inside", str(out / "trl-spec.json")], check=True, env=env)
        report["trl"] = json.loads((out / "trl-result.json").read_text())
        policies["trl"] = out / "trl-policy"
    print("evaluating", flush=True)
    report["eval"] = evaluate(policies, policy_dir, rm_dir, eval_texts)
    start = report["eval"]["start"]
    summary = {}
    for side in ("ours", "trl"):
        if side in report:
            summary[side] = {
                "episodes_per_second": round(report[side]["episodes_per_second"], 4),
                "train_seconds": round(report[side]["train_seconds"], 1),
                "reward_gain": round(report["eval"][side]["reward_mean"] - start["reward_mean"], 4),
                "objective_gain": round(report["eval"][side]["objective_mean"] - start["objective_mean"], 4),
                "kl_to_start": round(report["eval"][side]["kl_mean"], 4),
            }
    if "trl" in summary:
        summary["speedup"] = round(summary["ours"]["episodes_per_second"] / summary["trl"]["episodes_per_second"], 2)
    report["summary"] = summary
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
