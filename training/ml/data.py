"""JSONL preference / rating data -> tokenized, length-bucketed, dynamically padded batches.

Records:
  pairwise:   {"prompt": str | [{"role", "content"}, ...], "chosen": str, "rejected": str, "margin"?: float}
  regression: {"prompt": str | [...], "response": str, "rating": number (1..5 by convention)}

Truncation policy (every record is kept, unlike TRL which drops over-long pairs):
  prompt and response are encoded as a text pair. With budget = max_length - special tokens:
  - if prompt + response fit, nothing is cut;
  - otherwise the response keeps its first tokens, up to budget - min(len(prompt), min_prompt_tokens),
    and the prompt fills the rest, cut from the LEFT: the latest turns, closest to the response,
    matter most for judging it, and a bit of prompt always survives so the reward stays conditional.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# (input_ids, token_type_ids) of one prompt+response sequence, special tokens included
Encoded = tuple[list[int], list[int]]


class DataError(ValueError):
    """Bad input data; the message names the file (and line) and is meant for end users."""


@dataclass
class PairRecord:
    prompt: str
    chosen: str
    rejected: str
    margin: float = 0.0


@dataclass
class RatingRecord:
    prompt: str
    response: str
    rating: float


# ---------------------------------------------------------------------------- reading


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """Return (line_number, object) for every non-blank line; errors carry the line number."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    rows: list[tuple[int, dict[str, Any]]] = []
    with open(path, encoding="utf-8") as f:
        try:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
                rows.append((lineno, obj))
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not valid UTF-8 ({exc.reason})") from None
    if not rows:
        raise DataError(f"{path}: no records (file is empty)")
    return rows


def flatten_prompt(prompt: Any, where: str) -> str:
    """Chat prompts become 'Role: content' turns separated by blank lines (HH-RLHF style)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, list):
        turns = []
        for i, msg in enumerate(prompt):
            if not (isinstance(msg, dict) and isinstance(msg.get("role"), str) and isinstance(msg.get("content"), str)):
                raise DataError(f"{where}: prompt[{i}] must be an object with string 'role' and 'content'")
            turns.append(f"{msg['role'].strip().capitalize()}: {msg['content']}")
        return "\n\n".join(turns)
    raise DataError(f"{where}: 'prompt' must be a string or a list of chat messages")


def _field(obj: dict[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in obj:
        raise DataError(f"{where}: missing field '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        raise DataError(f"{where}: field '{key}' has the wrong type ({type(value).__name__})")
    if isinstance(value, float) and not math.isfinite(value):
        raise DataError(f"{where}: field '{key}' must be finite")
    return value


def load_pair_records(path: str | Path) -> list[PairRecord]:
    records = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        margin = _field(obj, "margin", where, (int, float)) if obj.get("margin") is not None else 0.0
        records.append(PairRecord(
            prompt=flatten_prompt(_field(obj, "prompt", where, (str, list)), where),
            chosen=_field(obj, "chosen", where, str),
            rejected=_field(obj, "rejected", where, str),
            margin=float(margin),
        ))
    return records


def load_rating_records(path: str | Path) -> list[RatingRecord]:
    records = []
    for lineno, obj in read_jsonl(path):
        where = f"{path}:{lineno}"
        records.append(RatingRecord(
            prompt=flatten_prompt(_field(obj, "prompt", where, (str, list)), where),
            response=_field(obj, "response", where, str),
            rating=float(_field(obj, "rating", where, (int, float))),
        ))
    return records


# ---------------------------------------------------------------------------- tokenizing


def split_budget(n_prompt: int, n_response: int, budget: int, min_prompt: int) -> tuple[int, int]:
    """How many (prompt, response) tokens to keep; see the module docstring for the policy."""
    if n_prompt + n_response <= budget:
        return n_prompt, n_response
    keep_response = min(n_response, budget - min(n_prompt, min_prompt))
    return budget - keep_response, keep_response


class PairEncoder:
    """Encodes (prompt, response) text pairs with the truncation policy above."""

    def __init__(self, tokenizer: Any, max_length: int, min_prompt_tokens: int) -> None:
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise DataError(f"tokenizer {type(tokenizer).__name__} has no fast (tokenizers) backend")
        # Private copy: tokenizer.json may carry its own padding/truncation settings, which would
        # silently cut or pad our unbounded encodes.
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.budget = max_length - self.backend.num_special_tokens_to_add(is_pair=True)
        if self.budget < 2:
            raise DataError(f"max_length={max_length} leaves no room for text")
        self.min_prompt = min(min_prompt_tokens, self.budget - 1)
        self.pad_id = tokenizer.pad_token_id
        self.use_token_types = "token_type_ids" in getattr(tokenizer, "model_input_names", [])

    def encode(self, prompts: list[str], responses: list[str]) -> list[Encoded]:
        out: list[Encoded] = []
        enc_p = self.backend.encode_batch(prompts, add_special_tokens=False)
        enc_r = self.backend.encode_batch(responses, add_special_tokens=False)
        for p, r in zip(enc_p, enc_r, strict=True):
            keep_p, keep_r = split_budget(len(p.ids), len(r.ids), self.budget, self.min_prompt)
            p.truncate(keep_p, direction="left")
            r.truncate(keep_r, direction="right")
            e = self.backend.post_process(p, r, add_special_tokens=True)
            out.append((list(e.ids), list(e.type_ids)))
        return out


def pad_rows(rows: list[Encoded], pad_id: int, use_token_types: bool) -> dict[str, torch.Tensor]:
    """Dynamic right padding to the longest row of this batch only."""
    seq_len = max(len(ids) for ids, _ in rows)
    input_ids = torch.full((len(rows), seq_len), pad_id, dtype=torch.long)  # (rows, seq_len)
    attention_mask = torch.zeros((len(rows), seq_len), dtype=torch.long)  # (rows, seq_len)
    token_type_ids = torch.zeros((len(rows), seq_len), dtype=torch.long)  # (rows, seq_len)
    for i, (ids, types) in enumerate(rows):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        attention_mask[i, : len(ids)] = 1
        token_type_ids[i, : len(ids)] = torch.tensor(types)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if use_token_types:
        batch["token_type_ids"] = token_type_ids
    return batch


@dataclass
class PairDataset:
    chosen: list[Encoded]
    rejected: list[Encoded]
    margins: list[float]
    pad_id: int
    use_token_types: bool

    def __len__(self) -> int:
        return len(self.chosen)

    @property
    def lengths(self) -> list[int]:
        return [max(len(c[0]), len(r[0])) for c, r in zip(self.chosen, self.rejected, strict=True)]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Chosen rows first, then rejected: one forward pass over 2B rows, split with [:B] / [B:]."""
        rows = [self.chosen[i] for i in indices] + [self.rejected[i] for i in indices]
        batch = pad_rows(rows, self.pad_id, self.use_token_types)  # input_ids: (2B, seq_len)
        batch["margin"] = torch.tensor([self.margins[i] for i in indices], dtype=torch.float32)  # (B,)
        return batch


@dataclass
class RatingDataset:
    items: list[Encoded]
    ratings: list[float]
    pad_id: int
    use_token_types: bool

    def __len__(self) -> int:
        return len(self.items)

    @property
    def lengths(self) -> list[int]:
        return [len(ids) for ids, _ in self.items]

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = pad_rows([self.items[i] for i in indices], self.pad_id, self.use_token_types)  # (B, seq_len)
        batch["rating"] = torch.tensor([self.ratings[i] for i in indices], dtype=torch.float32)  # (B,)
        return batch


def build_pair_dataset(records: list[PairRecord], encoder: PairEncoder) -> PairDataset:
    prompts = [r.prompt for r in records]
    return PairDataset(
        chosen=encoder.encode(prompts, [r.chosen for r in records]),
        rejected=encoder.encode(prompts, [r.rejected for r in records]),
        margins=[r.margin for r in records],
        pad_id=encoder.pad_id,
        use_token_types=encoder.use_token_types,
    )


def build_rating_dataset(records: list[RatingRecord], encoder: PairEncoder) -> RatingDataset:
    return RatingDataset(
        items=encoder.encode([r.prompt for r in records], [r.response for r in records]),
        ratings=[r.rating for r in records],
        pad_id=encoder.pad_id,
        use_token_types=encoder.use_token_types,
    )


# ---------------------------------------------------------------------------- batching


def bucketed_batches(
    lengths: list[int], batch_size: int, seed: int, epoch: int, multiplier: int, shuffle: bool = True
) -> list[list[int]]:
    """Index batches of similar length, so dynamic padding wastes little compute.

    Shuffle, cut into mega-batches of batch_size * multiplier, sort each by length, split into
    batches, shuffle the batch order. Seeded by (seed, epoch) only, so every DDP rank builds the
    same list and shard_batches() can hand out disjoint slices. Without shuffle (evaluation) the
    whole set is simply sorted.
    """
    n = len(lengths)
    if not shuffle:
        order = sorted(range(n), key=lambda i: lengths[i])
        return [order[i : i + batch_size] for i in range(0, n, batch_size)]
    rng = random.Random(f"{seed}-{epoch}")
    order = list(range(n))
    rng.shuffle(order)
    mega = batch_size * multiplier
    batches: list[list[int]] = []
    for start in range(0, n, mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i], reverse=True)
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def shard_batches(batches: list[list[int]], rank: int, world_size: int, pad: bool = True) -> list[list[int]]:
    """This rank's share of the batches (DistributedSampler-like, but over whole batches).

    With pad=True the list is topped up by repeating batches from its start so every rank runs the
    same number of steps: a rank that stops early would leave the others hanging in all-reduce.
    """
    if world_size <= 1:
        return batches
    if pad and batches and len(batches) % world_size:
        extra = world_size - len(batches) % world_size
        batches = batches + [batches[i % len(batches)] for i in range(extra)]
    return batches[rank::world_size]
