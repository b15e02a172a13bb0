"""`python -m training.ml reward` end to end, in subprocesses (plain and under torchrun)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from training.ml.cli import main

from .conftest import ROOT, subprocess_env, synthetic_pairs

CONFIG = json.dumps({"batch_size": 4, "lr": 1e-3, "epochs": 2, "max_length": 64, "log_every": 2})


def reward_args(base: Path, data: Path, eval_: Path, out: Path, *extra: str) -> list[str]:
    return ["reward", "--data", str(data), "--eval", str(eval_), "--base", str(base), "--out", str(out), *extra]


def run_cli(args: list[str], launcher: list[str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, *(launcher or []), "-m", "training.ml", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=subprocess_env(), timeout=180)


@pytest.mark.slow
def test_cli_trains_saves_and_reports(tiny_base: Path, pair_files, tmp_path: Path):
    data, eval_ = pair_files
    out, progress = tmp_path / "out", tmp_path / "progress.jsonl"
    proc = run_cli(reward_args(tiny_base, data, eval_, out, "--config-json", CONFIG,
                               "--progress-file", str(progress), "--parent", "v7"))
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads(proc.stdout)  # stdout is exactly one JSON document
    assert 0.0 <= metrics["reward/accuracy"] <= 1.0 and "reward/ece" in metrics
    assert "train [" in proc.stderr and "Traceback" not in proc.stderr

    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert all({"step", "total", "loss", "eta", "time"} <= line.keys() for line in lines)
    final = lines[-1]
    assert final["step"] == final["total"] == 12 and final["phase"] == "done"  # 24 pairs / 4 * 2 epochs
    assert [line["time"] for line in lines] == sorted(line["time"] for line in lines)

    meta = json.loads((out / "metadata.json").read_text())
    assert meta["parent"] == "v7" and meta["metrics"] == metrics and meta["world_size"] == 1

    # `evaluate` scores the saved model on an eval file and reproduces the metrics of training.
    again = run_cli(["evaluate", "--model", str(out), "--eval", str(eval_)])
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout)["reward/accuracy"] == pytest.approx(metrics["reward/accuracy"])
    missing = run_cli(["evaluate", "--model", str(tmp_path), "--eval", str(eval_)])
    assert missing.returncode == 2 and "no metadata.json" in missing.stderr and "Traceback" not in missing.stderr


@pytest.mark.slow
def test_cli_bad_jsonl_line_exits_nonzero_with_line_number(tiny_base: Path, pair_files, tmp_path: Path):
    _, eval_ = pair_files
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(synthetic_pairs(1)[0]) + "\n" + '{"prompt": "p", "chosen": "x", \n')
    proc = run_cli(reward_args(tiny_base, bad, eval_, tmp_path / "out"))
    assert proc.returncode == 2
    assert "bad.jsonl:2: invalid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing_data", "--data: file not found"),
        ("empty_data", "no records"),
        ("unknown_key", "unknown config key(s): lerning_rate"),
        ("bad_json", "--config-json is not valid JSON"),
        ("out_not_empty", "already exists and is not empty"),
        ("bad_base", "--base: model directory not found"),
    ],
)
def test_cli_bad_input_is_a_clean_error(case: str, message: str, tiny_base: Path, pair_files, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]):
    data, eval_ = pair_files
    out, config, base = tmp_path / "out", "{}", tiny_base
    if case == "missing_data":
        data = tmp_path / "nope.jsonl"
    elif case == "empty_data":
        data = tmp_path / "empty.jsonl"
        data.write_text("\n")
    elif case == "unknown_key":
        config = '{"lerning_rate": 0.1}'
    elif case == "bad_json":
        config = "{lr: 1}"
    elif case == "out_not_empty":
        out.mkdir()
        (out / "x").write_text("x")
    elif case == "bad_base":
        base = tmp_path / "no-model"
    assert main(reward_args(base, data, eval_, out, "--config-json", config)) == 2
    err = capsys.readouterr().err
    assert message in err and err.startswith("error: ")


@pytest.mark.slow
def test_torchrun_two_process_ddp_on_cpu(tiny_base: Path, pair_files, tmp_path: Path):
    data, eval_ = pair_files
    out, progress = tmp_path / "out", tmp_path / "progress.jsonl"
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = run_cli(reward_args(tiny_base, data, eval_, out, "--config-json", CONFIG,
                               "--progress-file", str(progress)), launcher=launcher)
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = json.loads(proc.stdout)  # rank 0 alone prints
    assert metrics["reward/count"] == 10  # eval shards gathered from both ranks
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["world_size"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["out", "progress.jsonl", "train.jsonl", "eval.jsonl"])
    # 6 batches split over 2 ranks -> 3 steps per epoch, 2 epochs; only rank 0 reports
    final = json.loads(progress.read_text().splitlines()[-1])
    assert final["total"] == 6 and final["phase"] == "done"
    assert proc.stderr.count("6/6 loss") == 1  # one progress bar, not one per rank
