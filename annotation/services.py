"""Writes. One function per action, keyword-only arguments, each atomic."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import gc
import hashlib
import itertools
import json
import queue
import random
import re
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from django.contrib.auth import get_user_model
from django.db import IntegrityError, connection, transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation.jsonl import (
    DEFAULT_MAX_LINE_BYTES,
    NO_RECORDS,
    ImportFileError,
    OversizedLine,
    Record,
    iter_records,
)
from annotation.models import Choice, Comparison, Membership, Preference, Project, Prompt, Response, Role, content_hash

IMPORTED_ANNOTATOR_PREFIX = "import:"
DEFAULT_IMPORT_SOURCE = "imported"
BATCH = 500


def _batches(items: Sequence, size: int = BATCH) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@transaction.atomic
def project_create(*, name: str, slug: str, **fields) -> Project:
    project = Project(name=name, slug=slug, **fields)
    project.full_clean()
    project.save()
    return project


PROJECT_EDITABLE_FIELDS = (
    "name",
    "guidelines",
    "overlap",
    "reward_model_base",
    "policy_base",
    "retrain_threshold",
    "gold_rate",
    "lease_seconds",
    "auto_training",
)


@transaction.atomic
def project_update(*, project: Project, **fields) -> Project:
    unknown = set(fields) - set(PROJECT_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        setattr(project, name, value)
    project.full_clean()
    project.save(update_fields=list(fields) or None)
    return project


# The tables that grow with a project's data, children first: project_delete empties them with
# one statement each before the rest goes the usual way.
_PROJECT_DATA = (
    ("annotation_assignment", "project_id = %s"),
    ("annotation_preference", "project_id = %s"),
    ("annotation_comparison", "project_id = %s"),
    ("annotation_response", "prompt_id IN (SELECT id FROM annotation_prompt WHERE project_id = %s)"),
    ("annotation_prompt", "project_id = %s"),
)


# The label statistics that migration 0005's triggers keep (see project_delete).
_STATS_TABLES = (
    "annotation_stats_project_day",
    "annotation_stats_annotator_day",
    "annotation_stats_annotator_hour",
    "annotation_stats_units",
    "annotation_stats_comparison",
    "annotation_stats_agreement",
)


@transaction.atomic
def project_delete(*, project: Project) -> None:
    """Deletes a project and everything in it. Django's cascade deletes related rows 100 at a time
    (a statement each, and each statement runs the label-statistics triggers); the data tables go
    first here, a statement per table, and the cascade then has only the small rest (memberships,
    training runs, model versions).

    Each deleted row is checked against the composite foreign keys that point at it, by a query
    PostgreSQL plans once from the table statistics. Right after a large import those statistics
    are stale, and the plan then reads every row of the project's index entries per deleted row:
    30,000 pairs took 28 s to delete, 2.7 s after ANALYZE. So the tables are analysed first, and the
    label-statistics tables too: their triggers remove the rows that a delete brings to zero by a
    join with the list of those rows, which, planned from the statistics of an empty table (a new
    database's, before its first import), scanned that list once per row of the table: deleting
    100,000 labels had not finished after 10 minutes; 6 s once analysed."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute(f"ANALYZE {', '.join([*(table for table, _ in _PROJECT_DATA), *_STATS_TABLES])}")
        for table, where in _PROJECT_DATA:
            cursor.execute(f"DELETE FROM {table} WHERE {where}", [project.pk])
    project.delete()


@transaction.atomic
def membership_set(*, project: Project, user, role: str = Role.ANNOTATOR) -> Membership:
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def membership_remove(*, project: Project, user) -> bool:
    deleted, _ = Membership.objects.filter(project=project, user=user).delete()
    return deleted > 0


@transaction.atomic
def comparisons_create_for_prompt(*, prompt: Prompt, max_pairs: int | None = None) -> list[Comparison]:
    """Pairs a prompt's responses into comparisons: every pair, or at most `max_pairs` for the
    prompt in total (pairs that already exist count). Under a cap the pairs are a shuffle seeded
    by the prompt, so no response is favoured by its id and a repeat call adds nothing."""
    # The lock serialises two callers on one prompt, so the cap holds under concurrency.
    Prompt.objects.select_for_update().filter(pk=prompt.pk).first()
    ids = sorted(Response.objects.filter(prompt=prompt).values_list("id", flat=True))
    existing = set(Comparison.objects.filter(prompt=prompt).values_list("response_a_id", "response_b_id"))
    candidates = [pair for pair in itertools.combinations(ids, 2) if pair not in existing]
    if max_pairs is not None:
        random.Random(prompt.pk).shuffle(candidates)
        candidates = candidates[: max(0, max_pairs - len(existing))]
        candidates.sort()
    new = [
        Comparison(project_id=prompt.project_id, prompt=prompt, response_a_id=a, response_b_id=b) for a, b in candidates
    ]
    return Comparison.objects.bulk_create(new, batch_size=BATCH)


def strength_from_margin(margin: float | None) -> int | None:
    """The inverse of Preference.margin: a margin of 1, 2 or 3 is that strength; others round to
    the nearest level, and 0 or no margin means the strength is unknown."""
    if not margin:
        return None
    return max(1, min(3, round(margin)))


@dataclass
class ImportSummary:
    prompts_created: int = 0
    responses_created: int = 0
    comparisons_created: int = 0
    preferences_created: int = 0
    preferences_existing: int = 0

    def __str__(self) -> str:
        return (
            f"{self.prompts_created} prompts, {self.responses_created} responses, "
            f"{self.comparisons_created} comparisons and {self.preferences_created} preferences created; "
            f"{self.preferences_existing} preferences were already there"
        )


def _prompt_columns(prompt: str | list[dict]) -> tuple[str, list[dict] | None]:
    """A prompt's (text, messages) columns."""
    if isinstance(prompt, str):
        return prompt, None
    return "", prompt


def _imported_annotators(names: set[str]) -> dict[str, int]:
    """Labels that arrive in a file were given by people who have no account here. Each gets an
    inactive user named `import:<name>`, so one annotator's labels stay one annotator's."""
    User = get_user_model()
    ids = {}
    for name in sorted(names):
        user, created = User.objects.get_or_create(
            username=f"{IMPORTED_ANNOTATOR_PREFIX}{name}"[:150], defaults={"is_active": False}
        )
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        ids[name] = user.pk
    return ids


def _unstorable(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character, which the database cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode"
    return None


def _why_unstorable(r: Record) -> str | None:
    turns = r.prompt if isinstance(r.prompt, list) else [{"content": r.prompt}]
    texts = [t.get("content", "") for t in turns] + [t.get("role", "") for t in turns]
    texts += [item.text for item in r.responses] + [item.source or "" for item in r.responses]
    texts.append(r.annotator or "")
    for text in texts:
        reason = _unstorable(text)
        if reason:
            return reason
    return None


@dataclass
class ImportChunk:
    """Records checked and ready to write, with each one's prompt digest and response digests."""

    records: list[Record]
    prompt_digests: list[str]
    response_digests: list[list[str]]
    # The COPY CSV of each prompt's (text, messages) and each response's text, rendered by the
    # reading thread (read_ahead), so that the writing one only puts in the keys.
    prompt_csv: list[str] = dataclasses.field(default_factory=list)
    response_csv: list[list[str]] = dataclasses.field(default_factory=list)


def _digests(records: list[Record]) -> tuple[ImportChunk, list[tuple[int, str]]]:
    """The records that can be stored, with each one's prompt digest (content_hash) and its
    responses' digests, and (line, reason) for each that cannot.

    The same pass refuses, by line and with the other errors, text that JSON can spell but
    PostgreSQL cannot store (a NUL, half a surrogate pair), instead of failing as a database
    error mid-import: encoding a text to hash it finds a lone surrogate, and a scan finds a NUL."""
    sha256 = hashlib.sha256
    chunk = ImportChunk([], [], [])
    errors: list[tuple[int, str]] = []
    for r in records:
        prompt = r.prompt
        try:
            if isinstance(prompt, str):
                bad = "\x00" in prompt
                digest = sha256(prompt.encode()).hexdigest()
            else:  # turns: roles were checked against a fixed list when the line was read
                bad = any("\x00" in turn["content"] for turn in prompt)
                digest = content_hash(prompt)
            digests = []
            for text, source in r.responses:
                bad = bad or "\x00" in text or (source is not None and _unstorable(source) is not None)
                digests.append(sha256(text.encode()).hexdigest())
            bad = bad or (r.annotator is not None and _unstorable(r.annotator) is not None)
        except UnicodeEncodeError:
            bad = True
        if bad:
            errors.append((r.line, _why_unstorable(r) or "cannot be stored"))
            continue
        chunk.records.append(r)
        chunk.prompt_digests.append(digest)
        chunk.response_digests.append(digests)
        if isinstance(prompt, str):
            chunk.prompt_csv.append(_csv_text(prompt) + ",")
        else:
            chunk.prompt_csv.append('"",' + _csv_text(json.dumps(prompt, ensure_ascii=False)))
        chunk.response_csv.append([_csv_text(text) for text, _ in r.responses])
    return chunk, errors


# Records per chunk of a streamed import: each chunk is written while the next is read. The first
# is smaller: PostgreSQL has nothing to do until it is read (a tenth of a second per 2,000 records).
IMPORT_CHUNK = 10_000
FIRST_CHUNK = 2_000


def import_chunks(
    lines: Iterable[bytes | OversizedLine],
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    size: int | None = None,
    turn: threading.Event | None = None,
) -> Iterator[ImportChunk]:
    """A JSONL file's records, read and checked `size` at a time, for preferences_import(chunks=...).

    Chunks are yielded while every line so far is good. After a bad line the rest of the file is
    still read, to list its bad lines too, but nothing more is yielded; at the end ImportFileError
    lists every bad line (or says that the file has no records), and the import, whose chunks so
    far were written in its transaction, is rolled back by it. With `turn`, it reads only while
    that event is set (see ChunkReader)."""
    size = size or IMPORT_CHUNK
    if turn is not None:
        lines = _taking_turns(lines, turn)
    errors: list[tuple[int, str]] = []
    records = iter_records(lines, errors, max_line_bytes)
    seen = False
    while batch := list(itertools.islice(records, size if seen else min(size, FIRST_CHUNK))):
        seen = True
        chunk, bad = _digests(batch)
        errors += bad
        if not errors:
            yield chunk
    if errors:
        raise ImportFileError(sorted(errors))
    if not seen:
        raise ImportFileError([NO_RECORDS])


def _taking_turns(lines: Iterable, turn: threading.Event) -> Iterator:
    """`lines`, waiting every 64 of them for `turn` to be set."""
    for number, line in enumerate(lines, start=1):
        if not number % 64:
            turn.wait()
        yield line


def read_ahead(items: Iterable, depth: int = 2, turn: threading.Event | None = None) -> Iterator:
    """`items`, produced by a thread of their own up to `depth` ahead of the caller; an exception
    the producer raises is raised here, in turn. `turn`, if given, is set while the caller waits
    for an item (the producer's turn to use the CPU) and cleared when it has one."""
    pipe: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                pipe.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(("item", item)):
                    return
            put(("end", None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=produce, name="import-reader", daemon=True)
    thread.start()
    try:
        while True:
            if turn is not None:
                turn.set()
            kind, value = pipe.get()
            if turn is not None:
                turn.clear()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        # The caller stopped early (an error while writing): the producer stops at its next item.
        stop.set()
        if turn is not None:
            turn.set()


class ChunkReader:
    """A JSONL file read (import_chunks) by a thread of its own while preferences_import writes the
    chunks before: the import's Python work and PostgreSQL's then overlap on a server's two CPUs.

    The Python threads share one interpreter lock, and the writer needs it in short turns (between
    statements, and to make the rows of the next COPY while PostgreSQL takes the last one): made to
    wait behind the reader, it would leave PostgreSQL idle. So the reader reads only in the
    writer's waits: while a statement runs (`writing`, around each of the import's statements),
    while the writer waits for its COPYs (_Copies.wait) and while it waits for a chunk."""

    def __init__(self, lines: Iterable[bytes | OversizedLine], max_line_bytes: int = DEFAULT_MAX_LINE_BYTES):
        self.turn = threading.Event()
        self._chunks = read_ahead(import_chunks(lines, max_line_bytes, turn=self.turn), turn=self.turn)

    def __iter__(self) -> Iterator[ImportChunk]:
        return self._chunks

    def close(self) -> None:
        self._chunks.close()  # the reader, if it started, stops at its next item (read_ahead)

    def writing(self):
        """A context in which each statement the writer runs gives the reader a turn."""
        return connection.execute_wrapper(self._statement)

    def _statement(self, execute, sql, params, many, context):
        self.turn.set()
        try:
            return execute(sql, params, many, context)
        finally:
            self.turn.clear()


class _ChunkFailed(Exception):
    """A statement of a chunk failed on the COPY thread: `error` is what Django would have raised,
    `savepoint` the chunk's (_Copies.savepoint)."""

    def __init__(self, savepoint: str | None, error: BaseException):
        super().__init__(savepoint, error)
        self.savepoint, self.error = savepoint, error


class _Pieces:
    """A file for copy_expert to read: COPY text made beforehand, in pieces."""

    def __init__(self, pieces: list[str]):
        self.pieces = iter(pieces)

    def read(self, size: int = -1) -> str:
        return next(self.pieces, "")


class _Copies:
    """An import's COPYs and its chunks' savepoints, run in order on a thread of their own (on
    PostgreSQL), so that the server inserts one table's rows, and runs that statement's triggers,
    while the writer makes the next table's rows: with the keys drawn from the sequences first,
    nothing the writer makes depends on a COPY having finished. Any other statement of the import
    waits for them first (`statement`, an execute wrapper), so that one thread at a time uses the
    connection, and raises the first failure, once, as _ChunkFailed naming the chunk's savepoint.
    After a failure the statements queued behind it are skipped. On SQLite (no COPY) the
    savepoints are simply run."""

    # A piece of COPY text handed to the server at a time.
    PIECE = 256 * 1024

    def __init__(self, turn: threading.Event | None = None):
        self.turn = turn
        self.background = connection.vendor == "postgresql"
        self.submitted = 0
        self.done = 0  # statements run or skipped, in order
        self.failure: tuple[str | None, BaseException] | None = None
        self.savepoint_name: str | None = None
        self._changed = threading.Condition()
        self._keys = None
        self._sequences: dict[str, str] = {}
        if self.background:
            connection.ensure_connection()
            self._jobs: queue.SimpleQueue = queue.SimpleQueue()
            self._thread = threading.Thread(target=self._run, args=(connection.connection,), name="import-copy")
            self._thread.daemon = True
            self._thread.start()

    def keys(self, table: str, column: str, count: int) -> list[int]:
        """`count` new values of a table's key sequence. Drawn on a connection of their own (a
        sequence is outside transactions, so any connection's values are as good), so that the
        writer need not wait for the COPYs queued on the import's."""
        if self._keys is None:
            self._keys = connection.get_new_connection(connection.get_connection_params())
            self._keys.autocommit = True
        with self._keys.cursor() as cursor:
            # The sequence named first: as an argument of nextval it was looked up once per row.
            if table not in self._sequences:
                cursor.execute("SELECT pg_get_serial_sequence(%s, %s)", [table, column])
                (self._sequences[table],) = cursor.fetchone()
            cursor.execute("SELECT nextval(%s::regclass) FROM generate_series(1, %s)", [self._sequences[table], count])
            return [key for (key,) in cursor.fetchall()]

    def copy(self, sql: str, lines: Iterable[str]) -> None:
        pieces, piece, length = [], [], 0
        for line in lines:
            piece.append(line)
            length += len(line)
            if length >= self.PIECE:
                pieces.append("".join(piece))
                piece, length = [], 0
        pieces.append("".join(piece))
        self._submit(sql, pieces)

    def run(self, sql: str) -> None:
        """Queues a statement (its whole text: no parameters) behind the COPYs."""
        self._submit(sql)

    def savepoint(self, name: str) -> None:
        self.savepoint_name = name
        self._submit(f"SAVEPOINT {name}")

    def release(self, name: str) -> int:
        """Queues the release of a chunk's savepoint; returns the number `done` reaches once it ran."""
        self._submit(f"RELEASE SAVEPOINT {name}")
        self.savepoint_name = None
        return self.submitted

    def _submit(self, sql: str, pieces: list[str] | None = None) -> None:
        if not self.background:
            with connection.cursor() as cursor:
                cursor.execute(sql)
            self.submitted += 1
            self.done += 1
            return
        self.submitted += 1
        self._jobs.put((sql, pieces, self.savepoint_name))

    def _run(self, raw) -> None:
        cursor = raw.cursor()
        try:
            while (job := self._jobs.get()) is not None:
                sql, pieces, savepoint = job
                if self.failure is None:
                    try:
                        if pieces is None:
                            cursor.execute(sql)
                        else:
                            cursor.copy_expert(sql, _Pieces(pieces))
                    except BaseException as exc:  # noqa: BLE001 - raised by the writer (wait)
                        self.failure = (savepoint, exc)
                with self._changed:
                    self.done += 1
                    self._changed.notify_all()
        finally:
            cursor.close()

    def wait(self, until: int | None = None) -> None:
        """Waits for every queued statement (or until `done` reaches `until`); raises the first
        failure among them."""
        self._wait_for(self.submitted if until is None else until)
        if self.failure is not None:
            self._wait_for(self.submitted)  # those queued behind it are skipped
            savepoint, exc = self.failure
            self.failure = None
            try:
                with connection.wrap_database_errors:  # psycopg2's error as Django's
                    raise exc
            except BaseException as error:  # noqa: BLE001 - handed on with the chunk it belongs to
                raise _ChunkFailed(savepoint, error) from None

    def _wait_for(self, done: int) -> None:
        if self.done < done:
            # The reader's turn while the writer waits (it may have it already: a statement's).
            theirs = self.turn is not None and not self.turn.is_set()
            if theirs:
                self.turn.set()
            with self._changed:
                while self.done < done:
                    self._changed.wait()
            if theirs:
                self.turn.clear()

    def statement(self, execute, sql, params, many, context):
        self.wait()
        return execute(sql, params, many, context)

    def close(self) -> None:
        """Ends the thread once the queued statements have run (an error being raised meanwhile
        rolls the import back: what they did no longer matters)."""
        if self.background:
            self._jobs.put(None)
            self._thread.join()
        if self._keys is not None:
            self._keys.close()


# The _Copies of the import this thread is writing.
_writing = threading.local()

# pg_advisory_xact_lock(IMPORT_LOCK, project id) serialises imports into one project.
IMPORT_LOCK = 0x1A5F


@dataclass
class _Written:
    """What one chunk wrote, merged into the import's totals once its savepoint is released."""

    summary: ImportSummary
    # (comparison, annotator) -> (line, choice) of each label it wrote, and the new annotators.
    labels: dict[tuple[int, int], tuple[int, str]]
    annotators: dict[str, int]
    recount: set[int]
    # digest -> id of each prompt it wrote.
    prompts: dict[str, int] = dataclasses.field(default_factory=dict)
    # The statistics of the rows it counted itself (PostgreSQL), written once the import ends.
    counts: _Counts = dataclasses.field(default_factory=lambda: _Counts())


# Set for its transaction by an import around the statements whose statistics it counts itself:
# the INSERT statistics triggers then step aside (migration 0013).
STATS_BY_WRITER = "annotation.stats_by_writer"
CHOICE_ORDER = ("a", "b", "tie", "both_bad")  # the order of the statistics tables' choice counters


@dataclass
class _Counts:
    """What the statistics triggers (migrations 0005 to 0013) would add for an import's new rows:
    its new prompts, responses and comparisons, and its labels on the comparisons it created (which
    have no other labels, no gold answer and no counts yet). The labels carry no side, no time and
    no gold answer, so their sided, timed and gold counters stay at zero. Rows that no annotator owns
    are keyed by the writer (the import's backend), like the triggers' own; a new comparison and
    the labels it got are recorded as one move into the unit row of its label count (only the sums
    over the unit rows mean anything)."""

    # day -> [prompts, responses, comparisons]
    project_day: dict = dataclasses.field(default_factory=dict)
    # (annotator, day) -> [labels, n_a, n_b, n_tie, n_both_bad]
    annotator_day: dict = dataclasses.field(default_factory=dict)
    # (hour, annotator) -> [labels]
    annotator_hour: dict = dataclasses.field(default_factory=dict)
    # m -> [comparisons, n_a, n_b, n_tie, n_both_bad, same]
    units: dict = dataclasses.field(default_factory=dict)
    # (annotator of the earlier label, of the later one) -> [shared, agreeing]
    agreement: dict = dataclasses.field(default_factory=dict)

    @staticmethod
    def _add(table: dict, key, values) -> None:
        held = table.get(key)
        if held is None:
            table[key] = list(values)
        else:
            for i, value in enumerate(values):
                held[i] += value

    def merge(self, other: _Counts) -> None:
        for name in ("project_day", "annotator_day", "annotator_hour", "units", "agreement"):
            table = getattr(self, name)
            for key, values in getattr(other, name).items():
                self._add(table, key, values)

    def created(
        self, now: datetime, prompts: int, responses: int, comparisons: int, labels: dict[int, list[tuple[int, str]]]
    ) -> list[str]:
        """Counts new prompts, responses and comparisons, and the labels of those `labels` names,
        each with its labels in the order they are inserted (that of their ids). Returns the
        per-comparison count rows of the labelled ones, as COPY lines (comparison, n_a, n_b, n_tie,
        n_both_bad)."""
        day, hour = _utc_day(now), _utc_hour(now)
        self._add(self.project_day, day, (prompts, responses, comparisons))
        if comparisons > len(labels):
            self._add(self.units, 0, (comparisons - len(labels), 0, 0, 0, 0, 0))
        by_label: collections.Counter = collections.Counter()  # (annotator, choice) -> labels
        ones: collections.Counter = collections.Counter()  # choice -> comparisons of one label
        lines = []
        for cid, given in labels.items():
            if len(given) == 1:  # the common case, made quick: m = 1, nothing shared
                ((uid, choice),) = given
                by_label[uid, choice] += 1
                ones[choice] += 1
                lines.append(f"{cid},{_ONE_LABEL[choice]}")
                continue
            n = [0, 0, 0, 0]
            for uid, choice in given:
                n[CHOICE_ORDER.index(choice)] += 1
                by_label[uid, choice] += 1
            for x, y in itertools.combinations(given, 2):
                self._add(self.agreement, (x[0], y[0]), (1, int(x[1] == y[1])))
            self._add(self.units, len(given), (1, *n, sum(k * (k - 1) for k in n)))
            lines.append(f"{cid},{n[0]},{n[1]},{n[2]},{n[3]}")
        for (uid, choice), count in by_label.items():
            i = CHOICE_ORDER.index(choice)
            row = [count, 0, 0, 0, 0]
            row[i + 1] = count
            self._add(self.annotator_day, (uid, day), row)
            self._add(self.annotator_hour, (hour, uid), (count,))
        if ones:
            self._add(self.units, 1, (ones.total(), *(ones[c] for c in CHOICE_ORDER), 0))
        return lines

    def write(self, project: Project) -> None:
        """Adds the counts to the statistics tables, in the import's transaction."""
        writer = "(-pg_backend_pid())::bigint"
        tables = [
            (
                "annotation_stats_project_day",
                ("day",),
                ("prompts", "responses", "comparisons"),
                "project_id, day, writer",
                f"%s, t.day, {writer}",
                self.project_day,
            ),
            (
                "annotation_stats_annotator_day",
                ("annotator_id", "day"),
                ("labels", *(f"n_{c}" for c in CHOICE_ORDER)),
                "project_id, annotator_id, day",
                "%s, t.annotator_id, t.day",
                self.annotator_day,
            ),
            (
                "annotation_stats_annotator_hour",
                ("hour", "annotator_id"),
                ("labels",),
                "project_id, hour, annotator_id",
                "%s, t.hour, t.annotator_id",
                self.annotator_hour,
            ),
            (
                "annotation_stats_units",
                ("m",),
                ("comparisons", *(f"n_{c}" for c in CHOICE_ORDER), "same"),
                "project_id, annotator_id, is_gold, m",
                f"%s, {writer}, false, t.m",
                self.units,
            ),
            (
                "annotation_stats_agreement",
                ("first_annotator_id", "second_annotator_id"),
                ("shared", "agreeing"),
                "project_id, first_annotator_id, second_annotator_id",
                "%s, t.first_annotator_id, t.second_annotator_id",
                self.agreement,
            ),
        ]
        with connection.cursor() as cursor:
            for table, key, counters, conflict, selected, counts in tables:
                if not counts:
                    continue
                rows = [((k,) if len(key) == 1 else k) + tuple(v) for k, v in sorted(counts.items())]
                columns = (*key, *counters)
                placeholders = ", ".join(["(" + ", ".join(["%s"] * len(columns)) + ")"] * len(rows))
                cursor.execute(
                    f"INSERT INTO {table} AS s ({conflict}, {', '.join(counters)}) "
                    f"SELECT {selected}, {', '.join(f't.{c}' for c in counters)} "
                    f"FROM (VALUES {placeholders}) AS t({', '.join(columns)}) "
                    f"ORDER BY {', '.join(str(i + 1) for i in range(conflict.count(',') + 1))} "
                    f"ON CONFLICT ({conflict}) DO UPDATE SET "
                    + ", ".join(f"{c} = s.{c} + EXCLUDED.{c}" for c in counters),
                    [project.pk, *itertools.chain.from_iterable(rows)],
                )


# A comparison's counts (n_a, n_b, n_tie, n_both_bad) with its one label, by choice.
_ONE_LABEL = {c: ",".join("1" if c == d else "0" for d in CHOICE_ORDER) for c in CHOICE_ORDER}


def _utc_day(moment: datetime):
    return moment.astimezone(UTC).date()


def _utc_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0, tzinfo=None)


@transaction.atomic
def preferences_import(
    *,
    project: Project,
    records: list[Record] | None = None,
    chunks: Iterable[ImportChunk] | None = None,
    source: str = DEFAULT_IMPORT_SOURCE,
    annotator: str = "import",
    max_pairs_per_prompt: int | None = None,
) -> ImportSummary:
    """Writes validated records: prompts, responses, comparisons and, for labelled pairs,
    preferences. Rows that already exist are found by content and reused, so importing a file twice
    adds nothing. A label that contradicts one already stored or one earlier in the file (same
    annotator, same pair, another choice) fails the whole import, which then writes nothing.

    `records` is a list of read records; `chunks` (import_chunks, best through read_ahead) a file
    read while it is written: each chunk is written as it comes, in this one transaction, and an
    ImportFileError from the reader (a bad line anywhere) rolls all of it back. After a chunk with
    contradicting labels nothing more is written, and the rest of the file is only read for its
    bad lines; the refusal lists both.

    Imports into one project wait for each other (on PostgreSQL), so each finds what the one
    before it wrote. Should another writer add one of the rows between a chunk's look-ups and its
    inserts (a comparison paired from the same responses, a label), the insert fails on the unique
    constraint; the chunk is then done once more from its look-ups, which now find that row."""
    if (records is None) == (chunks is None):
        raise TypeError("preferences_import takes records or chunks")
    if records is not None:
        chunk, errors = _digests(records)
        if errors:
            raise ImportFileError(errors)
        chunks = [chunk]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", [IMPORT_LOCK, project.pk % 2**31])
    reader = chunks if isinstance(chunks, ChunkReader) else None
    copies = _writing.copies = _Copies(reader.turn if reader else None)
    try:
        with (
            reader.writing() if reader else contextlib.nullcontext(),
            connection.execute_wrapper(copies.statement),
            _interpreter_set_for_import(),
        ):
            return _import_chunks(project, chunks, source, annotator, max_pairs_per_prompt, copies)
    finally:
        _writing.copies = None
        copies.close()


_imports_running = 0
_imports_lock = threading.Lock()
_gc_was_enabled = False
_switch_interval = 0.005
# How long a thread may hold the interpreter lock while another waits for it (Python's default is
# 5 ms), during imports.
IMPORT_SWITCH_INTERVAL = 0.0005


@contextlib.contextmanager
def _interpreter_set_for_import():
    """Two process-wide settings, held while any import of this process runs (the last to end
    restores them):

    - Python's cycle collector is paused. An import makes millions of small objects (records,
      tuples, dict entries), none of them in a reference cycle, so reference counting frees them
      all; the collector, run every few hundred allocations, only walked them again and again:
      about a second of CPU per 100,000 pairs.
    - The interpreter lock changes hands after 0.5 ms instead of 5. The reading thread of a streamed
      import (ChunkReader) parses while the writer waits on PostgreSQL; when a statement returns,
      the writer waited up to 5 ms for the lock before it could send the next one, with PostgreSQL
      idle meanwhile: about 60 statements per 100,000 pairs."""
    global _imports_running, _gc_was_enabled, _switch_interval
    with _imports_lock:
        if _imports_running == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
            _switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_interval, IMPORT_SWITCH_INTERVAL))
        _imports_running += 1
    try:
        yield
    finally:
        with _imports_lock:
            _imports_running -= 1
            if _imports_running == 0:
                sys.setswitchinterval(_switch_interval)
                if _gc_was_enabled:
                    gc.enable()


# Chunks written ahead of the COPY thread at most (see _import_chunks).
UNSURE_CHUNKS = 2


def _import_chunks(project, chunks, source, annotator, max_pairs_per_prompt, copies: _Copies) -> ImportSummary:
    """Writes the chunks, each in a savepoint of its own. A chunk's COPYs may still be running on
    the COPY thread while the next chunk is made, so its rows are `unsure` until its savepoint's
    release has run; the next chunks see them (they would be written again, in order, should it
    fail). When a chunk fails on a unique constraint (another writer added one of its rows meanwhile),
    it is rolled back to its savepoint and done once more, without one, from look-ups that now find
    that row (a second failure fails the import); the chunks after it are then written again too."""
    done = _Written(ImportSummary(), {}, {}, set())
    # A project that has no prompts as the import begins (it holds the project's import lock) has
    # none to look up: the prompts it finds are those of its earlier chunks, kept here. Should
    # another writer add one meanwhile (a generation run, the API), the COPY fails on the unique
    # constraint and the chunk is done again, this time looking every prompt up.
    fresh = not Prompt.objects.filter(project=project).exists()
    unsure: list[tuple[str, int, ImportChunk, _Written]] = []  # (savepoint, `done` once released, ...)
    again: collections.deque[tuple[ImportChunk, bool]] = collections.deque()  # (chunk, last try)
    refused: list[tuple[int, str]] = []
    reading = iter(chunks)
    number = 0
    try:
        while True:
            chunk, last_try = again.popleft() if again else (next(reading, None), False)
            while unsure and unsure[0][1] <= copies.done:
                _merge(done, unsure.pop(0)[3])
            if refused:
                if chunk is None:
                    break
                continue  # reading on, for the reader's list of bad lines
            writing = None
            try:
                if len(unsure) >= UNSURE_CHUNKS:
                    # The writer is that far ahead of PostgreSQL: it waits, rather than keep more
                    # chunks' rows in memory.
                    copies.wait(until=unsure[0][1])
                    _merge(done, unsure.pop(0)[3])
                if chunk is None:
                    copies.wait()  # the last chunks' COPYs
                    for *_, written in unsure:
                        _merge(done, written)
                    break
                written_before = [w for *_, w in reversed(unsure)] + [done]
                args = (
                    project,
                    chunk,
                    source,
                    annotator,
                    max_pairs_per_prompt,
                    collections.ChainMap(*(w.labels for w in written_before)),
                    collections.ChainMap(*(w.annotators for w in written_before)),
                    collections.ChainMap(*(w.prompts for w in written_before)) if fresh else None,
                )
                if last_try:
                    written = _import(*args)
                    copies.wait()
                    _merge(done, written)
                    continue
                number += 1
                writing = f"import_chunk_{number}"
                copies.savepoint(writing)
                written = _import(*args)
                unsure.append((writing, copies.release(writing), chunk, written))
            except ImportFileError as exc:
                # Nothing more is written; the import fails and its transaction is rolled back.
                refused = exc.errors
            except (_ChunkFailed, IntegrityError) as exc:
                error, failed = (exc.error, exc.savepoint) if isinstance(exc, _ChunkFailed) else (exc, writing)
                if last_try or failed is None or not isinstance(error, IntegrityError):
                    raise error from None
                copies.wait()  # nothing is left queued (after a failure the rest is skipped)
                names = [name for name, *_ in unsure]
                position = names.index(failed) if failed in names else len(unsure)
                for *_, written in unsure[:position]:
                    _merge(done, written)
                redo = [c for _, _, c, _ in unsure[position:]] + ([chunk] if chunk is not None else [])
                unsure.clear()
                # Rolled back to the chunk's savepoint, the transaction is usable again (an ORM
                # write that failed, bulk_create on SQLite, had marked Django's block for a rollback).
                transaction.set_rollback(False)
                with connection.cursor() as cursor:
                    cursor.execute(f"ROLLBACK TO SAVEPOINT {failed}")
                    cursor.execute(f"RELEASE SAVEPOINT {failed}")
                fresh = False
                again.extendleft(reversed([(c, i == 0) for i, c in enumerate(redo)]))
    except ImportFileError as exc:
        raise ImportFileError(sorted(refused + exc.errors)) from None
    if refused:
        raise ImportFileError(sorted(refused))
    done.counts.write(project)
    # New comparisons were written with their counts; of the others, only those given a label now changed.
    comparisons_recount(comparison_ids=sorted(done.recount))
    return done.summary


def _merge(done: _Written, written: _Written) -> None:
    for name in dataclasses.fields(done.summary):
        setattr(done.summary, name.name, getattr(done.summary, name.name) + getattr(written.summary, name.name))
    done.labels.update(written.labels)
    done.annotators.update(written.annotators)
    done.recount |= written.recount
    done.prompts.update(written.prompts)
    done.counts.merge(written.counts)


def _import(
    project: Project,
    chunk: ImportChunk,
    source: str,
    annotator: str,
    max_pairs_per_prompt: int | None,
    labels: dict[tuple[int, int], tuple[int, str]],
    annotators: dict[str, int],
    prompts: dict[str, int] | None,
) -> _Written:
    """Writes one chunk. `labels` and `annotators` are what the chunks before it wrote, and so is
    `prompts` where given (then the project's only prompts; None: look them up)."""
    records, prompt_digests, response_digests = chunk.records, chunk.prompt_digests, chunk.response_digests
    written = _Written(ImportSummary(), {}, {}, set())
    summary = written.summary
    now = timezone.now()
    # On PostgreSQL the chunk counts the statistics of its new rows itself (_Counts), so the INSERT
    # statistics triggers step aside until its labels on older comparisons, which they count. Should
    # the chunk fail, the setting is undone with it: by the rollback to its savepoint (queued before
    # this) or, on its last try, with the whole import.
    counting = connection.vendor == "postgresql"
    copies: _Copies = _writing.copies
    if counting:
        copies.run(f"SELECT set_config('{STATS_BY_WRITER}', 'on', true)")

    # 1. Prompts, found by the digest of their text or turns.
    first_with: dict[str, int] = {}
    for i, digest in enumerate(prompt_digests):
        first_with.setdefault(digest, i)
    if prompts is None:
        prompt_ids = _existing_prompts(project, list(first_with))
    else:
        prompt_ids = {digest: prompts[digest] for digest in first_with if digest in prompts}
    # Only prompts that were there before can have responses and comparisons already.
    old_prompts = sorted(prompt_ids.values())
    missing = [digest for digest in first_with if digest not in prompt_ids]
    rows = ((project.pk, *_prompt_columns(records[first_with[d]].prompt), d) for d in missing)
    lines = (f"{project.pk},{chunk.prompt_csv[first_with[d]]},{d}" for d in missing)
    columns = ("project_id", "text", "messages", "content_hash")
    inserted = _insert_rows(Prompt, columns, rows, ids=len(missing), lines=lines, now=now)
    if inserted is None:
        written.prompts = _existing_prompts(project, missing)
    else:
        written.prompts = dict(zip(missing, inserted, strict=True))
    prompt_ids.update(written.prompts)
    summary.prompts_created = len(missing)
    record_prompts = [prompt_ids[digest] for digest in prompt_digests]

    # 2. Responses, found by (prompt, digest of text).
    wanted_responses: dict[tuple[int, str], tuple[tuple[str, str | None], str]] = {}
    for r, pid, digests, texts in zip(records, record_prompts, response_digests, chunk.response_csv, strict=True):
        for item, digest, text in zip(r.responses, digests, texts, strict=True):
            wanted_responses.setdefault((pid, digest), (item, text))
    response_ids, policies = _existing_responses(old_prompts)
    missing_r = [key for key in wanted_responses if key not in response_ids]
    rows = ((pid, wanted_responses[pid, d][0][0], d, wanted_responses[pid, d][0][1] or source) for pid, d in missing_r)
    default_source = _csv_text(source)
    lines = (
        f"{pid},{text},{d},{default_source if item.source is None else _csv_text(item.source)}"
        for pid, d in missing_r
        for item, text in (wanted_responses[pid, d],)
    )
    columns = ("prompt_id", "text", "content_hash", "source")
    inserted = _insert_rows(Response, columns, rows, ids=len(missing_r), lines=lines, now=now)
    if inserted is None:
        response_ids, policies = _existing_responses(sorted(set(record_prompts)))
    else:
        response_ids.update(zip(missing_r, inserted, strict=True))
    summary.responses_created = len(missing_r)
    record_responses = [
        [response_ids[pid, digest] for digest in digests]
        for pid, digests in zip(record_prompts, response_digests, strict=True)
    ]

    # 3. Comparisons: the labelled pair itself, or every pair of a prompt's responses (up to the cap).
    # A new comparison's label count is known now: one label per annotator who labelled its pair
    # in this import. Writing it with the row saves recounting every new comparison afterwards.
    pairs: dict[tuple[int, int], int] = {}
    labellers: dict[tuple[int, int], set[str]] = {}
    for r, pid, ids in zip(records, record_prompts, record_responses, strict=True):
        if r.is_pair:
            x, y = ids
            key = (x, y) if x < y else (y, x)
            pairs.setdefault(key, pid)
            labellers.setdefault(key, set()).add(r.annotator or annotator)
            continue
        combos = itertools.combinations(ids, 2)
        if max_pairs_per_prompt is not None:
            combos = itertools.islice(combos, max_pairs_per_prompt)
        for x, y in combos:
            pairs.setdefault((x, y) if x < y else (y, x), pid)
    comparison_ids = _existing_comparisons(old_prompts)
    preexisting = set(comparison_ids.values())
    missing_c = [key for key in pairs if key not in comparison_ids]
    # policy_rank as the trigger of migration 0004 would set it (the newest policy version of the two
    # responses, 0 for none): new responses have none, old ones were read above. Sent, it spares
    # PostgreSQL the trigger's query per row (migration 0009).
    rows = (
        (project.pk, pairs[a, b], a, b, len(labellers.get((a, b), ())), max(policies.get(a, 0), policies.get(b, 0)))
        for a, b in missing_c
    )
    lines = (",".join(map(str, row)) for row in rows)  # integers only
    columns = ("project_id", "prompt_id", "response_a_id", "response_b_id", "label_count", "policy_rank")
    inserted = _insert_rows(Comparison, columns, rows, ids=len(missing_c), lines=lines, now=now)
    if inserted is None:
        comparison_ids = _existing_comparisons(sorted(set(pairs.values())))
    else:
        comparison_ids.update(zip(missing_c, inserted, strict=True))
    summary.comparisons_created = len(missing_c)
    created = set(inserted or ())

    # 4. Preferences for labelled pairs: one per (comparison, annotator); a repeat must agree.
    labelled = [i for i, r in enumerate(records) if r.is_pair]
    new: list[tuple] = []  # (project, comparison, annotator, choice, strength)
    if labelled:
        names = {records[i].annotator or annotator for i in labelled}
        written.annotators = _imported_annotators(names - annotators.keys())
        annotator_ids = {**annotators, **written.annotators}
        wanted: dict[tuple[int, int], tuple[int, str, int | None]] = {}
        errors: list[tuple[int, str]] = []
        for i in labelled:
            r = records[i]
            first, second = record_responses[i]
            a, b = (first, second) if first < second else (second, first)
            if r.choice == "chosen":
                choice, strength = (Choice.A if first == a else Choice.B), strength_from_margin(r.margin)
            else:
                choice, strength = r.choice, None
            key = (comparison_ids[a, b], annotator_ids[r.annotator or annotator])
            held = wanted.get(key)
            if held is None:
                wanted[key] = (r.line, choice, strength)
            elif held[1] != choice:
                errors.append((r.line, f"contradicts line {held[0]}: same pair, same annotator, another choice"))
        # A label an earlier chunk of this file wrote is a repeat of a line, not a stored label.
        for key in [key for key in wanted if key in labels]:
            line, choice, _ = wanted.pop(key)
            earlier, earlier_choice = labels[key]
            if choice != earlier_choice:
                errors.append((line, f"contradicts line {earlier}: same pair, same annotator, another choice"))
        # A comparison made by this import has no labels yet: only the others are looked up.
        existing = _existing_preferences([key for key in wanted if key[0] in preexisting])
        for key, (line, choice, _) in wanted.items():
            if key in existing and existing[key] != choice:
                stored = existing[key]
                errors.append(
                    (line, f"contradicts the stored label of comparison {key[0]} ({stored} there, {choice} here)")
                )
        if errors:
            raise ImportFileError(sorted(errors))
        new = [
            (project.pk, cid, uid, choice, strength)
            for (cid, uid), (_, choice, strength) in wanted.items()
            if (cid, uid) not in existing
        ]
        summary.preferences_created = len(new)
        summary.preferences_existing = len(wanted) - len(new)
        written.labels = {key: (line, choice) for key, (line, choice, _) in wanted.items() if key not in existing}
        # Comparisons written now got their counts with them; older ones given a label are recounted.
        written.recount = {cid for _, cid, _, _, _ in new if cid in preexisting}
    # The labels of the comparisons made now go in while the chunk counts its rows itself; then,
    # with the triggers counting again, those of older ones.
    theirs = new
    if counting:
        ours = [row for row in new if row[1] in created]
        _insert_preferences(ours, now)
        _stop_counting(project, written.counts, now, (len(missing), len(missing_r), len(created)), ours)
        theirs = [row for row in new if row[1] not in created]
    _insert_preferences(theirs, now)
    return written


def _insert_preferences(rows: list[tuple], now: datetime) -> None:
    """Labels: (project, comparison, annotator, choice, strength) each."""
    columns = ("project_id", "comparison_id", "annotator_id", "choice", "strength")
    # A choice is a fixed word, which CSV takes unquoted; no strength is NULL (an empty field).
    lines = (f"{p},{c},{u},{choice},{'' if strength is None else strength}" for p, c, u, choice, strength in rows)
    _insert_rows(Preference, columns, rows, lines=lines, now=now)


def _stop_counting(
    project: Project, counts: _Counts, now: datetime, created: tuple[int, int, int], labels: list[tuple]
) -> None:
    """Ends a chunk's counting of its own rows (PostgreSQL): counts the prompts, responses and
    comparisons it `created` (how many of each) and its `labels` on those comparisons, and queues
    the setting that hands the counting back to the triggers and the per-comparison counts."""
    copies: _Copies = _writing.copies
    copies.run(f"SELECT set_config('{STATS_BY_WRITER}', 'off', true)")
    labelled: dict[int, list[tuple[int, str]]] = {}
    for _, cid, uid, choice, _ in labels:
        labelled.setdefault(cid, []).append((uid, choice))
    lines = counts.created(now, *created, labelled)
    if lines:
        copies.copy(
            "COPY annotation_stats_comparison (comparison_id, n_a, n_b, n_tie, n_both_bad, project_id) "
            "FROM STDIN WITH (FORMAT csv)",
            (f"{line},{project.pk}\n" for line in lines),
        )


def _lookup_batch() -> int:
    # PostgreSQL takes thousands of parameters a query; SQLite's limit is lower.
    return 5000 if connection.vendor == "postgresql" else BATCH


def _csv_text(text: str) -> str:
    # COPY's CSV format: a quoted value is taken as it is, a doubled quote standing for one. Quoting
    # every text keeps "" apart from NULL (an unquoted empty value), and one replace() is all the
    # escaping it needs.
    return '"' + text.replace('"', '""') + '"'


def _csv_value(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, str):
        return _csv_text(value)
    if isinstance(value, (dict, list)):
        return _csv_text(json.dumps(value, ensure_ascii=False))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


_TEXT_TYPES = {"CharField", "TextField", "SlugField"}
_INTEGER_TYPES = {
    "ForeignKey",
    "IntegerField",
    "BigIntegerField",
    "SmallIntegerField",
    "PositiveIntegerField",
    "PositiveSmallIntegerField",
    "PositiveBigIntegerField",
}


def _csv_converter(field) -> Callable[[object], str]:
    """How a column's values become COPY text: the common not-null kinds directly, others by type."""
    kind = field.get_internal_type()
    if field.null:
        return _csv_value
    if kind in _TEXT_TYPES:
        return _csv_text
    if kind == "ForeignKey":
        kind = field.target_field.get_internal_type()
    if kind in _INTEGER_TYPES or kind in ("AutoField", "BigAutoField"):
        return str
    return _csv_value


def _insert_rows(
    model,
    columns: tuple[str, ...],
    rows: Iterable[tuple],
    *,
    ids: int | None = None,
    lines: Iterable[str] | None = None,
    now: datetime | None = None,
) -> list[int] | None:
    """Inserts rows, each a tuple of values for `columns` (attnames); other columns take their
    model defaults. `ids`, the number of rows where their new primary keys are wanted: they are
    then returned in the order of `rows`, or None where the backend cannot say them (the caller then
    looks them up). `lines`, where given, are the same rows already rendered as COPY CSV (the
    columns' values in order, without a line end), which PostgreSQL then takes instead of `rows`.

    On PostgreSQL the rows go into the table by one COPY, which is several times faster than
    bulk_create (a model instance per row) or a multi-row INSERT (which the server must parse).
    Their keys, where wanted, are drawn from the table's sequence first and sent with the rows (an
    INSERT ... RETURNING would need the rows staged in a temporary table: COPY returns nothing, and
    the staging cost PostgreSQL more than the sequence, about a second per 100,000 pairs). Within
    preferences_import, its only caller, the COPY runs on the import's COPY thread (_Copies) while
    the caller goes on, and a failure is raised by a later statement. Constraints and triggers
    apply as to any insert: a duplicate fails it (IntegrityError). `now` is the creation time of
    rows whose model sets one (auto_now_add), by default the present moment."""
    postgresql = connection.vendor == "postgresql"
    rows = iter(lines if postgresql and lines is not None else rows)
    first = next(rows, None)
    if first is None:
        return []
    rows = itertools.chain([first], rows)
    if not postgresql:
        objects = [model(**dict(zip(columns, row, strict=True))) for row in rows]
        model.objects.bulk_create(objects, batch_size=BATCH)
        if any(obj.pk is None for obj in objects):
            return None
        return [obj.pk for obj in objects]
    meta = model._meta
    quote = connection.ops.quote_name
    given = [meta.get_field(name) for name in columns]
    converters = [_csv_converter(f) for f in given]
    now = now or timezone.now()
    # Defaulted columns go last, their text rendered once for every row.
    defaulted = [f for f in meta.concrete_fields if not f.primary_key and f.attname not in columns]
    tail = "".join("," + _csv_value(now if getattr(f, "auto_now_add", False) else f.get_default()) for f in defaulted)
    tail += "\n"
    names = [quote(f.column) for f in given + defaulted]
    table = quote(meta.db_table)
    if lines is None:
        lines = (",".join([convert(v) for convert, v in zip(converters, row, strict=True)]) for row in rows)
    else:
        lines = rows
    copies: _Copies = _writing.copies
    new_ids: list[int] = []
    if ids:
        new_ids = copies.keys(meta.db_table, meta.pk.column, ids)
        names.insert(0, quote(meta.pk.column))
        lines = (f"{key},{line}{tail}" for key, line in zip(new_ids, lines, strict=True))
    else:
        lines = (line + tail for line in lines)
    copies.copy(f"COPY {table} ({', '.join(names)}) FROM STDIN WITH (FORMAT csv)", lines)
    return new_ids


def comparisons_recount(*, comparison_ids: Sequence[int]) -> None:
    """Sets label_count from the preference rows, for writes that bypass preference_submit."""
    count = (
        Preference.objects.filter(comparison=OuterRef("pk"))
        .order_by()
        .values("comparison")
        .annotate(n=Count("id"))
        .values("n")
    )
    for batch in _batches(list(comparison_ids), _lookup_batch()):
        Comparison.objects.filter(pk__in=batch).update(label_count=Coalesce(Subquery(count), 0))


def _select_any(model, columns: tuple[str, ...], field: str, values: list, **equal) -> list[tuple]:
    """The `columns` of the rows whose `field` is one of `values` (and whose fields in `equal` have
    those values). On PostgreSQL one query, `= ANY(%s)` with the values as one array: Django's
    `__in` renders a parameter per value, which at 100,000 values took most of a second of Python."""
    if not values:
        return []
    if connection.vendor != "postgresql":
        rows: list[tuple] = []
        for batch in _batches(values, BATCH):
            rows += model.objects.filter(**{f"{field}__in": batch}, **equal).values_list(*columns)
        return rows
    meta = model._meta
    quote = connection.ops.quote_name
    selected = ", ".join(quote(meta.get_field(name).column) for name in columns)
    where = " AND ".join(
        [f"{quote(meta.get_field(field).column)} = ANY(%s)"]
        + [f"{quote(meta.get_field(name).column)} = %s" for name in equal]
    )
    values = _array_text(values)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {selected} FROM {quote(meta.db_table)} WHERE {where}", [values, *equal.values()])
        return cursor.fetchall()


def _array_text(values: list) -> str | list:
    """Integers or digests (hexadecimal) as the text of one PostgreSQL array: psycopg2 quotes a list
    element by element (a third of a second per 100,000 digests) and the server then parses each."""
    if all(type(v) is int for v in values):
        return "{" + ",".join(map(str, values)) + "}"
    if all(type(v) is str and v for v in values):
        joined = ",".join(values)
        if _HEX_LIST.fullmatch(joined) and joined.count(",") == len(values) - 1:  # no comma in a value
            return "{" + joined + "}"
    return list(values)


_HEX_LIST = re.compile("[0-9a-f,]*")


def _existing_prompts(project: Project, hashes: list[str]) -> dict[str, int]:
    return dict(_select_any(Prompt, ("content_hash", "id"), "content_hash", hashes, project_id=project.pk))


def _existing_responses(prompt_ids: list[int]) -> tuple[dict[tuple[int, str], int], dict[int, int]]:
    """Every response of these prompts, by (prompt, digest), and the policy version of those that
    have one, by id. A prompt has a handful of responses, and the prompt_id index finds them, where
    a filter on both columns made PostgreSQL scan."""
    rows = _select_any(Response, ("id", "prompt_id", "content_hash", "policy_version_id"), "prompt_id", prompt_ids)
    return {(pid, digest): rid for rid, pid, digest, _ in rows}, {rid: pv for rid, _, _, pv in rows if pv}


def _existing_comparisons(prompt_ids: list[int]) -> dict[tuple[int, int], int]:
    """Every comparison of these prompts, by its (response_a, response_b) pair."""
    rows = _select_any(Comparison, ("id", "response_a_id", "response_b_id"), "prompt_id", prompt_ids)
    return {(a, b): cid for cid, a, b in rows}


def _existing_preferences(keys: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    wanted = set(keys)
    rows = _select_any(
        Preference, ("comparison_id", "annotator_id", "choice"), "comparison_id", sorted({k[0] for k in keys})
    )
    return {(cid, uid): choice for cid, uid, choice in rows if (cid, uid) in wanted}
