"""Reading preference JSONL: every line checked before anything is written.

Two shapes, mixable in one file (DESIGN.md, "Data contracts"):

- a labelled pair, as TRL writes and reads it:
  {"prompt": ..., "chosen": ..., "rejected": ..., "margin"?: number, "annotator"?: str,
   "choice"?: "tie" | "both_bad", "tie"?: bool}
- a prompt with responses to compare:
  {"prompt": ..., "responses": [str | {"text": str, "source"?: str, "model"?: str}, ...]}

A prompt is a non-empty string or a list of {"role", "content"} turns. `chosen` and `rejected` are
strings, or TRL's conversational form: a list of messages whose last one is the assistant's answer.
Other keys are ignored, so files from other tools (PandaLM's `models`, `idx`) load as they are.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO, NamedTuple

try:
    # orjson reads a line two to three times faster than json; see _load for how the two agree.
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    orjson = None

DEFAULT_MAX_LINE_BYTES = 1024 * 1024
MAX_REPORTED_ERRORS = 50
ROLES = ("system", "user", "assistant")


class ImportFileError(Exception):
    """The file cannot be imported. `errors` lists (line number, reason); nothing was written."""

    def __init__(self, errors: list[tuple[int, str]]):
        self.errors = errors
        super().__init__(self.format())

    def format(self) -> str:
        shown = [f"line {n}: {reason}" if n else reason for n, reason in self.errors[:MAX_REPORTED_ERRORS]]
        if len(self.errors) > MAX_REPORTED_ERRORS:
            shown.append(f"... and {len(self.errors) - MAX_REPORTED_ERRORS} more errors")
        return "\n".join(shown)


class ResponseItem(NamedTuple):
    text: str
    source: str | None


@dataclass(slots=True)
class Record:
    """One valid line. For a pair, responses are [chosen, rejected] and `choice` says how they
    relate: "chosen" (the first won), "tie" or "both_bad"."""

    line: int
    prompt: str | list[dict]
    responses: list[ResponseItem]
    is_pair: bool
    choice: str = "chosen"
    margin: float | None = None
    annotator: str | None = None
    extra: dict = field(default_factory=dict)


class LineError(ValueError):
    pass


def _prompt(value: object) -> str | list[dict]:
    if isinstance(value, str):
        if not value.strip():
            raise LineError('"prompt" is empty')
        return value
    if isinstance(value, list):
        if not value:
            raise LineError('"prompt" is an empty list of turns')
        turns = []
        for i, turn in enumerate(value):
            if (
                not isinstance(turn, dict)
                or not isinstance(turn.get("role"), str)
                or not isinstance(turn.get("content"), str)
            ):
                raise LineError(f'"prompt" turn {i + 1} must be an object with string "role" and "content"')
            if turn["role"] not in ROLES:
                raise LineError(f'"prompt" turn {i + 1} has role {turn["role"]!r}; expected one of {", ".join(ROLES)}')
            turns.append({"role": turn["role"], "content": turn["content"]})
        if not any(t["content"].strip() for t in turns):
            raise LineError('"prompt" turns are all empty')
        return turns
    if value is None:
        raise LineError('missing "prompt"')
    raise LineError(f'"prompt" must be a string or a list of turns, not {type(value).__name__}')


def _answer(name: str, value: object) -> str:
    # An empty answer is allowed: it is real data (an assistant that said nothing, and was preferred).
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value:
        last = value[-1]
        if isinstance(last, dict) and last.get("role") == "assistant" and isinstance(last.get("content"), str):
            return last["content"]
        raise LineError(f'"{name}" as a list must end with an {{"role": "assistant", "content": str}} message')
    if value is None:
        raise LineError(f'missing "{name}"')
    raise LineError(f'"{name}" must be a string or a list of messages, not {type(value).__name__}')


def _finite(number: int | float) -> bool:
    try:
        return math.isfinite(number)
    except OverflowError:  # an integer of hundreds of digits, which no float holds
        return False


def _optional_str(obj: dict, key: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise LineError(f'"{key}" must be a non-empty string')
    if len(value) > 200:
        raise LineError(f'"{key}" is longer than 200 characters')
    return value.strip()


def _pair(obj: dict, line: int, prompt: str | list[dict]) -> Record:
    chosen = _answer("chosen", obj.get("chosen"))
    rejected = _answer("rejected", obj.get("rejected"))
    if chosen == rejected:
        raise LineError('"chosen" and "rejected" are identical')
    margin = obj.get("margin")
    if margin is not None:
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not _finite(margin) or margin < 0:
            raise LineError('"margin" must be a finite number >= 0')
    choice = obj.get("choice", "chosen")
    if obj.get("tie") is True:
        choice = "tie"
    elif obj.get("tie") not in (None, False):
        raise LineError('"tie" must be true or false')
    if choice not in ("chosen", "tie", "both_bad"):
        raise LineError('"choice" must be "tie" or "both_bad" when given')
    return Record(
        line=line,
        prompt=prompt,
        responses=[ResponseItem(chosen, None), ResponseItem(rejected, None)],
        is_pair=True,
        choice=choice,
        margin=None if margin is None else float(margin),
        annotator=_optional_str(obj, "annotator"),
    )


def _responses(obj: dict, line: int, prompt: str | list[dict]) -> Record:
    items = obj["responses"]
    if not isinstance(items, list) or not items:
        raise LineError('"responses" must be a non-empty list')
    responses: list[ResponseItem] = []
    seen: dict[str, int] = {}
    for i, item in enumerate(items, start=1):
        if isinstance(item, str):
            text, source = item, None
        elif isinstance(item, dict):
            text = item.get("text")
            if not isinstance(text, str):
                raise LineError(f'response {i} needs a string "text"')
            source = _optional_str(item, "source") or _optional_str(item, "model")
        else:
            raise LineError(f'response {i} must be a string or an object with "text"')
        if text in seen:
            raise LineError(f"responses {seen[text]} and {i} are identical")
        seen[text] = i
        responses.append(ResponseItem(text, source))
    return Record(line=line, prompt=prompt, responses=responses, is_pair=False)


class OversizedLine(int):
    """Stands for a line longer than the limit, by its size: its bytes were read past, not kept."""


def bounded_lines(stream: BinaryIO, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Iterator[bytes | OversizedLine]:
    """The lines of a binary stream, holding at most max_line_bytes of one line in memory."""
    while True:
        raw = stream.readline(max_line_bytes + 2)
        if not raw:
            return
        if len(raw.rstrip(b"\r\n")) <= max_line_bytes:
            yield raw
            continue
        size = len(raw)
        while not raw.endswith(b"\n"):
            raw = stream.readline(1 << 20)
            if not raw:
                break
            size += len(raw)
        yield OversizedLine(size)


_BLANK = object()


def _load(raw: bytes) -> object:
    """The JSON value of a line, or _BLANK for a line of white space.

    orjson reads the lines it accepts as json.loads would (same values, the last of duplicate
    keys wins), except that an integer past 64 bits comes back as a float: the only number read
    is `margin`, which becomes a float anyway. Any line orjson refuses goes to json.loads, which
    decides: the lines orjson is stricter about (NaN, a lone surrogate escape, an integer too
    large for a float, deep nesting) read, or fail, as they always did, and every refused line
    gets the standard library's message."""
    if orjson is not None:
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LineError(f"not valid UTF-8 (byte {exc.start + 1})") from None
    if not text.strip():
        return _BLANK
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
    except RecursionError:
        raise LineError("invalid JSON: nested too deeply") from None


def parse_line(raw: bytes | OversizedLine, line: int, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> Record | None:
    """One line to a Record, None for a blank line, or LineError saying what is wrong."""
    if isinstance(raw, OversizedLine) or len(raw) > max_line_bytes + 2:
        size = int(raw) if isinstance(raw, OversizedLine) else len(raw)
        raise LineError(f"line is {size:,} bytes, over the limit of {max_line_bytes:,}")
    obj = _load(raw)
    if obj is _BLANK:
        return None
    if not isinstance(obj, dict):
        raise LineError(f"expected a JSON object, got {type(obj).__name__}")
    prompt = _prompt(obj.get("prompt"))
    has_pair = "chosen" in obj or "rejected" in obj
    if has_pair and "responses" in obj:
        raise LineError('a line has either "chosen"/"rejected" or "responses", not both')
    if has_pair:
        return _pair(obj, line, prompt)
    if "responses" in obj:
        return _responses(obj, line, prompt)
    raise LineError('expected "chosen" and "rejected", or "responses"')


NO_RECORDS = (0, "the file has no records")


def iter_records(
    lines: Iterable[bytes | OversizedLine], errors: list[tuple[int, str]], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> Iterator[Record]:
    """The good records of a file, in order, as its lines are read; each bad line is added to
    `errors` as (line number, reason) and passed over."""
    for number, raw in enumerate(lines, start=1):
        try:
            record = parse_line(raw, number, max_line_bytes)
        except LineError as exc:
            errors.append((number, str(exc)))
            continue
        if record is not None:
            yield record


def read_records(lines: Iterable[bytes | OversizedLine], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES) -> list[Record]:
    """Every record of a file, or ImportFileError with every bad line. Lines are bytes so that a
    file in the wrong encoding is reported by line instead of failing as a whole."""
    errors: list[tuple[int, str]] = []
    records = list(iter_records(lines, errors, max_line_bytes))
    if errors:
        raise ImportFileError(errors)
    if not records:
        raise ImportFileError([NO_RECORDS])
    return records
