"""import_preferences and export_preferences: the JSONL contract of DESIGN.md, all or nothing."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from annotation.models import Comparison, Preference, Prompt, Response

pytestmark = pytest.mark.django_db(transaction=True)


def table_counts() -> tuple[int, int, int, int]:
    return Prompt.objects.count(), Response.objects.count(), Comparison.objects.count(), Preference.objects.count()


def test_the_hh_file_round_trips_as_the_same_1807_pairs(manage, hh_path, tmp_path):
    first = manage("import_preferences", str(hh_path), "--project", "hh", "--create-project")
    assert first.returncode == 0, first.stderr.decode()
    out = tmp_path / "export.jsonl"
    exported = manage("export_preferences", "--project", "hh", "--output", str(out))
    assert exported.returncode == 0, exported.stderr.decode()

    def triples(lines):
        rows = [json.loads(line) for line in lines]
        return Counter((r["prompt"], r["chosen"], r["rejected"]) for r in rows)

    original = triples(hh_path.read_text(encoding="utf-8").splitlines())
    assert sum(original.values()) == 1807
    assert triples(out.read_text(encoding="utf-8").splitlines()) == original
    row = json.loads(out.read_text(encoding="utf-8").splitlines()[0])
    assert set(row) == {"prompt", "chosen", "rejected", "margin", "comparison_id", "annotator", "created_at"}
    assert row["annotator"].startswith("ann_") and row["margin"] == 0.0


def test_importing_the_same_file_twice_adds_nothing(manage, hh_path):
    assert manage("import_preferences", str(hh_path), "--project", "hh", "--create-project").returncode == 0
    before = table_counts()
    again = manage("import_preferences", str(hh_path), "--project", "hh")
    assert again.returncode == 0, again.stderr.decode()
    assert table_counts() == before
    assert before[3] == 1807
    assert "1807 preferences were already there" in again.stdout.decode()


def test_it_imports_a_prompt_with_responses_as_every_pair(manage, tmp_path):
    path = tmp_path / "responses.jsonl"
    lines = [
        {"prompt": "Name a prime.", "responses": ["2", {"text": "3", "source": "m1"}, {"text": "9", "model": "m2"}]},
        {"prompt": [{"role": "user", "content": "Hi"}], "responses": ["Hello!", "Hey."]},
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    result = manage("import_preferences", str(path), "--project", "p", "--create-project")
    assert result.returncode == 0, result.stderr.decode()
    assert table_counts() == (2, 5, 4, 0)
    assert set(Response.objects.values_list("source", flat=True)) == {"imported", "m1", "m2"}
    assert Prompt.objects.get(text="").messages == [{"role": "user", "content": "Hi"}]


def test_it_imports_ties_and_margins_and_exports_them_back(manage, tmp_path):
    path = tmp_path / "mixed.jsonl"
    lines = [
        {"prompt": "Q1", "chosen": "good", "rejected": "bad", "margin": 3, "annotator": "alice"},
        {"prompt": "Q2", "chosen": "x", "rejected": "y", "tie": True, "annotator": "alice"},
        {
            "prompt": "Q3",
            "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}],
        },
    ]
    path.write_text("\n".join(json.dumps(x) for x in lines))
    assert manage("import_preferences", str(path), "--project", "p", "--create-project").returncode == 0
    assert Preference.objects.filter(choice="tie", strength=None).count() == 1
    assert Preference.objects.get(comparison__prompt__text="Q1").strength == 3
    rows = [json.loads(x) for x in manage("export_preferences", "--project", "p").stdout.decode().splitlines()]
    assert {(r["prompt"], r["chosen"], r["margin"]) for r in rows} == {("Q1", "good", 3.0), ("Q3", "yes", 0.0)}
    with_ties = manage("export_preferences", "--project", "p", "--include-ties", "--format", "conversational")
    rows = [json.loads(x) for x in with_ties.stdout.decode().splitlines()]
    assert len(rows) == 3
    assert {r.get("choice") for r in rows} == {None, "tie"}
    assert all(r["chosen"][0]["role"] == "assistant" and isinstance(r["prompt"], list) for r in rows)


GOOD = json.dumps({"prompt": "Is this fine?", "chosen": "Yes.", "rejected": "No."})

BAD_FILES = {
    "broken JSON": (GOOD + '\n{"prompt": "x", "chosen": "a",\n', "line 2: invalid JSON"),
    "missing field": (GOOD + '\n{"prompt": "x", "chosen": "a"}\n', 'line 2: missing "rejected"'),
    "no prompt": ('{"chosen": "a", "rejected": "b"}\n', 'line 1: missing "prompt"'),
    "empty prompt": (GOOD + '\n{"prompt": "  ", "chosen": "a", "rejected": "b"}\n', 'line 2: "prompt" is empty'),
    "identical pair": (
        GOOD + '\n{"prompt": "x", "chosen": "same", "rejected": "same"}\n',
        'line 2: "chosen" and "rejected" are identical',
    ),
    "not an object": (GOOD + "\n[1, 2]\n", "line 2: expected a JSON object"),
    "bad margin": (
        GOOD + '\n{"prompt": "x", "chosen": "a", "rejected": "b", "margin": -1}\n',
        '"margin" must be a finite number',
    ),
    "contradiction": (
        GOOD + "\n" + json.dumps({"prompt": "Is this fine?", "chosen": "No.", "rejected": "Yes."}) + "\n",
        "line 2: contradicts line 1",
    ),
    "empty file": ("\n\n", "the file has no records"),
    "bad utf-8": (None, "line 2: not valid UTF-8"),
    "huge line": (None, "line 2: line is 10,485,8"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_refused_with_its_line_and_nothing_is_written(case, manage, tmp_path):
    content, message = BAD_FILES[case]
    path = tmp_path / "bad.jsonl"
    if case == "bad utf-8":
        path.write_bytes(GOOD.encode() + b'\n{"prompt": "caf\xe9", "chosen": "a", "rejected": "b"}\n')
    elif case == "huge line":
        filler = "x" * (10 * 1024 * 1024)
        path.write_text(
            GOOD + "\n" + json.dumps({"prompt": "big", "chosen": filler, "rejected": "b"}) + "\n" + GOOD + "\n"
        )
    else:
        path.write_text(content)
    result = manage("import_preferences", str(path), "--project", "p", "--create-project")
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert message in stderr, stderr
    assert "nothing was imported" in stderr
    assert "Traceback" not in stderr
    assert table_counts() == (0, 0, 0, 0)


def test_a_label_contradicting_a_stored_one_fails_the_whole_second_import(manage, tmp_path):
    first = tmp_path / "first.jsonl"
    first.write_text(GOOD + "\n")
    assert manage("import_preferences", str(first), "--project", "p", "--create-project").returncode == 0
    second = tmp_path / "second.jsonl"
    new_pair = json.dumps({"prompt": "New question", "chosen": "a", "rejected": "b"})
    flipped = json.dumps({"prompt": "Is this fine?", "chosen": "No.", "rejected": "Yes."})
    second.write_text(new_pair + "\n" + flipped + "\n")
    before = table_counts()
    result = manage("import_preferences", str(second), "--project", "p")
    assert result.returncode != 0
    assert "line 2: contradicts the stored label" in result.stderr.decode()
    assert table_counts() == before


def test_a_missing_file_and_a_missing_project_are_clear_errors(manage, tmp_path):
    missing = manage("import_preferences", str(tmp_path / "nope.jsonl"), "--project", "p")
    assert missing.returncode != 0 and "no such file" in missing.stderr.decode()
    path = tmp_path / "ok.jsonl"
    path.write_text(GOOD)
    no_project = manage("import_preferences", str(path), "--project", "ghost")
    assert no_project.returncode != 0 and "--create-project" in no_project.stderr.decode()
    assert manage("export_preferences", "--project", "ghost").returncode != 0
