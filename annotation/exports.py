"""Streamed writers for exported preferences: TRL JSONL, its conversational variant, CSV, Parquet.

Each writer turns an iterator of export rows (annotation.selectors.iter_export_rows*) into an
iterator of byte chunks that an HTTP response or a file can consume as they come. Nothing holds
more than one chunk of rows: Parquet is written one row group per chunk, and the footer last.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq

try:
    # orjson encodes a JSONL row several times faster than the standard library, which is most of
    # an export's time at a million rows; without it the output is the same, only slower.
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    orjson = None

# Rows per yielded chunk (and per Parquet row group): large enough that the per-chunk costs
# (a socket write, a row group header) vanish, small enough that a chunk is a megabyte or two.
CHUNK_ROWS = 2000


def as_conversational(row: dict) -> dict:
    """TRL's conversational variant: the prompt as turns and each answer as an assistant message."""
    prompt = row["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {
        **row,
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": row["chosen"]}],
        "rejected": [{"role": "assistant", "content": row["rejected"]}],
    }


def _chunks(rows: Iterable[dict], size: int | None = None) -> Iterator[list[dict]]:
    size = size or CHUNK_ROWS
    iterator = iter(rows)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _isoformat(value):
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_line_encoder() -> Callable[[dict], bytes]:
    if orjson is not None:
        return orjson.dumps
    encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=_isoformat).encode
    return lambda row: encode(row).encode("utf-8")


def write_jsonl(rows: Iterable[dict], shape: Callable[[dict], dict] | None = None) -> Iterator[bytes]:
    """One JSON object a line; `created_at` (a datetime) is written in ISO 8601."""
    dumps = _json_line_encoder()
    for chunk in _chunks(rows):
        if shape is not None:
            chunk = [shape(row) for row in chunk]
        lines = [dumps(row) for row in chunk]
        lines.append(b"")  # so that the join ends the last line too, without copying the chunk again
        data = b"\n".join(lines)
        # Dropped before yielding: a suspended generator keeps its locals, and these would stay
        # alive beside the next chunk.
        del chunk, lines
        yield data


def _flat_prompt(prompt: str | list) -> str:
    # A chat prompt has no single text; tabular formats carry its turns as JSON in the same column.
    return prompt if isinstance(prompt, str) else json.dumps(prompt, ensure_ascii=False)


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType


RAW_COLUMNS = [
    Column("prompt", pa.string()),
    Column("chosen", pa.string()),
    Column("rejected", pa.string()),
    Column("margin", pa.float64()),
    Column("comparison_id", pa.int64()),
    Column("annotator", pa.string()),
    Column("created_at", pa.timestamp("us", tz="UTC")),
    Column("choice", pa.string()),
]
AGGREGATED_COLUMNS = [
    Column("prompt", pa.string()),
    Column("chosen", pa.string()),
    Column("rejected", pa.string()),
    Column("margin", pa.float64()),
    Column("comparison_id", pa.int64()),
    Column("agreement", pa.float64()),
    Column("n_labels", pa.int64()),
    Column("created_at", pa.timestamp("us", tz="UTC")),
    Column("choice", pa.string()),
]


def columns_for(mode: str) -> list[Column]:
    return AGGREGATED_COLUMNS if mode == "aggregated" else RAW_COLUMNS


def _column_values(chunk: list[dict], columns: list[Column]) -> dict[str, list]:
    values: dict[str, list] = {}
    for column in columns:
        name = column.name
        if name == "prompt":
            values[name] = [_flat_prompt(row["prompt"]) for row in chunk]
        elif name == "choice":
            values[name] = [row.get("choice") for row in chunk]
        else:
            values[name] = [row[name] for row in chunk]
    return values


def write_csv(rows: Iterable[dict], mode: str = "raw") -> Iterator[bytes]:
    # Both column lists start with the prompt and end with created_at and choice.
    columns = [c.name for c in columns_for(mode)]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for chunk in _chunks(rows):
        for row in chunk:
            writer.writerow(
                [
                    _flat_prompt(row["prompt"]),
                    *(row[name] for name in columns[1:-2]),
                    row["created_at"].isoformat(),
                    row.get("choice", ""),
                ]
            )
        data = buffer.getvalue().encode("utf-8")
        buffer.seek(0)
        buffer.truncate()
        del chunk  # not kept alive beside the next chunk while suspended
        yield data
    tail = buffer.getvalue()
    if tail:
        yield tail.encode("utf-8")


class _Drain:
    """A write-only file for ParquetWriter whose bytes are taken out after each row group."""

    def __init__(self):
        self.parts: list[bytes] = []
        self.closed = False
        self.position = 0

    def write(self, data) -> int:
        data = bytes(data)
        self.parts.append(data)
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def write_parquet(rows: Iterable[dict], mode: str = "raw") -> Iterator[bytes]:
    columns = columns_for(mode)
    schema = pa.schema([pa.field(c.name, c.type) for c in columns])
    sink = _Drain()
    # Dictionary pages only for the short repetitive columns: building dictionaries of the texts
    # cost more time than it saved bytes, and zstd finds their repeats anyway.
    writer = pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=["annotator", "choice"])
    try:
        for chunk in _chunks(rows):
            table = pa.table(_column_values(chunk, columns), schema=schema)
            writer.write_table(table, row_group_size=len(chunk))
            del chunk, table  # not kept alive beside the next chunk while suspended
            yield sink.take()
    finally:
        writer.close()
    yield sink.take()


@dataclass(frozen=True)
class ExportFormat:
    name: str
    content_type: str
    extension: str


FORMATS = {
    "trl": ExportFormat("trl", "application/jsonl; charset=utf-8", "jsonl"),
    "conversational": ExportFormat("conversational", "application/jsonl; charset=utf-8", "jsonl"),
    "csv": ExportFormat("csv", "text/csv; charset=utf-8", "csv"),
    "parquet": ExportFormat("parquet", "application/vnd.apache.parquet", "parquet"),
}


def write_export(rows: Iterable[dict], *, fmt: str, mode: str = "raw") -> Iterator[bytes]:
    if fmt == "trl":
        return write_jsonl(rows)
    if fmt == "conversational":
        return write_jsonl(rows, as_conversational)
    if fmt == "csv":
        return write_csv(rows, mode)
    if fmt == "parquet":
        return write_parquet(rows, mode)
    raise ValueError(f"unknown export format {fmt!r}")
