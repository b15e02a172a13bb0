"""PPO on a tiny random Llama with a synthetic reward: learning, KL control, resume, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.ml.cli_ppo import main as cli_main
from training.ml.generate import sample
from training.ml.policy import load_policy
from training.ml.ppo import forward, train, trimmed
from training.ml.ppo_checkpoint import CHECKPOINTS, ResumeError
from training.ml.ppo_config import PPOConfig
from training.ml.ppo_eval import EVAL_KEYS, evaluate_policy, mean_confidence_interval, student_t_quantile

from .tiny_causal import PROMPTS, build_tiny_causal, count_word_reward

# big steps so a 2-layer model learns within a few iterations; reward is the raw count of "good"
FAST = dict(
    rollout_batch_size=16,
    mini_batch_size=8,
    ppo_epochs=4,
    max_new_tokens=8,
    lr=3e-3,
    value_lr=1e-2,
    normalize_reward=False,
    missing_eos_penalty=None,
    target_kl=None,
    device="cpu",
    seed=0,
)


@pytest.fixture(autouse=True)
def one_thread():
    # tiny models: thread hand-offs cost more than the maths, and the test machine is shared
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal(tmp_path_factory.mktemp("tiny-llama"))


def run(path: Path, cfg: PPOConfig, **kwargs):
    policy, tokenizer = load_policy(str(path))
    reference, _ = load_policy(str(path))
    history: list[dict] = []
    metrics = train(
        cfg, policy, tokenizer, reference, count_word_reward(), PROMPTS, log=lambda step, m: history.append(m), **kwargs
    )
    return policy, metrics, history


def test_a_few_iterations_raise_the_reward_while_the_kl_stays_bounded(tiny_policy: Path):
    policy, metrics, history = run(tiny_policy, PPOConfig(iterations=10, kl_coef=0.05, **FAST), eval_prompts=PROMPTS)
    before = sum(m["reward/mean"] for m in history[:2]) / 2
    after = sum(m["reward/mean"] for m in history[-2:]) / 2
    assert after > before + 0.5, [m["reward/mean"] for m in history]
    # the k1 estimator (log pi - log pi_ref of sampled tokens) is unbiased but can dip below 0 on a batch
    assert all(-0.5 < m["ppo/kl"] < 10 for m in history), [m["ppo/kl"] for m in history]
    expected = {
        "reward/mean",
        "reward/std",
        "ppo/kl",
        "ppo/entropy",
        "ppo/clipfrac",
        "ppo/approx_kl",
        "ppo/policy_loss",
        "ppo/value_loss",
        "ppo/beta",
        "response/length_mean",
        "response/finished_share",
    }
    assert expected <= history[-1].keys()
    assert all(torch.isfinite(torch.tensor(list(m.values()))).all() for m in history)
    assert history[0]["ppo/kl"] == pytest.approx(0.0, abs=1e-5)  # the policy starts as the reference
    assert history[-1]["ppo/lr"] < history[0]["ppo/lr"]  # annealed

    # the final evaluation on fixed prompts: better than the starting policy, which has a KL of exactly 0
    start, tokenizer = load_policy(str(tiny_policy))
    reference, _ = load_policy(str(tiny_policy))
    before, _ = evaluate(start, tokenizer, reference, PROMPTS)
    assert set(EVAL_KEYS) <= metrics.keys()
    assert metrics["eval/prompts"] == before["eval/prompts"] == len(PROMPTS)
    assert before["eval/kl"] == 0.0 and metrics["eval/kl"] > 0.05
    assert metrics["eval/reward/mean"] > before["eval/reward/ci_high"], (metrics, before)
    for m in (metrics, before):
        assert m["eval/reward/ci_low"] <= m["eval/reward/mean"] <= m["eval/reward/ci_high"]


def evaluate(policy, tokenizer, reference, prompts, **kwargs):
    settings = dict(max_new_tokens=8, temperature=0.7, max_prompt_tokens=128, batch_size=4, seed=3)
    return evaluate_policy(policy, tokenizer, reference, count_word_reward(), prompts, **{**settings, **kwargs})


def test_the_evaluation_is_reproducible_bounded_in_time_and_gives_a_t_interval(tiny_policy: Path):
    policy, tokenizer = load_policy(str(tiny_policy))
    reference, _ = load_policy(str(tiny_policy))
    prompts = PROMPTS * 3  # more than one batch of 4
    metrics, details = evaluate(policy, tokenizer, reference, prompts)
    assert metrics == evaluate(policy, tokenizer, reference, prompts)[0]  # a fixed seed: same responses
    assert metrics["eval/prompts"] == len(prompts) == len(details["scores"]) == len(details["kls"])
    assert metrics["eval/kl"] == 0.0 and set(details["kls"]) == {0.0}  # the policy is the reference
    scores = details["scores"]
    n, mean = len(scores), sum(scores) / len(scores)
    sd = (sum((x - mean) ** 2 for x in scores) / (n - 1)) ** 0.5
    assert metrics["eval/reward/mean"] == pytest.approx(mean)
    half = student_t_quantile(0.975, n - 1) * sd / n**0.5
    assert metrics["eval/reward/ci_high"] == pytest.approx(mean + half)
    assert metrics["eval/reward/ci_low"] == pytest.approx(mean - half)

    bounded, _ = evaluate(policy, tokenizer, reference, prompts, time_limit_s=0.0)
    assert bounded["eval/prompts"] == 4  # the first batch always runs; no other starts after the limit


def test_student_t_quantiles_match_the_tables():
    for df, expected in ((1, 12.7062), (2, 4.3027), (5, 2.5706), (31, 2.0395), (1000, 1.9623)):
        assert student_t_quantile(0.975, df) == pytest.approx(expected, abs=1e-4)
    assert mean_confidence_interval([2.0])[0] == 2.0
    assert all(x != x for x in mean_confidence_interval([2.0])[1:])  # one value: no interval (nan)


def test_a_larger_kl_penalty_keeps_the_policy_closer_to_the_reference(tiny_policy: Path):
    _, _, loose = run(tiny_policy, PPOConfig(iterations=8, kl_coef=0.0, **FAST))
    _, _, tight = run(tiny_policy, PPOConfig(iterations=8, kl_coef=1.0, **FAST))
    assert sum(m["ppo/kl"] for m in tight[-3:]) < sum(m["ppo/kl"] for m in loose[-3:])


def test_adaptive_beta_rises_while_the_kl_is_above_target_and_falls_while_below(tiny_policy: Path):
    cfg = PPOConfig(iterations=6, **{**FAST, "target_kl": 0.05}, kl_horizon=100, kl_coef=0.1)
    _, _, history = run(tiny_policy, cfg)
    moves = [
        (now["ppo/kl"] > 0.05, nxt["ppo/beta"] > now["ppo/beta"])
        for now, nxt in zip(history[:-1], history[1:], strict=True)
    ]
    assert all(above == rose for above, rose in moves), moves
    assert {above for above, _ in moves} == {True, False}  # both directions were exercised


def test_resuming_after_a_crash_gives_the_same_policy_as_running_straight_through(tiny_policy: Path, tmp_path: Path):
    cfg = PPOConfig(iterations=4, checkpoint_every=2, kl_coef=0.05, **{**FAST, "target_kl": 1.0})
    straight, straight_metrics, _ = run(tiny_policy, cfg, out_dir=tmp_path / "straight")

    _, _, first_half = run(tiny_policy, cfg, out_dir=tmp_path / "resumed", stop_after=3)  # dies in iteration 4
    assert (tmp_path / "resumed" / CHECKPOINTS / "iter-000002" / "state.pt").is_file()
    assert not (tmp_path / "resumed" / "metadata.json").exists()
    with pytest.raises(ResumeError, match="different config.*iterations"):  # another schedule: not the same run
        run(tiny_policy, cfg.replace(iterations=5), out_dir=tmp_path / "resumed", resume_from=tmp_path / "resumed")
    resumed, resumed_metrics, second_half = run(
        tiny_policy, cfg, out_dir=tmp_path / "resumed", resume_from=tmp_path / "resumed"
    )
    assert len(second_half) == 2  # iterations 3 and 4 were redone from the checkpoint after iteration 2
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    same = {k: v for k, v in straight_metrics.items() if not k.startswith("time/")}
    assert same == {k: v for k, v in resumed_metrics.items() if not k.startswith("time/")}
    assert first_half[2]["reward/mean"] == second_half[0]["reward/mean"]  # iteration 3 sampled the same
    for out in ("straight", "resumed"):
        meta = json.loads((tmp_path / out / "metadata.json").read_text())
        assert meta["kl_controller"]["beta"] != 0.05  # the adaptive beta was restored and moved on
        assert not (tmp_path / out / CHECKPOINTS).exists()
    assert (
        json.loads((tmp_path / "straight" / "metadata.json").read_text())["kl_controller"]
        == json.loads((tmp_path / "resumed" / "metadata.json").read_text())["kl_controller"]
    )
    reloaded, _ = load_policy(str(tmp_path / "resumed"))  # the final folder is an ordinary causal LM
    assert torch.equal(
        reloaded.state_dict()["model.embed_tokens.weight"], resumed.state_dict()["model.embed_tokens.weight"]
    )


def test_left_padded_and_trimmed_batches_give_the_log_probs_of_each_sequence_alone(tiny_policy: Path):
    from training.ml.generate import encode_prompt, left_pad

    policy, tokenizer = load_policy(str(tiny_policy))
    rows = [encode_prompt(tokenizer, p, 64, chat=True) for p in PROMPTS[:4]]
    responses = torch.tensor([[10, 11, 12, 1], [13, 1, 0, 0], [14, 15, 16, 17], [18, 19, 1, 0]])
    lengths = torch.tensor([4, 2, 4, 3])
    queries, prompt_mask = left_pad(rows, tokenizer.pad_token_id)
    mask = (torch.arange(4)[None, :] < lengths[:, None]).long()
    ids, am = torch.cat([queries, responses], 1), torch.cat([prompt_mask, mask], 1)
    with torch.no_grad():
        batched = forward(policy, None, ids, am, responses, temperature=0.7).logprobs
        sub_ids, sub_am, r = trimmed(torch.tensor([1, 3]), ids, am, queries.shape[1], lengths)
        sub = forward(policy, None, sub_ids, sub_am, responses[[1, 3], :r], temperature=0.7).logprobs
        for i, row in enumerate(rows):
            alone_ids = torch.tensor([row + responses[i, : lengths[i]].tolist()])
            alone = forward(
                policy, None, alone_ids, torch.ones_like(alone_ids), responses[i : i + 1, : lengths[i]], temperature=0.7
            ).logprobs
            assert torch.allclose(alone[0], batched[i, : lengths[i]], atol=1e-5), i
    assert r == 3 and sub_ids.shape[1] < ids.shape[1]
    assert torch.allclose(sub[0, :2], batched[1, :2], atol=1e-5) and torch.allclose(sub[1], batched[3, :3], atol=1e-5)


def test_the_samplers_log_probs_and_values_are_those_of_a_full_forward_pass(tiny_policy: Path):
    """PPO takes the old log-probs and values from the sampling passes instead of a second pass of the
    policy: they must be the numbers that pass would give (the ratio of the first PPO step is then 1)."""
    from training.ml.generate import encode_prompt, left_pad, sample_rollout
    from training.ml.ppo import ValueHead
    from training.ml.ppo_core import first_stop_lengths, lengths_to_mask

    policy, tokenizer = load_policy(str(tiny_policy))
    head = ValueHead(policy.config.hidden_size)
    torch.nn.init.normal_(head.linear.weight)  # a zero head would make the values trivially equal
    rows = [encode_prompt(tokenizer, p, 64, chat=True) for p in PROMPTS]
    queries, prompt_mask = left_pad(rows, tokenizer.pad_token_id)
    stop = [tokenizer.eos_token_id, 10]  # a second stop word: rows end at different steps
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        rollout = sample_rollout(
            policy,
            queries,
            prompt_mask,
            8,
            0.7,
            stop,
            tokenizer.pad_token_id,
            generator,
            logprobs=True,
            value_head=head,
        )
        lengths, _ = first_stop_lengths(rollout.tokens, stop)
        mask = lengths_to_mask(lengths, rollout.tokens.shape[1])
        assert len(set(lengths.tolist())) > 1
        ids = torch.cat([queries, rollout.tokens], 1)
        am = torch.cat([prompt_mask, mask.long()], 1)
        full = forward(policy, head, ids, am, rollout.tokens, temperature=0.7)
    assert torch.allclose(rollout.logprobs * mask, full.logprobs * mask, atol=1e-5)
    assert torch.allclose(rollout.values * mask, full.values * mask, atol=1e-5)
    plain = sample(policy, queries, prompt_mask, 8, 0.7, stop, tokenizer.pad_token_id, torch.Generator().manual_seed(5))
    assert torch.equal(plain, rollout.tokens)  # recording changes nothing about what is sampled


@pytest.fixture(scope="module")
def tiny_reward_model(tmp_path_factory: pytest.TempPathFactory, tiny_base: Path) -> Path:
    """An (untrained) reward model saved the way `reward` saves one, with a BERT tokenizer unlike the policy's."""
    from training.ml.checkpoint import save_reward_model
    from training.ml.reward import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(str(tiny_base))
    out = tmp_path_factory.mktemp("rm") / "reward"
    meta = {"config": {"max_length": 64, "min_prompt_tokens": 8}, "reward_mean": 0.1, "reward_std": 0.5}
    return save_reward_model(out, model, tokenizer, meta)


def write_prompts(path: Path) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, "id": i}) + "\n" for i, p in enumerate(PROMPTS)))
    return path


def test_cli_runs_ppo_against_a_saved_reward_model_and_reports_progress(
    tiny_policy: Path, tiny_reward_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    config = json.dumps(
        {
            "iterations": 2,
            "rollout_batch_size": 4,
            "mini_batch_size": 2,
            "grad_accum_steps": 2,
            "ppo_epochs": 1,
            "max_new_tokens": 6,
            "device": "cpu",
        }
    )
    out, progress = tmp_path / "policy", tmp_path / "progress.jsonl"
    code = cli_main(
        [
            "ppo",
            "--policy",
            str(tiny_policy),
            "--reward",
            str(tiny_reward_model),
            "--prompts",
            str(write_prompts(tmp_path / "prompts.jsonl")),
            "--out",
            str(out),
            "--config-json",
            config,
            "--progress-file",
            str(progress),
            "--parent",
            "policy-v1",
            "--eval-prompts",
            str(write_prompts(tmp_path / "eval.jsonl")),
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads(captured.out)
    assert metrics["iteration"] == 2.0 and "ppo/kl" in metrics
    assert metrics["eval/prompts"] == len(PROMPTS) and set(EVAL_KEYS) <= metrics.keys()
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert all({"step", "total", "loss", "eta", "time"} <= line.keys() for line in lines)
    assert lines[-1]["step"] == lines[-1]["total"] == 2 and lines[-1]["phase"] == "done"
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["parent"] == "policy-v1" and meta["reward_normalisation"] == {"mean": 0.1, "std": 0.5}
    assert meta["metrics"]["eval/kl"] == metrics["eval/kl"] and len(meta["evaluation"]["scores"]) == len(PROMPTS)
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_cli_rejects_bad_input_before_loading_anything(
    tiny_policy: Path, tiny_reward_model: Path, tmp_path: Path, capsys: pytest.CaptureFixture
):
    prompts = write_prompts(tmp_path / "prompts.jsonl")
    bad_prompts = tmp_path / "bad.jsonl"
    bad_prompts.write_text('{"prompt": "fine"}\n{"text": "no prompt here"}\n')
    base = ["ppo", "--policy", str(tiny_policy), "--reward", str(tiny_reward_model), "--out", str(tmp_path / "o")]
    cases = [
        ([*base, "--prompts", str(bad_prompts)], "bad.jsonl:2: missing field 'prompt'"),
        ([*base, "--prompts", str(prompts), "--config-json", '{"lr": -1}'], "lr must be > 0"),
        ([*base, "--prompts", str(prompts), "--config-json", "[1]"], "must be a JSON object"),
        ([*base, "--prompts", str(tmp_path / "missing.jsonl")], "file not found"),
        ([*base[:4], str(tmp_path), *base[5:], "--prompts", str(prompts)], "no reward model"),
        ([*base, "--prompts", str(prompts), "--resume-from", str(tmp_path)], "no PPO checkpoint"),
    ]
    for argv, message in cases:
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


def test_the_command_line_picks_torch_threads_from_the_config_the_environment_or_the_free_cores(monkeypatch):
    from training.ml import cli_ppo

    assert 0 <= cli_ppo.busy_cores() < 10_000  # reads /proc/loadavg (or the load average) without failing
    cores = 4
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: cores)
    chosen = []
    monkeypatch.setattr(torch, "set_num_threads", chosen.append)
    assert cli_ppo.set_threads(3) == 3  # configured: exactly that
    monkeypatch.setattr(cli_ppo, "busy_cores", lambda: 0.2)
    assert cli_ppo.set_threads(0) == 4  # an idle machine: all cores
    monkeypatch.setattr(cli_ppo, "busy_cores", lambda: 2.6)
    assert cli_ppo.set_threads(0) == 1  # 1.4 cores free
    monkeypatch.setattr(cli_ppo, "busy_cores", lambda: 9.0)
    assert cli_ppo.set_threads(0) == 1  # never fewer than one
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cli_ppo.set_threads(0) == cores  # torch's own reading of OMP_NUM_THREADS stands
    assert chosen == [3, 4, 1, 1, cores]
