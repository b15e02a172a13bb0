"""Streamed writers for exported preferences: TRL JSONL, its conversational variant, CSV, Parquet.

Each writer turns an iterator of export rows (annotation.selectors.export_rows) into an iterator of
byte chunks that an HTTP response or a file can consume as they come. Nothing holds more than one
chunk of rows: Parquet is written one row group per chunk, and the footer last.

export_chunks is what the API serves. On PostgreSQL a raw export (one row per label, the common
case and the one that runs to millions of rows) skips the row dicts: the database writes each
JSONL or CSV line itself (escaping and quoting the texts), or hands over Parquet's columns already
in their final form, through a server-side cursor read a chunk at a time. Python only
puts in each annotator's pseudonym, a keyed hash the database cannot compute. The output is the
same as the writers' below (the tests hold the two side by side), except for white space inside
a chat prompt's JSON. Elsewhere (SQLite, aggregated rows, a minimum agreement) the rows go
through export_rows and the writers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from itertools import islice

import pyarrow as pa
import pyarrow.parquet as pq
from django.db import connection

from annotation.selectors import EXPORT_FIELDS, ExportFilters, annotator_pseudonym, export_rows, preferences_for_export

try:
    # orjson encodes a JSONL row several times faster than the standard library, which is most of
    # an export's time at a million rows; without it the output is the same, only slower.
    import orjson
except ImportError:  # pragma: no cover - orjson is in requirements.txt
    orjson = None

# Rows per yielded chunk (and per Parquet row group): large enough that the per-chunk costs
# (a socket write, a row group header) vanish, small enough that a chunk is a megabyte or two.
CHUNK_ROWS = 2000
# Rows per fetch from the database's cursor and per yielded chunk when the database writes JSONL
# or CSV lines (export_chunks): a few megabytes of text, held once by the driver and once as the
# chunk. Parquet from the database is fetched CHUNK_ROWS at a time, a row group each: a larger
# row group saves little time and costs the writer memory (about 70 MiB over the baseline at
# 5000 rows, 40 at 2000).
FETCH_ROWS = 5000


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


def _csv_field(value) -> str:
    """A field as csv.writer writes one (QUOTE_MINIMAL, "\n" line ends), except that a carriage
    return is quoted too: csv.writer leaves a lone one bare, and csv.reader then refuses the file."""
    if isinstance(value, str):
        if "," in value or '"' in value or "\n" in value or "\r" in value:
            return '"' + value.replace('"', '""') + '"'
        return value
    return "" if value is None else str(value)


def write_csv(rows: Iterable[dict], mode: str = "raw") -> Iterator[bytes]:
    # Both column lists start with the prompt and end with created_at and choice.
    columns = [c.name for c in columns_for(mode)]
    middle = columns[1:-2]
    yield (",".join(columns) + "\n").encode()
    for chunk in _chunks(rows):
        lines = [
            ",".join(
                [
                    _csv_field(_flat_prompt(row["prompt"])),
                    *(_csv_field(row[name]) for name in middle),
                    row["created_at"].isoformat(),
                    row.get("choice", ""),
                ]
            )
            for row in chunk
        ]
        lines.append("")
        data = "\n".join(lines).encode("utf-8")
        del chunk, lines  # not kept alive beside the next chunk while suspended
        yield data


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


# Export straight from PostgreSQL ---------------------------------------------------------------

# The columns of preferences_for_export's query (EXPORT_FIELDS), renamed for the SQL below.
_SOURCE_COLUMNS = (
    "id",
    "choice",
    "strength",
    "annotator_id",
    "created_at",
    "comparison_id",
    "prompt",  # comparison__prompt__text
    "messages",  # comparison__prompt__messages
    "text_a",  # comparison__response_a__text
    "text_b",  # comparison__response_b__text
)
assert len(_SOURCE_COLUMNS) == len(EXPORT_FIELDS) and EXPORT_FIELDS[:6] == _SOURCE_COLUMNS[:6]

_CHOSEN = "CASE WHEN s.choice = 'b' THEN s.text_b ELSE s.text_a END"
_REJECTED = "CASE WHEN s.choice = 'b' THEN s.text_a ELSE s.text_b END"
_PREFERRED = "s.choice IN ('a', 'b')"
# datetime.isoformat() of a UTC time: microseconds only when there are some.
_CREATED_AT = (
    "to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS')"
    " || CASE WHEN date_trunc('second', s.created_at) = s.created_at THEN ''"
    " ELSE to_char(s.created_at AT TIME ZONE 'UTC', '.US') END || '+00:00'"
)
# A chat prompt's turns as JSON text: jsonb's output, which is json.dumps's (", " and ": ").
_FLAT_PROMPT = "CASE WHEN s.messages IS NULL THEN s.prompt ELSE s.messages::text END"


def _json_string(expression: str) -> str:
    return f"to_json({expression})::text"


def _message_list(role: str, content: str) -> str:
    return f"""'[{{"role":"{role}","content":' || {_json_string(content)} || '}}]'"""


# A JSONL line in three parts: everything before the annotator's pseudonym, the annotator's id,
# and everything after it. The keys are those of selectors._raw_row and exports.as_conversational,
# in their order.
_JSONL_TAIL = (
    f"""'","created_at":"' || {_CREATED_AT} || '"' || CASE WHEN {_PREFERRED} THEN '}}' """
    f"""ELSE ',"choice":' || {_json_string("s.choice")} || '}}' END || chr(10)"""
)
_JSONL_HEADS = {
    "trl": (
        f"""'{{"prompt":' || COALESCE(s.messages::text, {_json_string("s.prompt")})"""
        f"""|| ',"chosen":' || {_json_string(_CHOSEN)} || ',"rejected":' || {_json_string(_REJECTED)}"""
    ),
    "conversational": (
        f"""'{{"prompt":' || COALESCE(s.messages::text, {_message_list("user", "s.prompt")})"""
        f"""|| ',"chosen":' || {_message_list("assistant", _CHOSEN)}"""
        f"""|| ',"rejected":' || {_message_list("assistant", _REJECTED)}"""
    ),
}
_JSONL_REST = """|| ',"margin":' || COALESCE(s.strength, 0)::text || '.0,"comparison_id":' || s.comparison_id::text
 || ',"annotator":"'"""


def _sql_csv_field(expression: str) -> str:
    # _csv_field: quoted, with its quotes doubled, when it holds a comma, a quote or a line break.
    return (
        f"CASE WHEN strpos({expression}, ',') > 0 OR strpos({expression}, '\"') > 0 "
        f"OR strpos({expression}, chr(10)) > 0 OR strpos({expression}, chr(13)) > 0 "
        f"THEN '\"' || replace({expression}, '\"', '\"\"') || '\"' ELSE {expression} END"
    )


# A CSV row (RAW_COLUMNS, as write_csv writes it) in the same three parts as a JSONL line. The
# annotator's pseudonym and the times need no quotes; the margin is written as Python writes a float.
_CSV_HEAD = (
    f"{_sql_csv_field(_FLAT_PROMPT)} || ',' || {_sql_csv_field(_CHOSEN)} || ',' || {_sql_csv_field(_REJECTED)} "
    "|| ',' || COALESCE(s.strength, 0)::text || '.0,' || s.comparison_id::text || ','"
)
_CSV_TAIL = f"',' || {_CREATED_AT} || ',' || CASE WHEN {_PREFERRED} THEN '' ELSE s.choice END || chr(10)"

# Parquet's columns (RAW_COLUMNS), the annotator as its id.
_PARQUET_COLUMNS = (
    f"{_FLAT_PROMPT}, {_CHOSEN}, {_REJECTED}, COALESCE(s.strength, 0)::float8, s.comparison_id, s.annotator_id, "
    f"(extract(epoch FROM s.created_at) * 1000000)::bigint, CASE WHEN {_PREFERRED} THEN NULL ELSE s.choice END"
)


def _database_writes_rows(filters: ExportFilters, mode: str) -> bool:
    if connection.vendor != "postgresql" or mode != "raw" or filters.min_agreement is not None:
        return False
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    # Without server-side cursors (a transaction-pooling proxy) the whole result would be read at once.
    return not is_psycopg3 and not connection.settings_dict.get("DISABLE_SERVER_SIDE_CURSORS")


def _query(project, filters: ExportFilters, select: str) -> tuple[str, list]:
    """SELECT `select` over the rows of preferences_for_export (the same filters, in id order)."""
    inner, params = preferences_for_export(project=project, filters=filters).query.sql_with_params()
    return f"SELECT {select} FROM ({inner}) AS s ({', '.join(_SOURCE_COLUMNS)}) ORDER BY s.id", list(params)


class _Pseudonyms(dict):
    """annotator_pseudonym per user id, computed once per annotator, as str or as UTF-8 bytes."""

    def __init__(self, as_bytes: bool = False):
        super().__init__()
        self.as_bytes = as_bytes

    def __missing__(self, user_id: int):
        name = annotator_pseudonym(user_id)
        value = self[user_id] = name.encode() if self.as_bytes else name
        return value


def _fetch(sql: str, params: list, *, text_as_bytes: bool, size: int) -> Iterator[list[tuple]]:
    """The rows of a query in lists of `size`, through a server-side cursor. Inside a
    transaction (the export view opens one) the cursor is not WITH HOLD, so PostgreSQL sends rows
    as it finds them instead of first materialising the result."""
    import psycopg2.extensions

    cursor = connection.chunked_cursor()
    try:
        if text_as_bytes:
            # Texts as the bytes the server sent: nothing is decoded only to be encoded again.
            psycopg2.extensions.register_type(psycopg2.extensions.BYTES, cursor.cursor)
        cursor.execute(sql, params)
        while rows := cursor.fetchmany(size):
            yield rows
            del rows  # not kept alive beside the next fetch while suspended
    finally:
        cursor.close()


def _lines_from_database(project, filters: ExportFilters, head: str, tail: str) -> Iterator[bytes]:
    """Lines the database writes but for the annotator's pseudonym: each row is (the line up to the
    pseudonym, the annotator's id, the rest of the line)."""
    sql, params = _query(project, filters, f"{head}, s.annotator_id, {tail}")
    pseudonyms = _Pseudonyms(as_bytes=True)
    for rows in _fetch(sql, params, text_as_bytes=True, size=FETCH_ROWS):
        parts: list[bytes] = []
        for before, annotator_id, after in rows:
            parts += (before, pseudonyms[annotator_id], after)
        del rows
        data = b"".join(parts)
        del parts
        yield data


def _csv_from_database(project, filters: ExportFilters) -> Iterator[bytes]:
    yield (",".join(c.name for c in RAW_COLUMNS) + "\n").encode()
    yield from _lines_from_database(project, filters, _CSV_HEAD, _CSV_TAIL)


def _utf8_array(texts: tuple[bytes, ...]) -> pa.Array:
    # The texts arrive as the UTF-8 the server sent (the connection's encoding is UTF8): taken as
    # binary and viewed as strings, without checking each one again, which took several times as
    # long as the rest of the conversion.
    return pa.array(texts, pa.binary()).view(pa.string())


def _parquet_from_database(project, filters: ExportFilters) -> Iterator[bytes]:
    sql, params = _query(project, filters, _PARQUET_COLUMNS)
    schema = pa.schema([pa.field(c.name, c.type) for c in RAW_COLUMNS])
    pseudonyms = _Pseudonyms()
    sink = _Drain()
    writer = pq.ParquetWriter(sink, schema, compression="zstd", use_dictionary=["annotator", "choice"])
    try:
        for rows in _fetch(sql, params, text_as_bytes=True, size=CHUNK_ROWS):
            prompt, chosen, rejected, margin, comparison, annotator, created, choice = zip(*rows, strict=True)
            del rows
            arrays = [
                _utf8_array(prompt),
                _utf8_array(chosen),
                _utf8_array(rejected),
                pa.array(margin, pa.float64()),
                pa.array(comparison, pa.int64()),
                pa.array([pseudonyms[a] for a in annotator], pa.string()),
                pa.array(created, pa.timestamp("us", tz="UTC")),
                pa.array(choice, pa.string()),
            ]
            del prompt, chosen, rejected, margin, comparison, annotator, created, choice
            table = pa.Table.from_arrays(arrays, schema=schema)
            writer.write_table(table, row_group_size=table.num_rows)
            del arrays, table
            yield sink.take()
    finally:
        writer.close()
    yield sink.take()


def export_chunks(*, project, filters: ExportFilters, fmt: str, mode: str = "raw") -> Iterator[bytes]:
    """A project's export in a format, as byte chunks to stream. Run it inside a transaction
    (on PostgreSQL the rows come through a server-side cursor, which lives as long as one)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    if _database_writes_rows(filters, mode):
        if fmt in _JSONL_HEADS:
            return _lines_from_database(project, filters, f"{_JSONL_HEADS[fmt]} {_JSONL_REST}", _JSONL_TAIL)
        if fmt == "csv":
            return _csv_from_database(project, filters)
        return _parquet_from_database(project, filters)
    return write_export(export_rows(project=project, filters=filters, mode=mode), fmt=fmt, mode=mode)
