"""The fast paths of the import (annotation.jsonl, services.preferences_import): lines are read by
orjson and, where it refuses one, by json, with the same result as json alone; rows go to
PostgreSQL by COPY and come back exactly as they were sent; a row written by someone else between
the look-ups and the inserts is found on a second try; two imports of one file write it once."""

from __future__ import annotations

import io
import json
import threading

import pytest
from django.db import connection, transaction

from annotation import jsonl, services
from annotation.jsonl import LineError, bounded_lines, parse_line, read_records
from annotation.models import Comparison, Preference, Prompt, Response
from tests.console.test_label_aggregates import assert_aggregates_match
from tests.factories import ProjectFactory

# Two connections writing at once: SQLite allows one writer at a time.
on_postgresql = pytest.mark.skipif(connection.vendor != "postgresql", reason="needs concurrent writers")


def records_of(lines: list[dict]):
    return read_records(bounded_lines(io.BytesIO(b"".join(json.dumps(x).encode() + b"\n" for x in lines))))


def counts(project) -> tuple[int, int, int, int]:
    return (
        Prompt.objects.filter(project=project).count(),
        Response.objects.filter(prompt__project=project).count(),
        Comparison.objects.filter(project=project).count(),
        Preference.objects.filter(project=project).count(),
    )


AWKWARD = [
    'a "quoted", comma, \\ backslash',
    "\\N",
    "NULL",
    "line\nbreak\r\nand\ttab",
    "emoji \U0001f600 and \u05e9\u05dc\u05d5\u05dd",
    " ",
]


@pytest.mark.django_db
def test_awkward_text_is_stored_exactly_as_it_was_imported():
    project = ProjectFactory()
    lines = [
        {"prompt": f"{text} ({i})", "chosen": text, "rejected": f"not {text}", "annotator": f'ann "{i}", x'}
        for i, text in enumerate(AWKWARD)
    ]
    lines.append({"prompt": "Empty answers are answers.", "chosen": "", "rejected": "Something."})
    chat = [{"role": "system", "content": 'Be "brief",\nplease \\'}, {"role": "user", "content": "\u2028?"}]
    lines.append({"prompt": chat, "responses": [{"text": "one", "model": 'm "1", v2'}, "two", "\\N"]})
    summary = services.preferences_import(project=project, records=records_of(lines), source='src "x", y')
    assert (summary.prompts_created, summary.responses_created) == (len(lines), 2 * (len(lines) - 1) + 3)
    for i, text in enumerate(AWKWARD):
        prompt = Prompt.objects.get(project=project, text=f"{text} ({i})")
        assert prompt.messages is None
        assert set(Response.objects.filter(prompt=prompt).values_list("text", "source")) == {
            (text, 'src "x", y'),
            (f"not {text}", 'src "x", y'),
        }
        preference = Preference.objects.get(comparison__prompt=prompt)
        assert preference.annotator.username == f'import:ann "{i}", x'
        assert (preference.rationale, preference.shown_left, preference.time_spent_ms) == ("", "", None)
    assert Response.objects.filter(prompt__project=project, text="").count() == 1
    chat_prompt = Prompt.objects.get(project=project, text="")
    assert chat_prompt.messages == chat
    assert sorted(Response.objects.filter(prompt=chat_prompt).values_list("text", "source")) == [
        ("\\N", 'src "x", y'),
        ("one", 'm "1", v2'),
        ("two", 'src "x", y'),
    ]
    assert Comparison.objects.filter(prompt=chat_prompt).count() == 3
    assert Comparison.objects.filter(prompt=chat_prompt, policy_rank=0, label_count=0, is_gold=False).count() == 3
    before = counts(project)
    again = services.preferences_import(project=project, records=records_of(lines), source='src "x", y')
    assert (again.prompts_created, again.responses_created, again.comparisons_created) == (0, 0, 0)
    assert again.preferences_existing == len(AWKWARD) + 1 and counts(project) == before


ODD_LINES = [
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": NaN}',
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1e400}',
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1' + b"0" * 400 + b"}",
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1180591620717411303424}',
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": -1180591620717411303424}',
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "margin": 2, "margin": 3}',
    b'{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}',
    b'{"prompt": "p", "chosen": "a", "rejected": "b", "x": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"prompt": "p", "chosen": "a\tb", "rejected": "b"}',
    b'{"prompt": "p", "chosen": "a", "rejected": "b"} trailing',
    b"\xef\xbb\xbf{}",
    b"   \r\n",
    b"\x0c\n",
    b"[1, 2]",
    b'{"prompt": "caf\xe9"}',
    b'{"prompt": "p", "responses": ["x", {"text": "y", "model": "m"}, 3]}',
    b'{"prompt": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "a"}], '
    b'"rejected": "b", "tie": true, "annotator": " bob "}',
]


def read_line(raw: bytes):
    try:
        return parse_line(raw, 7)
    except LineError as exc:
        return f"LineError: {exc}"


def test_orjson_and_json_read_every_line_alike(hh_path, monkeypatch):
    lines = hh_path.read_bytes().splitlines(keepends=True) + ODD_LINES
    with_orjson = [read_line(raw) for raw in lines]
    monkeypatch.setattr(jsonl, "orjson", None)
    with_json = [read_line(raw) for raw in lines]
    assert with_orjson == with_json
    odd = dict(zip(ODD_LINES, with_orjson[-len(ODD_LINES) :], strict=True))
    assert (
        odd[ODD_LINES[0]]
        == odd[ODD_LINES[1]]
        == odd[ODD_LINES[2]]
        == ('LineError: "margin" must be a finite number >= 0')
    )
    assert odd[ODD_LINES[3]].margin == 1180591620717411303424.0
    assert odd[ODD_LINES[5]].margin == 3.0
    assert odd[ODD_LINES[6]].prompt == "\ud800"  # refused later, as unstorable, with its line
    assert odd[ODD_LINES[7]] == "LineError: invalid JSON: nested too deeply"
    assert odd[ODD_LINES[11]] is None and odd[ODD_LINES[12]] is None  # blank lines


@pytest.mark.django_db
def test_a_row_written_between_the_look_ups_and_the_inserts_is_found_on_a_second_try(monkeypatch):
    project = ProjectFactory()
    lines = [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No.", "annotator": "ann"} for i in range(20)]
    services.preferences_import(project=project, records=records_of(lines[:10]))
    before = counts(project)
    real = services._existing_comparisons
    calls = []

    def stale_once(prompt_ids):
        # The first look-up misses the comparisons, as if another transaction had just written them.
        calls.append(len(prompt_ids))
        return {} if len(calls) == 1 else real(prompt_ids)

    monkeypatch.setattr(services, "_existing_comparisons", stale_once)
    summary = services.preferences_import(project=project, records=records_of(lines))
    assert len(calls) == 2
    assert (summary.prompts_created, summary.comparisons_created, summary.preferences_created) == (10, 10, 10)
    assert summary.preferences_existing == 10
    assert counts(project) == (before[0] + 10, before[1] + 20, before[2] + 10, before[3] + 10)
    assert set(Comparison.objects.filter(project=project).values_list("label_count", flat=True)) == {1}


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_second_import_of_the_same_file_waits_for_the_first_and_adds_nothing():
    project = ProjectFactory()
    lines = [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."} for i in range(50)]
    first_written, release, second_done = threading.Event(), threading.Event(), threading.Event()
    results, failures = {}, []

    def first():
        try:
            with transaction.atomic():
                results["first"] = services.preferences_import(project=project, records=records_of(lines))
                first_written.set()
                release.wait(10)
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            first_written.set()
            connection.close()

    def second():
        try:
            first_written.wait(10)
            results["second"] = services.preferences_import(project=project, records=records_of(lines))
        except Exception as exc:  # noqa: BLE001 - reported by the test below
            failures.append(exc)
        finally:
            second_done.set()
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    first_written.wait(10)
    assert not second_done.wait(1.0), "the second import did not wait for the first one's transaction"
    release.set()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    assert results["first"].preferences_created == 50
    assert (results["second"].prompts_created, results["second"].preferences_created) == (0, 0)
    assert results["second"].preferences_existing == 50
    assert counts(project) == (50, 100, 50, 50)


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_prompt_another_writer_adds_to_a_new_project_mid_import_is_found_and_reused(monkeypatch):
    # An import into a project with no prompts looks none up (it keeps its own); a prompt committed
    # by another connection meanwhile fails that chunk's COPY, which is then done again with look-ups.
    monkeypatch.setattr(services, "IMPORT_CHUNK", 2)
    project = ProjectFactory()
    lines = [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No.", "annotator": "ann"} for i in range(6)]
    write, chunks, looked_up = services._import, [], []
    find = services._existing_prompts

    def other_writer():
        try:
            Prompt.objects.create(project=project, text="Q4?", content_hash=services.content_hash("Q4?"))
        finally:
            connection.close()

    def chunk_written(project_, chunk, *args):
        chunks.append([r.prompt for r in chunk.records])
        if len(chunks) == 2:  # the second chunk: Q2, Q3; Q4 comes in the third
            thread = threading.Thread(target=other_writer)
            thread.start()
            thread.join(10)
        return write(project_, chunk, *args)

    def find_prompts(project_, digests):
        looked_up.append(len(digests))
        return find(project_, digests)

    monkeypatch.setattr(services, "_import", chunk_written)
    monkeypatch.setattr(services, "_existing_prompts", find_prompts)
    theirs = None
    with transaction.atomic():
        summary = services.preferences_import(project=project, chunks=services.import_chunks(jsonl_lines(lines)))
        theirs = Prompt.objects.get(project=project, text="Q4?")
    # Q4's chunk was written twice (the COPY refused, then again with look-ups), and only then looked up.
    assert [len(c) for c in chunks] == [2, 2, 2, 2] and chunks[2] == chunks[3] == ["Q4?", "Q5?"]
    assert looked_up == [2]
    assert summary.prompts_created == 5 and summary.preferences_created == 6
    assert counts(project) == (6, 12, 6, 6)
    assert Comparison.objects.filter(project=project, prompt=theirs).count() == 1
    assert Preference.objects.filter(
        project=project, comparison__prompt=theirs, annotator__username="import:ann"
    ).exists()
    # The statistics the import counted itself: those of the chunk done twice counted once.
    assert_aggregates_match()


def jsonl_lines(lines: list[dict]) -> list[bytes]:
    return [json.dumps(x).encode() + b"\n" for x in lines]


def test_look_up_values_go_as_the_text_of_one_array_where_that_is_safe():
    digest = services.content_hash("x")
    assert services._array_text([3, -1, 20]) == "{3,-1,20}"
    assert services._array_text([digest, digest]) == "{" + digest + "," + digest + "}"
    # Anything an array's text would have to quote goes as a list, for psycopg2 to quote.
    for odd in (["a,b"], ["NULL"], [""], ["a b"], ['"'], ["{}"], [1, "1"], [True]):
        assert services._array_text(odd) == odd


def test_an_import_pauses_the_cycle_collector_and_shortens_the_switch_interval_and_restores_both():
    import gc
    import sys

    interval, enabled = sys.getswitchinterval(), gc.isenabled()
    with services._interpreter_set_for_import():
        with services._interpreter_set_for_import():  # a second import in the same process
            assert not gc.isenabled()
            assert sys.getswitchinterval() == pytest.approx(services.IMPORT_SWITCH_INTERVAL)
        assert not gc.isenabled()  # until the last one ends
    assert (sys.getswitchinterval(), gc.isenabled()) == (pytest.approx(interval), enabled)


@on_postgresql
@pytest.mark.django_db(transaction=True)
def test_a_chunk_whose_last_copy_fails_after_the_next_chunk_began_is_written_again_with_the_ones_after_it(
    monkeypatch,
):
    # A chunk's COPYs run on a thread of their own while the next chunk is made: the labels of the
    # second chunk fail (another connection stored one of them after the look-up) only once the
    # third chunk has begun. Both are then written again, the second from look-ups that find it.
    from django.contrib.auth import get_user_model

    monkeypatch.setattr(services, "IMPORT_CHUNK", 2)
    project = ProjectFactory()
    ann = get_user_model().objects.create(username="import:ann", is_active=False)
    unlabelled = [{"prompt": f"Q{i}?", "responses": ["Yes.", "No."]} for i in range(6)]
    services.preferences_import(project=project, records=records_of(unlabelled))
    theirs = {}
    write, chunks, find = services._import, [], services._existing_preferences

    def other_writer():
        try:
            comparison = Comparison.objects.get(project=project, prompt__text="Q2?")
            choice = "a" if comparison.response_a.text == "Yes." else "b"
            with transaction.atomic():  # as the queue stores a label: with its comparison's count
                theirs["label"] = Preference.objects.create(
                    project=project, comparison=comparison, annotator=ann, choice=choice
                )
                Comparison.objects.filter(pk=comparison.pk).update(label_count=1)
        finally:
            connection.close()

    def find_labels(keys):
        found = find(keys)
        if len(chunks) == 2 and not theirs:  # the second chunk's look-up: Q2, Q3
            thread = threading.Thread(target=other_writer)
            thread.start()
            thread.join(10)
            assert theirs, "the other connection did not store its label"
        return found

    def chunk_written(project_, chunk, *args):
        chunks.append([r.prompt for r in chunk.records])
        return write(project_, chunk, *args)

    monkeypatch.setattr(services, "_import", chunk_written)
    monkeypatch.setattr(services, "_existing_preferences", find_labels)
    # The first chunk's labels are bob's: the other connection, labelling as ann, then waits for no
    # counter row of the import's (they are keyed by annotator).
    labelled = [
        {"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No.", "annotator": "bob" if i < 2 else "ann"}
        for i in range(6)
    ]
    summary = services.preferences_import(project=project, chunks=services.import_chunks(jsonl_lines(labelled)))
    assert chunks == [["Q0?", "Q1?"], ["Q2?", "Q3?"], ["Q4?", "Q5?"], ["Q2?", "Q3?"], ["Q4?", "Q5?"]]
    assert (summary.preferences_created, summary.preferences_existing) == (5, 1)
    assert counts(project) == (6, 12, 6, 6)
    assert Preference.objects.get(project=project, comparison__prompt__text="Q2?").pk == theirs["label"].pk
    assert set(Comparison.objects.filter(project=project).values_list("label_count", flat=True)) == {1}
    # The label statistics count each label once (the rolled-back chunk's counts went with it).
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT sum(n_a + n_b + n_tie + n_both_bad) FROM annotation_stats_comparison WHERE project_id = %s",
            [project.pk],
        )
        assert cursor.fetchone()[0] == 6
    assert_aggregates_match()


@on_postgresql
@pytest.mark.django_db
def test_the_writer_runs_ahead_of_the_copies_by_two_chunks_at_most(monkeypatch):
    # COPYs slowed down (each piece handed over 20 ms late): the writer makes the next chunks
    # meanwhile, but keeps at most two chunks' statements queued (a chunk: its savepoint, the setting
    # that turns the statistics triggers off, four COPYs, the setting again, its comparisons' counts
    # and the release) before it waits, rather than hold the whole file's rows in memory.
    import time

    monkeypatch.setattr(services, "IMPORT_CHUNK", 2)
    read = services._Pieces.read

    def slow(self, size=-1):
        time.sleep(0.02)
        return read(self, size)

    monkeypatch.setattr(services._Pieces, "read", slow)
    queued, write = [], services._import

    def chunk_written(project_, chunk, *args):
        copies = services._writing.copies
        queued.append(copies.submitted - copies.done)
        return write(project_, chunk, *args)

    monkeypatch.setattr(services, "_import", chunk_written)
    project = ProjectFactory()
    lines = [{"prompt": f"Q{i}?", "chosen": "Yes.", "rejected": "No."} for i in range(20)]
    summary = services.preferences_import(project=project, chunks=services.import_chunks(jsonl_lines(lines)))
    assert summary.preferences_created == 20 and counts(project) == (20, 40, 20, 20)
    assert len(queued) == 10
    assert max(queued) > 9, queued  # it did run ahead of PostgreSQL
    assert max(queued) <= 2 * 9 + 1, queued  # two chunks, and this one's savepoint
    assert_aggregates_match()
