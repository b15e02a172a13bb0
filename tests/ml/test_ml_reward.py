"""Reward model: losses, calibration, the training loop, evaluation, save/load."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from training.ml.checkpoint import load_reward_model, save_reward_model
from training.ml.config import RewardConfig
from training.ml.data import file_sha256, load_pair_records
from training.ml.reward import (
    build_dataset,
    evaluate,
    expected_calibration_error,
    fit,
    load_model_and_tokenizer,
    load_records,
    lr_at,
    pairwise_loss,
    train,
)

from .conftest import synthetic_pairs, write_jsonl


def test_pairwise_loss_values():
    zero = torch.zeros(3)
    assert pairwise_loss(zero, zero).item() == pytest.approx(math.log(2))
    r_c, r_r = torch.tensor([2.0]), torch.tensor([1.0])
    assert pairwise_loss(r_c, r_r).item() == pytest.approx(-math.log(1 / (1 + math.exp(-1))))
    # a margin of 1 cancels the gap of 1: back to log 2
    assert pairwise_loss(r_c, r_r, margin=torch.tensor([1.0])).item() == pytest.approx(math.log(2))
    # centring adds coef * mean((r_c + r_r)^2) = 0.1 * 9
    centred = pairwise_loss(r_c, r_r, center_coef=0.1).item()
    assert centred == pytest.approx(pairwise_loss(r_c, r_r).item() + 0.9)


def test_ece_hand_made_examples():
    # three confident correct pairs (p=.9) and one confident wrong pair (p=.2, i.e. 80% for rejected)
    # top-label view: bin [.9, 1): conf .9, acc 1 -> gap .1, weight 3/4; bin [.8, .9): conf .8, acc 0
    # -> gap .8, weight 1/4.  ECE = .75 * .1 + .25 * .8 = 0.275
    p = torch.tensor([0.9, 0.9, 0.9, 0.2], dtype=torch.float64)
    assert expected_calibration_error(p) == pytest.approx(0.275)
    # 75% confident and right 3 times out of 4: perfectly calibrated
    assert expected_calibration_error(torch.tensor([0.75, 0.75, 0.75, 0.25])) == pytest.approx(0.0, abs=1e-7)
    # a coin-flip model that happens to be always right is under-confident by .5
    assert expected_calibration_error(torch.full((5,), 0.55)) == pytest.approx(0.45)


def test_lr_schedule_warms_up_then_decays():
    lrs = [lr_at(s, 10, 2, 1.0) for s in range(10)]
    assert lrs[0] > 0 and lrs[0] < lrs[1] < lrs[2] == 1.0
    assert all(a > b for a, b in zip(lrs[2:], lrs[3:], strict=False)) and lrs[-1] > 0


def tiny_cfg(base: Path, **overrides) -> RewardConfig:
    defaults = dict(base_model=str(base), batch_size=4, lr=1e-3, epochs=1, warmup_ratio=0.0, max_length=64, log_every=1)
    return RewardConfig(**{**defaults, **overrides})


def test_tiny_model_trains_with_one_forward_of_2b_rows_per_batch(tiny_base: Path, pair_files):
    train_path, eval_path = pair_files
    cfg = tiny_cfg(tiny_base, use_margin=True, center_rewards_coefficient=0.01)
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg.base_model)
    train_ds = build_dataset(load_records(train_path, cfg), tokenizer, cfg)
    eval_ds = build_dataset(load_records(eval_path, cfg), tokenizer, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}

    rows_per_forward: list[int] = []
    hook = model.register_forward_hook(lambda _m, _a, kw, _o: rows_per_forward.append(kw["input_ids"].shape[0]),
                                       with_kwargs=True)
    progress: list[tuple] = []
    logged: list[dict] = []
    metrics = fit(model, train_ds, eval_ds, cfg, progress=lambda *a: progress.append(a),
                  log=lambda step, m: logged.append(m))
    hook.remove()

    n_train_batches = math.ceil(24 / 4)
    train_rows = rows_per_forward[:n_train_batches]
    assert train_rows == [8] * n_train_batches  # one forward per batch, chosen + rejected stacked
    assert len(rows_per_forward) == n_train_batches + math.ceil(10 / cfg.eval_batch_size)
    assert math.isfinite(metrics["train/loss"])
    assert all(math.isfinite(m["train/loss"]) for m in logged)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert "classifier.weight" in moved and any(n.startswith("bert.encoder") for n in moved)
    # progress: (step, total, loss, eta) from 0 to total, eta counting down to 0
    assert progress[0] == (0, n_train_batches, None, None)
    assert [p[0] for p in progress[1:]] == list(range(1, n_train_batches + 1))
    assert progress[-1][3] == 0.0
    for key in ("reward/accuracy", "reward/margin_mean", "reward/loss", "reward/ece", "reward/mean", "reward/std"):
        assert math.isfinite(metrics[key]), key
    assert 0.0 <= metrics["reward/accuracy"] <= 1.0


def test_regression_objective_trains(tiny_base: Path, tmp_path: Path):
    rows = [{"prompt": f"question {i}", "response": "good answer" if i % 2 else "bad", "rating": 5 if i % 2 else 1}
            for i in range(12)]
    path = write_jsonl(tmp_path / "ratings.jsonl", rows)
    cfg = tiny_cfg(tiny_base, objective="regression", lr=5e-3, epochs=3)
    model, tokenizer = load_model_and_tokenizer(cfg.base_model)
    ds = build_dataset(load_records(path, cfg), tokenizer, cfg)
    assert ds.collate([0, 1, 2])["input_ids"].shape[0] == 3  # one row per response
    before = evaluate(model, ds, cfg)["reward/loss"]  # ~13: the fresh head predicts ~0 for ratings 1 and 5
    metrics = fit(model, ds, ds, cfg)
    assert math.isfinite(metrics["reward/loss"]) and metrics["reward/loss"] < before
    assert {"reward/mae", "reward/mean", "reward/std"} <= metrics.keys()


def test_train_saves_and_loaded_model_reproduces_rewards(tiny_base: Path, pair_files, tmp_path: Path):
    train_path, eval_path = pair_files
    out = tmp_path / "models" / "rm-v2"
    metrics = train(tiny_cfg(tiny_base, epochs=2), train_path, eval_path, out_dir=out, parent="rm-v1")

    assert sorted(p.name for p in out.parent.iterdir()) == ["rm-v2"]  # no temp dir left behind
    loaded = load_reward_model(out)
    meta = loaded.metadata
    assert meta["parent"] == "rm-v1"
    assert meta["data_sha256"] == file_sha256(train_path)
    assert meta["config"]["epochs"] == 2 and meta["objective"] == "pairwise"
    assert meta["metrics"] == json.loads(json.dumps(metrics))
    assert set(meta["versions"]) >= {"torch", "transformers", "python"}

    # the loaded model, scoring eval responses, gives back the eval statistics measured in training
    records = load_pair_records(eval_path)
    prompts = [r.prompt for r in records]
    chosen = torch.tensor(loaded.score(prompts, [r.chosen for r in records]))
    rejected = torch.tensor(loaded.score(prompts, [r.rejected for r in records]))
    both = torch.cat([chosen, rejected])
    assert both.mean().item() == pytest.approx(meta["reward_mean"], abs=1e-5)
    assert both.std(unbiased=False).item() == pytest.approx(meta["reward_std"], abs=1e-5)
    assert (chosen > rejected).double().mean().item() == pytest.approx(metrics["reward/accuracy"])


def test_save_refuses_non_empty_out_dir(tiny_base: Path, tmp_path: Path):
    model, tokenizer = load_model_and_tokenizer(str(tiny_base))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        save_reward_model(out, model, tokenizer, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    empty = tmp_path / "empty"
    empty.mkdir()  # an empty placeholder is fine
    save_reward_model(empty, model, tokenizer, {"parent": None})
    assert (empty / "metadata.json").exists() and (empty / "config.json").exists()


def test_synthetic_pairs_are_valid(tmp_path: Path):
    assert len(load_pair_records(write_jsonl(tmp_path / "p.jsonl", synthetic_pairs(5)))) == 5


@pytest.fixture(scope="session")
def tiny_gpt2_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random GPT-2 with the MiniLM tokenizer: the decoder-only path, where the score is
    read at the last real token and the model has no token type ids."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    from .conftest import minilm_dir

    path = tmp_path_factory.mktemp("tiny-gpt2")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32, n_layer=2, n_head=2, n_positions=128)
    GPT2Model(config).save_pretrained(path)
    return path


@pytest.mark.parametrize("base_fixture", ["tiny_base", "tiny_gpt2_base"])
def test_bert_and_gpt2_like_models_learn_a_separable_preference(base_fixture, request, tmp_path: Path):
    from .conftest import synthetic_pairs, write_jsonl

    base = request.getfixturevalue(base_fixture)
    train_path = write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(64, seed=1))
    eval_path = write_jsonl(tmp_path / "eval.jsonl", synthetic_pairs(32, seed=2))
    cfg = tiny_cfg(base, epochs=4, lr=3e-3, batch_size=8)
    torch.manual_seed(0)
    model, tokenizer = load_model_and_tokenizer(cfg.base_model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    metrics = fit(model, build_dataset(load_records(train_path, cfg), tokenizer, cfg),
                  build_dataset(load_records(eval_path, cfg), tokenizer, cfg), cfg)
    assert math.isfinite(metrics["train/loss"])
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())
    assert metrics["reward/accuracy"] >= 0.95, metrics
