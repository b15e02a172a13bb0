"""Command line: `python -m training.ml reward --data D --eval E --base B --out O [...]`.

stdout carries only the final metrics JSON; progress, logs and errors go to stderr, and progress
also to --progress-file as JSON lines, so a supervisor can parse both without scraping.
Exit codes: 0 ok, 2 bad input (message on stderr, no traceback), 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import IO

from .config import ConfigError, RewardConfig
from .data import DataError

EXIT_BAD_INPUT = 2


class UsageError(ValueError):
    """Bad command-line input."""


class ProgressReporter:
    """Progress bar on stderr, plus JSON lines in a progress file with a heartbeat.

    Steps can take longer than the promised reporting interval (eval, slow CPU steps), so a daemon
    thread re-writes the latest state whenever nothing was written for `interval` seconds.
    """

    def __init__(self, path: str | None, interval: float = 2.0, stream: IO[str] = sys.stderr) -> None:
        self.path, self.interval, self.stream = path, interval, stream
        self.tty = stream.isatty()
        self.lock = threading.RLock()
        self.step, self.total, self.loss, self.eta, self.phase = 0, 0, None, None, "load"
        self.updated_at = self.last_write = self.last_bar = 0.0
        self.stopped = threading.Event()
        self.thread = None
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.thread = threading.Thread(target=self._heartbeat, daemon=True)
            self.thread.start()

    def __call__(self, step: int, total: int, loss: float | None, eta: float | None) -> None:
        with self.lock:
            self.step, self.total, self.loss, self.eta = step, total, loss, eta
            self.updated_at = time.time()
            self._write_line(force=step in (0, total))
            self._draw_bar(force=step in (0, total))

    def set_phase(self, phase: str) -> None:
        with self.lock:
            if self.tty and self.phase == "train":
                self.stream.write("\n")
            self.phase = phase
            self._write_line(force=True)
            if phase != "train":
                self.stream.write(f"[{phase}]\n")
                self.stream.flush()

    def log(self, step: int, metrics: dict[str, float]) -> None:
        with self.lock:
            text = " ".join(f"{k}={v:.4g}" for k, v in metrics.items())
            self.stream.write(("\r\x1b[K" if self.tty else "") + f"step {step}/{self.total} {text}\n")
            self.stream.flush()

    def close(self) -> None:
        self.stopped.set()
        if self.thread:
            self.thread.join(timeout=5)

    def _write_line(self, force: bool) -> None:
        now = time.time()
        if not self.path or (not force and now - self.last_write < 1.0):
            return
        eta = None if self.eta is None else max(0.0, self.eta - (now - self.updated_at))
        line = {"step": self.step, "total": self.total, "loss": self.loss, "eta": eta, "time": now,
                "phase": self.phase}
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(line) + "\n")
        self.last_write = now

    def _draw_bar(self, force: bool) -> None:
        now = time.time()
        # a non-terminal (log file, CI) gets a fresh line at most every 5 s instead of \r redraws
        if not self.tty and not force and now - self.last_bar < 5.0:
            return
        width = 30
        filled = width * self.step // self.total if self.total else 0
        loss = "-" if self.loss is None else f"{self.loss:.4f}"
        text = (f"train [{'#' * filled}{'.' * (width - filled)}] {self.step}/{self.total} "
                f"loss {loss} eta {_fmt_seconds(self.eta)}")
        self.stream.write(f"\r{text}\x1b[K" if self.tty else text + "\n")
        self.stream.flush()
        self.last_bar = now

    def _heartbeat(self) -> None:
        while not self.stopped.wait(self.interval / 2):
            with self.lock:
                if time.time() - self.last_write >= self.interval:
                    self._write_line(force=True)


def _fmt_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m training.ml", description="Framework-free RLHF model training.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("reward", help="train a reward model on preference pairs (or ratings)")
    p.add_argument("--data", required=True, help="training JSONL")
    p.add_argument("--eval", required=True, help="evaluation JSONL")
    p.add_argument("--base", required=True, help="directory of the pretrained base model")
    p.add_argument("--out", required=True, help="output directory (must not exist, or be empty)")
    p.add_argument("--config-json", default="{}", help="RewardConfig overrides as a JSON object, or @file.json")
    p.add_argument("--progress-file", default=None, help="append JSON progress lines here")
    p.add_argument("--parent", default=None, help="id of the parent model version, stored in metadata")
    p.add_argument("--score-data", default=None,
                   help="comparisons JSONL to score with the trained model into OUT/scores.jsonl (see `score`)")
    p.add_argument("--score-seconds", type=float, default=None, help="stop scoring after this many seconds")
    e = sub.add_parser("evaluate", help="held-out metrics of a saved reward model on an eval file")
    e.add_argument("--model", required=True, help="directory of a reward model saved by `reward`")
    e.add_argument("--eval", required=True, help="evaluation JSONL")
    e.add_argument("--progress-file", default=None, help="accepted for a uniform interface; unused")
    s = sub.add_parser("score", help="score both responses of each comparison with a saved reward model")
    s.add_argument("--model", required=True, help="directory of a reward model saved by `reward`")
    s.add_argument("--data", required=True,
                   help='JSONL of {"comparison_id", "prompt", "response_a", "response_b"}')
    s.add_argument("--out", required=True,
                   help='output JSONL: {"comparison_id", "score_a", "score_b"} per line, raw rewards')
    s.add_argument("--max-seconds", type=float, default=None, help="stop after this many seconds (between chunks)")
    s.add_argument("--progress-file", default=None, help="accepted for a uniform interface; unused")
    from .cli_ppo import add_generate_parser, add_ppo_parser  # here: cli_ppo imports this module

    add_ppo_parser(sub)
    add_generate_parser(sub)
    return parser


def parse_overrides(text: str) -> dict:
    """The --config-json value: a JSON object, or @file.json holding one."""
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"--config-json: cannot read {text[1:]}: {exc.strerror}") from None
    try:
        overrides = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--config-json is not valid JSON: {exc.msg} at column {exc.colno}") from None
    if not isinstance(overrides, dict):
        raise UsageError("--config-json must be a JSON object")
    return overrides


def parse_config(args: argparse.Namespace) -> RewardConfig:
    overrides = parse_overrides(args.config_json)
    return RewardConfig.from_dict({**overrides, "base_model": args.base})


def check_paths(args: argparse.Namespace) -> None:
    for flag, value in (("--data", args.data), ("--eval", args.eval), ("--score-data", args.score_data)):
        if value is not None and not Path(value).is_file():
            raise UsageError(f"{flag}: file not found: {value}")
    if not Path(args.base).is_dir():
        raise UsageError(f"--base: model directory not found: {args.base}")
    out = Path(args.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"--out: {out} already exists and is not empty")


def run_reward(args: argparse.Namespace) -> int:
    from .checkpoint import finite
    from .reward import ModelLoadError, train

    is_main = int(os.environ.get("RANK", "0")) == 0
    cfg = parse_config(args)
    check_paths(args)
    if args.score_seconds is not None and not args.score_seconds > 0:
        raise UsageError("--score-seconds must be positive")
    import transformers

    # stderr is for our progress bar; tqdm bars of weight loading/saving would interleave with it
    transformers.logging.disable_progress_bar()
    if "TRANSFORMERS_VERBOSITY" not in os.environ:
        # the "newly initialized: classifier.*" report is expected for a fresh reward head
        transformers.logging.set_verbosity_error()

    reporter = ProgressReporter(args.progress_file) if is_main else None
    try:
        metrics = train(
            cfg, args.data, args.eval, out_dir=args.out, parent=args.parent,
            progress=reporter, log=reporter.log if reporter else None,
            phase=reporter.set_phase if reporter else None,
            score_path=args.score_data, score_seconds=args.score_seconds,
        )
    except ModelLoadError as exc:
        raise UsageError(str(exc)) from None
    finally:
        if reporter:
            reporter.close()
    if is_main:
        print(json.dumps(finite(metrics), sort_keys=True), flush=True)
    return 0


def run_evaluate(args: argparse.Namespace) -> int:
    from .checkpoint import METADATA_FILE, finite
    from .reward import evaluate_saved

    if not (Path(args.model) / METADATA_FILE).is_file():
        raise UsageError(f"--model: {args.model} is not a reward model saved by `reward` (no {METADATA_FILE})")
    if not Path(args.eval).is_file():
        raise UsageError(f"--eval: file not found: {args.eval}")
    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    print(json.dumps(finite(evaluate_saved(args.model, args.eval)), sort_keys=True), flush=True)
    return 0


def run_score(args: argparse.Namespace) -> int:
    from .checkpoint import METADATA_FILE, finite
    from .reward import score_saved

    if not (Path(args.model) / METADATA_FILE).is_file():
        raise UsageError(f"--model: {args.model} is not a reward model saved by `reward` (no {METADATA_FILE})")
    if not Path(args.data).is_file():
        raise UsageError(f"--data: file not found: {args.data}")
    if args.max_seconds is not None and not args.max_seconds > 0:
        raise UsageError("--max-seconds must be positive")
    import transformers

    transformers.logging.disable_progress_bar()
    transformers.logging.set_verbosity_error()
    metrics = score_saved(args.model, args.data, args.out, max_seconds=args.max_seconds)
    print(json.dumps(finite(metrics), sort_keys=True), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    from .cli_ppo import run_generate, run_ppo

    commands = {
        "reward": run_reward,
        "evaluate": run_evaluate,
        "score": run_score,
        "ppo": run_ppo,
        "generate": run_generate,
    }
    args = build_parser().parse_args(argv)
    try:
        return commands[args.command](args)
    except (UsageError, ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
