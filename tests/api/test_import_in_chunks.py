"""A JSONL import is read and written a chunk at a time (services.import_chunks, read_ahead): the
next chunk is parsed by a thread of its own while this one is written, all in one transaction.
Here chunks are two records long, so that every rule that spans records also spans chunks: what
is written, what is counted, which labels contradict, and that one bad line anywhere leaves
nothing written."""

from __future__ import annotations

import json
import threading
import time

import pytest

from annotation import services
from annotation.jsonl import ImportFileError
from annotation.models import Comparison, Preference, Prompt, Response
from tests.api.test_tokens_and_errors import assert_error_shape

pytestmark = pytest.mark.django_db

BASE = "/api/v1/projects/main"


@pytest.fixture
def two_per_chunk(monkeypatch) -> list[int]:
    """Chunks of two records; returns the sizes of the chunks written, as they are written."""
    monkeypatch.setattr(services, "IMPORT_CHUNK", 2)
    sizes: list[int] = []
    write = services._import

    def counted(project, chunk, *args):
        sizes.append(len(chunk.records))
        return write(project, chunk, *args)

    monkeypatch.setattr(services, "_import", counted)
    return sizes


def post_jsonl(world, lines: list) -> object:
    body = "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    return world.client("admin").generic("POST", f"{BASE}/import/", body.encode(), content_type="application/jsonl")


def snapshot(project) -> dict:
    comparisons = Comparison.objects.filter(project=project)
    return {
        "prompts": sorted(Prompt.objects.filter(project=project).values_list("text", flat=True)),
        "responses": sorted(Response.objects.filter(prompt__project=project).values_list("prompt__text", "text")),
        "comparisons": sorted(comparisons.values_list("prompt__text", "label_count", "policy_rank")),
        "labels": sorted(
            Preference.objects.filter(project=project).values_list(
                "comparison__prompt__text", "annotator__username", "choice", "strength"
            )
        ),
    }


def imported_prompts(project):
    return Prompt.objects.filter(project=project, text__in=["One?", "Two?", "Three?"])


LINES = [
    {"prompt": "One?", "chosen": "Yes.", "rejected": "No.", "annotator": "ann", "margin": 2},
    {"prompt": "Two?", "responses": ["A", "B", "C"]},
    {"prompt": "One?", "chosen": "Yes.", "rejected": "No.", "annotator": "ann", "margin": 2},  # a repeat
    {"prompt": "One?", "chosen": "No.", "rejected": "Yes.", "annotator": "bob"},  # a second annotator
    {"prompt": "Two?", "chosen": "C", "rejected": "A", "annotator": "bob"},  # labels a comparison of line 2
    {"prompt": "Three?", "chosen": "x", "rejected": "y", "choice": "tie", "annotator": "ann"},
    {"prompt": "Two?", "chosen": "C", "rejected": "A", "annotator": "carol"},
]


def test_an_import_in_chunks_writes_and_counts_what_one_chunk_would(world, two_per_chunk, monkeypatch):
    before = snapshot(world.project)
    chunked = post_jsonl(world, LINES)
    assert chunked.status_code == 201, chunked.json()
    assert two_per_chunk == [2, 2, 2, 1]
    written = snapshot(world.project)
    assert written != before
    for prompt in imported_prompts(world.project):
        prompt.delete()  # Django's cascade: its responses, comparisons and labels
    assert snapshot(world.project) == before
    monkeypatch.setattr(services, "IMPORT_CHUNK", 10_000)
    whole = post_jsonl(world, LINES)
    assert whole.json() == chunked.json()
    assert snapshot(world.project) == written
    # 3 new prompts, 2 + 3 + 2 responses, 1 + 3 + 1 comparisons, 5 labels (the repeat of line 1 is
    # neither written nor "already there"); two comparisons have two labels each.
    assert chunked.json() == {
        "prompts_created": 3,
        "responses_created": 7,
        "comparisons_created": 5,
        "preferences_created": 5,
        "preferences_existing": 0,
    }
    counts = Comparison.objects.filter(prompt__in=imported_prompts(world.project)).values_list("label_count", flat=True)
    assert sorted(counts) == [0, 0, 1, 2, 2]


def test_a_label_contradicting_one_in_an_earlier_chunk_refuses_the_import_and_names_that_line(world, two_per_chunk):
    before = snapshot(world.project)
    lines = [*LINES[:4], {"prompt": "One?", "chosen": "No.", "rejected": "Yes.", "annotator": "ann"}]
    errors = assert_error_shape(post_jsonl(world, lines), 400)["errors"]
    assert errors == {"line 5": ["contradicts line 1: same pair, same annotator, another choice"]}
    assert two_per_chunk == [2, 2, 1]  # line 5 came in a chunk of its own, after line 1's was written
    assert snapshot(world.project) == before


def test_a_bad_line_after_chunks_were_written_leaves_nothing_written(world, two_per_chunk):
    before = snapshot(world.project)
    lines = [*LINES, '{"prompt": "cut off"', {"prompt": "Nul\u0000?", "chosen": "a", "rejected": "b"}]
    errors = assert_error_shape(post_jsonl(world, lines), 400)["errors"]
    assert set(errors) == {"line 8", "line 9"}
    assert two_per_chunk == [2, 2, 2]  # written, then rolled back
    assert "NUL" in errors["line 9"][0]
    assert snapshot(world.project) == before


def test_after_a_contradiction_the_rest_of_the_file_is_still_read_for_bad_lines(world, two_per_chunk):
    before = snapshot(world.project)
    lines = [
        LINES[0],
        {"prompt": "One?", "chosen": "No.", "rejected": "Yes.", "annotator": "ann"},
        *LINES[1:6],
        "not json",
    ]
    errors = assert_error_shape(post_jsonl(world, lines), 400)["errors"]
    assert set(errors) == {"line 2", "line 8"}
    assert two_per_chunk == [2]  # nothing written after the contradiction
    assert snapshot(world.project) == before


def test_read_ahead_hands_over_items_in_order_and_the_producer_s_error_last():
    def produce():
        yield from range(5)
        raise ImportFileError([(9, "bad")])

    got = []
    with pytest.raises(ImportFileError):
        for item in services.read_ahead(produce()):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_read_ahead_stops_its_thread_when_the_consumer_stops_early():
    produced = []

    def produce():
        for i in range(1000):
            produced.append(i)
            yield i

    ahead = services.read_ahead(produce(), depth=2)
    assert next(ahead) == 0
    ahead.close()
    deadline = time.monotonic() + 5
    while any(t.name == "import-reader" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the reader thread is still running"
        time.sleep(0.02)
    assert len(produced) < 10
