"""On PostgreSQL a raw export is written by the database (annotation.exports.export_chunks): it
builds the JSONL lines and the CSV and Parquet columns itself, through a server-side cursor. What
it sends must be what the Python writers make of export_rows: byte for byte, except for the white
space inside a chat prompt's JSON in JSONL, for every format, filter and awkward text."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json

import pyarrow.parquet as pq
import pytest
from django.db import connection, transaction

from annotation import exports
from annotation.models import Comparison, Preference
from annotation.selectors import ExportFilters, export_rows
from tests.factories import PromptFactory, ResponseFactory, UserFactory, make_preference
from training.models import ModelVersion

pytestmark = pytest.mark.django_db

URL = "/api/v1/projects/main/export/"
AWKWARD = [
    'say "hi", then \\ leave\n\ttabbed\r\nline',
    "control \x01\x1f and \x7f, \\N and \\n as text",
    "a lone \r return and a \ttab",
    "emoji \U0001f600, right-to-left \u05e9\u05dc\u05d5\u05dd, \u2028 separator, zero\u200bwidth",
    "",
    '{"looks": ["like", "json"]}',
]


@pytest.fixture
def varied(world):
    """Labels of every kind: a, b (with and without strength), tie, both_bad; plain and chat
    prompts with awkward text; a response from a policy; times with and without microseconds."""
    project, users = world.project, world.users
    policy = ModelVersion.objects.create(project=project, kind="policy", version=3, artifact_path="/p", base="b")
    annotators = [users["annotator"], users["other"], users["admin"], UserFactory(username='quote"d,name')]
    comparisons = list(world.comparisons)
    for i, text in enumerate(AWKWARD):
        if i % 2:
            prompt = PromptFactory(project=project, text="", messages=[{"role": "user", "content": text}])
        else:
            prompt = PromptFactory(project=project, text=f"{text} (prompt {i})")
        first = ResponseFactory(prompt=prompt, text=f"first: {text}", policy_version=policy if i == 2 else None)
        second = ResponseFactory(prompt=prompt, text=text or "second")
        comparisons.append(
            Comparison.objects.create(project=project, prompt=prompt, response_a=first, response_b=second)
        )
    choices = [("a", 3), ("b", None), ("tie", None), ("both_bad", None), ("b", 1), ("a", None)]
    n = 0
    for comparison in comparisons:
        for annotator in annotators:
            if Preference.objects.filter(comparison=comparison, annotator=annotator).exists():
                continue
            choice, strength = choices[n % len(choices)]
            make_preference(comparison=comparison, annotator=annotator, choice=choice, strength=strength)
            n += 1
    base = dt.datetime(2026, 3, 4, 5, 6, 7, tzinfo=dt.UTC)
    for i, pk in enumerate(Preference.objects.filter(project=project).order_by("id").values_list("pk", flat=True)):
        # Whole seconds, trailing zeros in the microseconds, and full microseconds.
        at = base + dt.timedelta(hours=i, microseconds=(0, 120000, 654321)[i % 3])
        Preference.objects.filter(pk=pk).update(created_at=at)
    world.policy = policy
    return world


def both_ways(project, fmt: str, filters: ExportFilters) -> tuple[bytes, bytes]:
    assert exports._database_writes_rows(filters, "raw")
    with transaction.atomic():
        chunks = list(exports.export_chunks(project=project, filters=filters, fmt=fmt))
    from_database = b"".join(chunks)
    from_python = b"".join(exports.write_export(export_rows(project=project, filters=filters), fmt=fmt))
    return from_database, from_python


FILTERS = {
    "default": {},
    "ties": {"include_ties": True},
    "since": {"include_ties": True, "since": dt.datetime(2026, 3, 4, 9, tzinfo=dt.UTC)},
    "until": {"until": dt.datetime(2026, 3, 4, 23, 6, 7, tzinfo=dt.UTC)},
}


@pytest.mark.parametrize("fmt", ["trl", "conversational"])
@pytest.mark.parametrize("which", list(FILTERS))
def test_jsonl_from_the_database_is_the_writers_jsonl(varied, fmt, which):
    from_database, from_python = both_ways(varied.project, fmt, ExportFilters(**FILTERS[which]))
    ours, theirs = from_database.splitlines(), from_python.splitlines()
    assert len(ours) == len(theirs) > 0 and from_database.endswith(b"\n")
    assert [json.loads(line) for line in ours] == [json.loads(line) for line in theirs]
    # The database writes a chat prompt's turns with jsonb's spacing; every other line is the same bytes.
    chat = set(Comparison.objects.filter(prompt__messages__isnull=False).values_list("pk", flat=True))
    for line, expected in zip(ours, theirs, strict=True):
        if json.loads(expected)["comparison_id"] not in chat:
            assert line == expected
    assert any(json.loads(line)["comparison_id"] in chat for line in ours)


@pytest.mark.parametrize("which", list(FILTERS))
def test_csv_from_the_database_is_the_writers_csv_byte_for_byte(varied, which):
    from_database, from_python = both_ways(varied.project, "csv", ExportFilters(**FILTERS[which]))
    assert from_database == from_python
    rows = list(csv.reader(io.StringIO(from_database.decode())))
    assert len(rows) > 1 and any(row[0].startswith('[{"role": "user"') for row in rows)


@pytest.mark.parametrize("which", list(FILTERS))
def test_parquet_from_the_database_holds_the_writers_table(varied, which):
    from_database, from_python = both_ways(varied.project, "parquet", ExportFilters(**FILTERS[which]))
    ours, theirs = pq.read_table(io.BytesIO(from_database)), pq.read_table(io.BytesIO(from_python))
    assert ours.num_rows > 0
    assert ours.schema == theirs.schema and ours.equals(theirs)


def test_filters_by_annotator_and_policy_take_the_database_path_with_the_same_rows(varied):
    quoted = Preference.objects.filter(annotator__username='quote"d,name').values_list("annotator", flat=True)[0]
    for filters in (
        ExportFilters(annotator_id=quoted, include_ties=True),
        ExportFilters(policy_version_id=varied.policy.pk),
    ):
        from_database, from_python = both_ways(varied.project, "csv", filters)
        assert from_database == from_python and from_database.count(b"\n") >= 2


def test_the_api_serves_raw_exports_from_the_database_and_the_rest_from_python(varied, monkeypatch):
    admin = varied.client("admin")
    expected = {
        fmt: b"".join(admin.get(URL + f"?format={fmt}&include_ties=true").streaming_content)
        for fmt in ("trl", "conversational", "csv", "parquet")
    }

    def refuse(**kwargs):
        raise AssertionError("export_rows is not used for a raw export on PostgreSQL")

    monkeypatch.setattr(exports, "export_rows", refuse)
    for fmt, body in expected.items():
        response = admin.get(URL + f"?format={fmt}&include_ties=true")
        assert response.status_code == 200 and b"".join(response.streaming_content) == body
    # Aggregated rows and a minimum agreement need every label of a comparison: Python's path.
    for query in ("?mode=aggregated", "?min_agreement=0.5"):
        with pytest.raises(AssertionError, match="not used"):
            b"".join(admin.get(URL + query).streaming_content)


def test_rows_come_in_chunks_of_fetch_rows_and_a_closed_stream_releases_its_cursor(varied, monkeypatch):
    monkeypatch.setattr(exports, "FETCH_ROWS", 3)
    filters = ExportFilters(include_ties=True)
    total = Preference.objects.filter(project=varied.project).count()
    with transaction.atomic():
        chunks = list(exports.export_chunks(project=varied.project, filters=filters, fmt="trl"))
        assert [chunk.count(b"\n") for chunk in chunks] == [3] * (total // 3) + ([total % 3] if total % 3 else [])
        stream = exports.export_chunks(project=varied.project, filters=filters, fmt="csv")
        next(stream)
        stream.close()
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_cursors")
            assert cursor.fetchone()[0] == 0
        assert Preference.objects.filter(project=varied.project).count() == total


def test_an_empty_export_from_the_database_is_empty_in_every_format(world):
    world.others_preference.delete()
    filters = ExportFilters(include_ties=True)
    for fmt in ("trl", "conversational"):
        assert both_ways(world.project, fmt, filters) == (b"", b"")
    from_database, from_python = both_ways(world.project, "csv", filters)
    assert from_database == from_python == b"prompt,chosen,rejected,margin,comparison_id,annotator,created_at,choice\n"
    from_database, _ = both_ways(world.project, "parquet", filters)
    assert pq.read_table(io.BytesIO(from_database)).num_rows == 0


def test_csv_fields_are_written_as_csv_writer_writes_them_and_read_back_whole():
    values = [*AWKWARD, "plain", " spaced ", 'only "quotes"', "only,commas", 2.0, 0.6667, 17, None, "tie"]
    ours = ",".join(exports._csv_field(v) for v in values) + "\n"
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerow(values)
    # csv.writer leaves a lone carriage return unquoted (and csv.reader then refuses the line);
    # the export quotes it. Every other field is the same.
    lone = AWKWARD.index("a lone \r return and a \ttab")
    assert ours.replace('"a lone \r return and a \ttab"', "a lone \r return and a \ttab") == buffer.getvalue()
    (row,) = list(csv.reader(io.StringIO(ours, newline="")))
    assert row == [*AWKWARD, "plain", " spaced ", 'only "quotes"', "only,commas", "2.0", "0.6667", "17", "", "tie"]
    assert row[lone] == AWKWARD[lone]
