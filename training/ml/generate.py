"""Sampling responses from a causal LM: prompt formatting, left padding and a plain sampling loop.

The sampler is written out rather than delegated to `model.generate()`: generate() silently merges
the model's own generation_config (a checkpoint that ships top_k=50 or temperature=0.6 would
override ours whenever our value equals the library default), and PPO needs to know exactly which
distribution each token came from. Here it is always softmax(logits / temperature): top_k=0, top_p=1.
"""

from __future__ import annotations

import inspect
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .config import ConfigError
from .data import DataError
from .ppo_config import GenerateConfig
from .ppo_core import first_stop_lengths

# "\n\nHuman: ...\n\nAssistant: ..." dialogues (HH-RLHF style): the speaker markers split the turns
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ ]?")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def prompt_messages(prompt: Any, where: str = "prompt") -> list[dict[str, str]]:
    """Any accepted prompt as chat messages: a message list as is, an HH dialogue split into turns,
    any other string as one user message. A trailing empty assistant turn (the cue) is dropped."""
    if isinstance(prompt, list):
        for i, msg in enumerate(prompt):
            if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and isinstance(msg.get("content"), str)):
                raise DataError(f"{where}: prompt[{i}] must be an object with string 'role' and 'content'")
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    if not isinstance(prompt, str):
        raise DataError(f"{where}: 'prompt' must be a string or a list of chat messages")
    text = prompt.strip("\n")
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():  # no speaker markers, or text before the first one
        return [{"role": "user", "content": prompt}]
    messages = [
        {"role": _HH_ROLES[speaker], "content": content.strip()}
        for speaker, content in zip(parts[1::2], parts[2::2], strict=True)
    ]
    if messages and messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
        messages.pop()
    return messages


def uses_chat_template(tokenizer: Any, enabled: bool) -> bool:
    return enabled and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(tokenizer: Any, prompt: Any, max_tokens: int, chat: bool, where: str = "prompt") -> list[int]:
    """Token ids of one prompt, ready for the response to follow; cut from the left to max_tokens."""
    if chat:
        text = tokenizer.apply_chat_template(prompt_messages(prompt, where), add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # the template already has them
    else:
        if isinstance(prompt, list):
            prompt_messages(prompt, where)  # validates
            prompt = "\n\n".join(f"{m['role'].strip().capitalize()}: {m['content']}" for m in prompt)
        elif not isinstance(prompt, str):
            raise DataError(f"{where}: 'prompt' must be a string or a list of chat messages")
        ids = tokenizer(prompt)["input_ids"]
    if not ids:
        raise DataError(f"{where}: the prompt is empty")
    return list(ids[-max_tokens:])


def stop_token_ids(tokenizer: Any, model: Any, extra: list[str]) -> list[int]:
    """EOS of the tokenizer and of the model's generation config (chat models often end turns with
    their own token), plus any configured stop tokens, each of which must be a single token."""
    ids: list[int] = []
    candidates: list[Any] = [
        tokenizer.eos_token_id,
        getattr(getattr(model, "generation_config", None), "eos_token_id", None),
    ]
    for value in candidates:
        ids.extend(value if isinstance(value, list) else [value] if value is not None else [])
    for token in extra:
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            encoded = tokenizer(token, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                raise ConfigError(f"stop token {token!r} is not a single token of this tokenizer")
            token_id = encoded[0]
        ids.append(token_id)
    if not ids:
        raise ConfigError("the tokenizer has no EOS token and no stop_tokens are configured: responses could not end")
    return sorted(set(ids))


def pad_id_of(tokenizer: Any, stop_ids: list[int]) -> int:
    """Pad with the tokenizer's pad token, else a stop token: pads are masked out everywhere anyway."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]


def left_pad(
    rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prompts right-aligned so every response starts at the same column: (input_ids, attention_mask), (B, P)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (B, P)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)  # (B, P)
    for i, row in enumerate(rows):
        input_ids[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
        attention_mask[i, width - len(row) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that count only real tokens, so a left-padded row sees the same positions as unpadded."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)


def _accepts_logits_to_keep(model: Any) -> bool:
    return "logits_to_keep" in inspect.signature(model.forward).parameters


@dataclass
class Rollout:
    """What sample_rollout returns: the tokens and, when asked, what PPO needs to know about each."""

    tokens: torch.Tensor  # (B, R) sampled ids; pad_id after a row's first stop token
    logprobs: torch.Tensor | None = None  # (B, R) log p(token) under softmax(logits / temperature)
    values: torch.Tensor | None = None  # (B, R) value_head(state that chose the token)


@torch.no_grad()
def sample(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_ids: list[int],
    pad_id: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Sample up to max_new_tokens after left-padded prompts with a KV cache. Returns (B, R), R <= max_new_tokens;
    after a row's first stop token its remaining columns hold pad_id. Stops early once every row has stopped."""
    return sample_rollout(
        model, input_ids, attention_mask, max_new_tokens, temperature, stop_ids, pad_id, generator
    ).tokens


@torch.no_grad()
def sample_rollout(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    max_new_tokens: int,
    temperature: float,
    stop_ids: list[int],
    pad_id: int,
    generator: torch.Generator | None = None,
    logprobs: bool = False,
    value_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> Rollout:
    """`sample`, optionally keeping the log-prob of each sampled token (at the temperature) and the value of
    the state that chose it, read off the same forward passes that sampled it.

    This is what saves PPO a separate no-grad pass of the policy over every rollout: the logits and the
    final hidden state of each step are already there. They match a full forward pass of the finished
    sequences up to float rounding (the KV cache computes the same attention in another order).
    """
    B = input_ids.shape[0]
    stops = torch.tensor(stop_ids, device=input_ids.device)
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)  # (B,)
    extra: dict[str, Any] = {"logits_to_keep": 1} if _accepts_logits_to_keep(model) else {}
    if value_head is not None:
        extra["output_hidden_states"] = True
    positions = position_ids_from_mask(attention_mask)  # (B, P)
    step_ids, step_positions, past = input_ids, positions, None
    tokens: list[torch.Tensor] = []
    token_logprobs: list[torch.Tensor] = []
    values: list[torch.Tensor] = []
    for _ in range(max_new_tokens):
        out = model(
            input_ids=step_ids,
            attention_mask=attention_mask,
            position_ids=step_positions,
            past_key_values=past,
            use_cache=True,
            **extra,
        )
        logits = out.logits[:, -1, :].float() / temperature  # (B, V)
        next_ids = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator).squeeze(1)  # (B,)
        if logprobs:
            token_logprobs.append(torch.log_softmax(logits, dim=-1).gather(-1, next_ids[:, None]).squeeze(1))
        if value_head is not None:
            values.append(value_head(out.hidden_states[-1][:, -1]))  # (B,)
        next_ids = torch.where(finished, torch.full_like(next_ids, pad_id), next_ids)
        tokens.append(next_ids)
        finished |= torch.isin(next_ids, stops)
        if bool(finished.all()):
            break
        past = out.past_key_values
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)  # (B, L + 1)
        step_positions = step_positions[:, -1:] + 1  # (B, 1)
        step_ids = next_ids[:, None]  # (B, 1)
    return Rollout(
        tokens=torch.stack(tokens, dim=1),
        logprobs=torch.stack(token_logprobs, dim=1) if logprobs else None,
        values=torch.stack(values, dim=1) if value_head is not None else None,
    )


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[Any],
    cfg: GenerateConfig,
    progress: Callable[[int, int, float | None, float | None], None] | None = None,
) -> list[dict[str, Any]]:
    """Sample one response per prompt. Returns, in prompt order, {prompt_index, text, finished, settings}.

    Prompts are sorted by length before batching, so each batch pads little; the sampler's seed is set
    once, so the same prompts, model and settings give the same responses.
    """
    device = next(model.parameters()).device
    chat = uses_chat_template(tokenizer, cfg.chat_template)
    stop_ids = stop_token_ids(tokenizer, model, cfg.stop_tokens)
    pad_id = pad_id_of(tokenizer, stop_ids)
    encoded = [encode_prompt(tokenizer, p, cfg.max_prompt_tokens, chat, f"prompt {i}") for i, p in enumerate(prompts)]
    settings = {
        **cfg.to_dict(),
        "top_k": 0,
        "top_p": 1.0,
        "chat_template": chat,
        "model": str(getattr(model.config, "_name_or_path", "")) or None,
    }
    settings.pop("device")
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    was_training = model.training
    model.eval()
    results: list[dict[str, Any] | None] = [None] * len(prompts)
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    t0 = time.time()
    try:
        for start in range(0, len(order), cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            input_ids, attention_mask = left_pad([encoded[i] for i in idx], pad_id, device)  # (b, P)
            responses = sample(
                model, input_ids, attention_mask, cfg.max_new_tokens, cfg.temperature, stop_ids, pad_id, generator
            ).cpu()  # (b, R)
            lengths, finished = first_stop_lengths(responses, stop_ids)  # (b,), (b,)
            for row, i in enumerate(idx):
                kept = responses[row, : lengths[row]].tolist()
                results[i] = {
                    "prompt_index": i,
                    "text": tokenizer.decode(kept, skip_special_tokens=True).strip(),
                    "finished": bool(finished[row]),
                    "num_tokens": len(kept),
                    "settings": settings,
                }
            if progress:
                done = min(start + cfg.batch_size, len(order))
                elapsed = time.time() - t0
                progress(done, len(order), None, elapsed / done * (len(order) - done))
    finally:
        model.train(was_training)
    settings["seconds"] = round(time.time() - t0, 3)
    return [r for r in results if r is not None]
