"""Batched sampling from a tiny random Llama: prompt formats, ordering, stop tokens, seeds, and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from training.ml.cli_ppo import main as cli_main
from training.ml.generate import encode_prompt, generate, left_pad, prompt_messages, sample
from training.ml.policy import load_policy
from training.ml.ppo_config import GenerateConfig

from .tiny_causal import PROMPTS, build_tiny_causal


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_causal(tmp_path_factory.mktemp("tiny-llama-gen"), seed=1)


def test_hh_dialogues_become_chat_turns_and_plain_text_one_user_turn():
    hh = "\n\nHuman: hi there\n\nAssistant: hello\n\nHuman: tell me more\n\nAssistant:"
    assert prompt_messages(hh) == [
        {"role": "user", "content": "hi there"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "tell me more"},
    ]
    assert prompt_messages("what is 2+2?") == [{"role": "user", "content": "what is 2+2?"}]
    assert prompt_messages("Note: Human: is a word here") == [
        {"role": "user", "content": "Note: Human: is a word here"}
    ]


def test_prompts_use_the_chat_template_when_the_tokenizer_has_one(tiny_policy: Path):
    _, tokenizer = load_policy(str(tiny_policy))
    ids = encode_prompt(tokenizer, [{"role": "user", "content": "the cat"}], 64, chat=True)
    assert tokenizer.convert_ids_to_tokens(ids) == ["<user>", "the", "cat", "<assistant>"]
    plain = encode_prompt(tokenizer, "the cat", 64, chat=False)
    assert tokenizer.convert_ids_to_tokens(plain) == ["the", "cat"]
    assert (
        encode_prompt(tokenizer, "the cat is very small", 3, chat=False)
        == plain[:0] + tokenizer("is very small")["input_ids"]
    )  # cut from the left


def test_generate_returns_one_response_per_prompt_in_order_with_settings(tiny_policy: Path):
    model, tokenizer = load_policy(str(tiny_policy))
    cfg = GenerateConfig(max_new_tokens=6, temperature=1.0, batch_size=3, seed=7, device="cpu")
    results = generate(model, tokenizer, PROMPTS, cfg)
    assert [r["prompt_index"] for r in results] == list(range(len(PROMPTS)))
    for r in results:
        assert set(r) >= {"prompt_index", "text", "finished", "settings"}
        assert 1 <= r["num_tokens"] <= 6 and (r["finished"] or r["num_tokens"] == 6)
        assert "<eos>" not in r["text"] and "<pad>" not in r["text"]
        assert r["settings"]["top_k"] == 0 and r["settings"]["top_p"] == 1.0 and r["settings"]["temperature"] == 1.0
        assert r["settings"]["chat_template"] is True and r["settings"]["seed"] == 7
    assert [r["text"] for r in generate(model, tokenizer, PROMPTS, cfg)] == [r["text"] for r in results]  # same seed
    other = generate(model, tokenizer, PROMPTS, cfg.__class__(**{**cfg.to_dict(), "seed": 8}))
    assert [r["text"] for r in other] != [r["text"] for r in results]


def test_sampling_pads_after_each_rows_first_stop_token_and_ends_when_all_rows_stopped(tiny_policy: Path):
    model, tokenizer = load_policy(str(tiny_policy))
    pad = tokenizer.pad_token_id
    stop_ids = list(range(8, len(tokenizer), 2))  # half the words stop: rows end at different steps
    prompts = torch.tensor([[pad, 9, 10], [11, 12, 13], [pad, pad, 14], [15, 16, 17]])
    torch.manual_seed(3)
    out = sample(model, prompts, (prompts != pad).long(), 12, 1.5, stop_ids, pad)  # (4, R)
    is_stop = torch.isin(out, torch.tensor(stop_ids))
    assert is_stop.any(dim=1).all()
    first = is_stop.float().argmax(dim=1)  # (4,)
    assert out.shape[1] == int(first.max()) + 1  # no step after the last row stopped
    for row in range(4):
        assert (out[row, first[row] + 1 :] == pad).all()
    everything = list(range(len(tokenizer)))  # every token stops: one step only
    assert sample(model, prompts, (prompts != pad).long(), 12, 1.0, everything, pad).shape == (4, 1)


def test_cached_sampling_of_a_left_padded_batch_follows_each_prompt_alone(tiny_policy: Path):
    """At a near-zero temperature sampling is argmax; the KV-cached, left-padded batch must then pick
    what a plain full forward pass over each unpadded prompt picks, token by token."""
    model, tokenizer = load_policy(str(tiny_policy))
    rows = [encode_prompt(tokenizer, p, 64, chat=True) for p in PROMPTS[:4]]
    queries, mask = left_pad(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        batched = sample(model, queries, mask, 5, 1e-4, [10_000], tokenizer.pad_token_id)  # no stop: 5 tokens
        for i, row in enumerate(rows):
            ids = list(row)
            for _ in range(5):
                ids.append(int(model(input_ids=torch.tensor([ids])).logits[0, -1].argmax()))
            assert batched[i].tolist() == ids[len(row) :], i


def test_a_stop_token_that_is_not_one_token_is_rejected(tiny_policy: Path):
    from training.ml.config import ConfigError

    model, tokenizer = load_policy(str(tiny_policy))
    with pytest.raises(ConfigError, match="not a single token"):
        generate(model, tokenizer, ["the cat"], GenerateConfig(stop_tokens=["cat dog"], device="cpu"))


def test_cli_writes_one_jsonl_line_per_prompt(tiny_policy: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p, "id": f"p{i}"}) + "\n" for i, p in enumerate(PROMPTS)))
    out = tmp_path / "responses.jsonl"
    code = cli_main(
        [
            "generate",
            "--policy",
            str(tiny_policy),
            "--prompts",
            str(prompts),
            "--out",
            str(out),
            "--config-json",
            '{"max_new_tokens": 4, "batch_size": 4, "device": "cpu"}',
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [f"p{i}" for i in range(len(PROMPTS))]
    assert [r["prompt_index"] for r in rows] == list(range(len(PROMPTS)))
    assert json.loads(captured.out)["generate/count"] == len(PROMPTS)
    assert cli_main(["generate", "--policy", str(tiny_policy), "--prompts", str(prompts), "--out", str(out)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert (
        cli_main(
            [
                "generate",
                "--policy",
                str(tmp_path / "nope"),
                "--prompts",
                str(prompts),
                "--out",
                str(tmp_path / "x.jsonl"),
            ]
        )
        == 2
    )
    assert "model folder not found" in capsys.readouterr().err
