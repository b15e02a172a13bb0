"""Data pipeline: reading, truncation policy, bucketing, sharding, collation."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from training.ml.config import ConfigError, RewardConfig
from training.ml.data import (
    DataError,
    PairEncoder,
    bucketed_batches,
    build_pair_dataset,
    load_pair_records,
    load_rating_records,
    shard_batches,
    split_budget,
)

from .conftest import minilm_dir, synthetic_pairs, write_jsonl


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(minilm_dir())


def ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_split_budget_policy():
    assert split_budget(10, 20, 100, 32) == (10, 20)  # fits: untouched
    assert split_budget(100, 50, 100, 32) == (50, 50)  # long prompt: prompt gives way
    assert split_budget(10, 200, 100, 32) == (10, 90)  # long response, short prompt: prompt kept whole
    assert split_budget(100, 200, 100, 32) == (32, 68)  # both long: min_prompt tokens survive


def test_truncation_cuts_prompt_from_left_and_keeps_response(tokenizer):
    words = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen".split()
    prompt, response = " ".join(words), "the answer is yes"
    encoder = PairEncoder(tokenizer, max_length=12, min_prompt_tokens=2)
    [(input_ids, type_ids)] = encoder.encode([prompt], [response])

    resp_ids = ids(tokenizer, response)
    n_prompt = 12 - 3 - len(resp_ids)  # [CLS] prompt [SEP] response [SEP]
    expected = [tokenizer.cls_token_id, *ids(tokenizer, prompt)[-n_prompt:], tokenizer.sep_token_id,
                *resp_ids, tokenizer.sep_token_id]
    assert input_ids == expected
    assert tokenizer.decode(input_ids[1 : 1 + n_prompt]) == " ".join(words[-n_prompt:])  # the END of the prompt
    assert type_ids == [0] * (n_prompt + 2) + [1] * (len(resp_ids) + 1)


def test_overlong_response_keeps_its_start_and_a_bit_of_prompt(tokenizer):
    prompt = "alpha beta gamma delta epsilon"
    response = " ".join(["word"] * 50)
    encoder = PairEncoder(tokenizer, max_length=20, min_prompt_tokens=2)
    [(input_ids, _)] = encoder.encode([prompt], [response])
    assert len(input_ids) == 20
    # the last two prompt tokens survive, the response fills the rest from its beginning
    assert input_ids[1:3] == ids(tokenizer, prompt)[-2:]
    assert input_ids[4:-1] == ids(tokenizer, response)[:15]


def test_encoder_ignores_tokenizer_json_padding(tokenizer):
    # MiniLM's tokenizer.json pads to 128: a naive backend encode would return 128 ids
    [(input_ids, _)] = PairEncoder(tokenizer, 256, 32).encode(["hi"], ["yes"])
    assert len(input_ids) == 5


def test_chat_prompts_are_flattened_with_role_labels(tmp_path: Path):
    path = write_jsonl(tmp_path / "d.jsonl", [{
        "prompt": [{"role": "system", "content": "be nice"}, {"role": "user", "content": "hi"}],
        "chosen": "hello", "rejected": "go away",
    }])
    [record] = load_pair_records(path)
    assert record.prompt == "System: be nice\n\nUser: hi"
    assert record.margin == 0.0


def test_bad_jsonl_line_reports_line_number(tmp_path: Path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n\n{"prompt": "p", "chosen": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        load_pair_records(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "no records"),
        ('{"prompt": "p", "chosen": "a"}\n', r":1: missing field 'rejected'"),
        ('{"prompt": "p", "chosen": 3, "rejected": "b"}\n', r":1: field 'chosen' has the wrong type"),
        ('[1, 2]\n', r":1: expected a JSON object"),
    ],
)
def test_invalid_records_are_rejected_clearly(tmp_path: Path, content: str, message: str):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_pair_records(path)


def test_rating_records(tmp_path: Path):
    path = write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "response": "r", "rating": 4}])
    [record] = load_rating_records(path)
    assert record.rating == 4.0


def test_bucketing_covers_everything_once_and_groups_similar_lengths():
    lengths = [(i * 37) % 101 for i in range(203)]
    batches = bucketed_batches(lengths, batch_size=8, seed=3, epoch=0, multiplier=5)
    assert sorted(i for b in batches for i in b) == list(range(203))
    for b in batches:
        assert [lengths[i] for i in b] == sorted((lengths[i] for i in b), reverse=True)
    assert batches == bucketed_batches(lengths, 8, 3, 0, 5)  # same on every rank
    assert batches != bucketed_batches(lengths, 8, 3, 1, 5)  # reshuffled each epoch


def test_sharding_is_disjoint_and_balanced():
    batches = [[i] for i in range(7)]
    shards = [shard_batches(batches, r, 2) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == 4  # padded so DDP ranks step in lockstep
    assert {b[0] for s in shards for b in s} == set(range(7))
    eval_shards = [shard_batches(batches, r, 2, pad=False) for r in range(2)]
    assert sorted(b[0] for s in eval_shards for b in s) == list(range(7))


def test_collate_stacks_chosen_then_rejected_with_dynamic_padding(tokenizer, tmp_path: Path):
    records = load_pair_records(write_jsonl(tmp_path / "d.jsonl", synthetic_pairs(6)))
    ds = build_pair_dataset(records, PairEncoder(tokenizer, 64, 8))
    batch = ds.collate([0, 1, 2])
    longest = max(ds.lengths[i] for i in (0, 1, 2))
    assert batch["input_ids"].shape == (6, longest)  # (2B, seq_len), padded to this batch only
    assert batch["attention_mask"].sum(1).tolist() == [len(ds.chosen[i][0]) for i in (0, 1, 2)] + [
        len(ds.rejected[i][0]) for i in (0, 1, 2)
    ]
    assert batch["token_type_ids"].shape == (6, longest)
    assert batch["margin"].shape == (3,)


def test_config_round_trip_and_unknown_keys():
    cfg = RewardConfig(base_model="x", use_margin=True, center_rewards_coefficient=0.01)
    assert RewardConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="unknown config key.*learning_rate"):
        RewardConfig.from_dict({"learning_rate": 1e-5})
    with pytest.raises(ConfigError, match="objective"):
        RewardConfig.from_dict({"objective": "dpo"})
    with pytest.raises(ConfigError, match="batch_size"):
        RewardConfig(batch_size=0)
