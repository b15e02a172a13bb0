"""Runs a training subprocess for a TrainingRun and relays its progress to the database.

The worker process never imports torch: the training itself is `python -m training.ml ...` in a
child process of its own session, so cancelling (or a crash of the training) is killing that
process group, which frees the GPU with it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from django.conf import settings

from training import services

ROOT = Path(__file__).resolve().parent.parent
REPORT_EVERY_SECONDS = 2.0


class RunCancelled(Exception):
    pass


@dataclass
class ProgressTail:
    """Reads the JSON lines a training process appends to its progress file."""

    path: Path
    offset: int = 0
    latest: dict = field(default_factory=dict)

    def poll(self) -> dict:
        if not self.path.exists():
            return self.latest
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        # Only whole lines: the writer may be half way through the last one.
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        for line in chunk[:end].splitlines():
            try:
                self.latest = json.loads(line)
            except json.JSONDecodeError:
                continue
        return self.latest


def run_label(run) -> str:
    """A folder name unique to the run even across databases: ids restart after a restore or in a
    fresh test database, while the artifact volume keeps its folders."""
    return f"{run.pk}-{run.created_at:%Y%m%dT%H%M%S%f}"


def run_dir(run) -> Path:
    return Path(settings.ARTIFACT_ROOT) / "runs" / run_label(run)


def supervise(*, run_id: int, argv: list[str], folder: Path, timeout_s: float | None = None) -> dict:
    """Runs `python -m training.ml <argv>`; returns the metrics it prints. Raises RunCancelled when the
    run is cancelled meanwhile, RuntimeError with the end of the log when the process fails."""
    folder.mkdir(parents=True, exist_ok=True)
    progress = ProgressTail(folder / "progress.jsonl")
    log_path, out_path = folder / "log.txt", folder / "metrics.json"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log_path.open("ab") as log, out_path.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "training.ml", *argv, "--progress-file", str(progress.path)],
            cwd=ROOT,
            stdout=out,
            stderr=log,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        started = time.monotonic()
        try:
            while proc.poll() is None:
                time.sleep(0.5)
                latest = progress.poll()
                still_running = services.training_run_report_progress(
                    run_id=run_id,
                    step=int(latest.get("step") or 0),
                    total_steps=latest.get("total") or None,
                    eta_seconds=latest.get("eta"),
                )
                if not still_running:
                    raise RunCancelled()
                if timeout_s is not None and time.monotonic() - started > timeout_s:
                    raise RuntimeError(f"the training took longer than its limit of {timeout_s:.0f} s")
                time.sleep(max(0.0, REPORT_EVERY_SECONDS - 0.5))
        finally:
            if proc.poll() is None:
                _kill(proc)
    if proc.returncode == 0 and progress.poll().get("total"):
        # The process can finish between two polls: its last progress line (step = total) would
        # otherwise never reach the run.
        latest = progress.latest
        services.training_run_report_progress(
            run_id=run_id, step=int(latest.get("step") or 0), total_steps=latest.get("total"), eta_seconds=0.0
        )
    if proc.returncode != 0:
        raise RuntimeError(f"training exited with status {proc.returncode}:\n{log_tail(log_path)}")
    try:
        return json.loads(out_path.read_text(encoding="utf-8").strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        raise RuntimeError(f"training printed no metrics:\n{log_tail(log_path)}") from None


def _die_with_parent() -> None:
    """Runs in the child before exec: ask Linux to SIGKILL it when the worker dies, so a worker
    killed with -9 does not leave a training process holding the GPU with nobody to report to."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # not Linux: the reaper still fails the run


def _kill(proc: subprocess.Popen) -> None:
    """SIGTERM to the whole process group, SIGKILL if it lingers: torchrun's children go too."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def log_tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


def remove_partial(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
