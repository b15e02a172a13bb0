"""The label aggregates (migration annotation 0005) kept by database triggers: after every kind of
write — one label, a multi-row insert, an import through COPY, deletes, updates made in psql, a
comparison made gold, a deleted project — each table equals the same figures computed from scratch."""

from __future__ import annotations

import importlib
import json
import random
import subprocess
import sys
import threading
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection, transaction
from django.db.models import Count
from django.utils import timezone

from annotation import services
from annotation.jsonl import read_records
from annotation.models import Comparison, Preference, Project, Prompt, Response
from annotation.services import preferences_import
from tests.conftest import ROOT
from tests.factories import UserFactory, make_comparison

pytestmark = pytest.mark.django_db

aggregates = importlib.import_module("annotation.migrations.0005_label_aggregates")
CHOICES = ["a", "b", "tie", "both_bad"]


def fetch(sql: str) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql)
        # SUM over bigint is numeric in PostgreSQL: compare the values, not the types.
        return [tuple(int(v) if isinstance(v, Decimal) else v for v in row) for row in cursor.fetchall()]


# The unit rows are spread over the annotators whose labels moved each comparison (and the writers
# of moves no label made), and the day counts of new items over writers: only their sums mean
# anything.
DAY_SUMS = (
    "SELECT project_id, day, SUM(prompts), SUM(responses), SUM(comparisons) FROM ({}) d GROUP BY 1, 2 "
    "HAVING SUM(prompts) <> 0 OR SUM(responses) <> 0 OR SUM(comparisons) <> 0 ORDER BY 1, 2"
)
UNIT_SUMS = (
    "SELECT project_id, is_gold, m, SUM(comparisons), SUM(n_a), SUM(n_b), SUM(n_tie), SUM(n_both_bad), SUM(same) "
    "FROM ({}) u GROUP BY 1, 2, 3 "
    "HAVING SUM(comparisons) <> 0 OR SUM(same) <> 0 OR SUM(n_a + n_b + n_tie + n_both_bad) <> 0 ORDER BY 1, 2, 3"
)


def assert_aggregates_match(vendor: str = "postgresql") -> None:
    for table, columns, select in aggregates.backfill_selects(vendor):
        sums = {"annotation_stats_units": UNIT_SUMS, "annotation_stats_project_day": DAY_SUMS}.get(table)
        if sums:
            stored = fetch(sums.format(f"SELECT {columns} FROM {table}"))
            assert stored == fetch(sums.format(select)), table
            continue
        order = ", ".join(str(i + 1) for i in range(columns.count(",") + 1))
        stored = fetch(f"SELECT {columns} FROM {table} ORDER BY {order}")
        assert stored == fetch(f"SELECT * FROM ({select}) t ORDER BY {order}"), table


def random_labels(project, comparisons, users, rng, n: int) -> list[Preference]:
    made = []
    pairs = [(c, u) for c in comparisons for u in users]
    rng.shuffle(pairs)
    taken = set(Preference.objects.filter(project=project).values_list("comparison_id", "annotator_id"))
    for comparison, user in pairs:
        if (comparison.pk, user.pk) in taken:
            continue
        choice = rng.choice(CHOICES)
        made.append(
            Preference(
                project=project,
                comparison=comparison,
                annotator=user,
                choice=choice,
                strength=2 if choice in ("a", "b") else None,
                shown_left=rng.choice(["", "a", "b"]),
                time_spent_ms=rng.choice([None, rng.randrange(100, 9000)]),
            )
        )
        if len(made) == n:
            break
    return made


def test_every_kind_of_write_keeps_the_aggregates_equal_to_a_recount(project):
    rng = random.Random(3)
    users = [UserFactory() for _ in range(5)]
    comparisons = [
        make_comparison(project=project, **({"is_gold": True, "gold_choice": "a"} if i % 4 == 0 else {}))
        for i in range(12)
    ]
    assert_aggregates_match()

    # One label at a time, as the queue writes them.
    for preference in random_labels(project, comparisons, users, rng, 15):
        preference.save()
    assert_aggregates_match()

    # Many labels in one INSERT statement, several on the same comparison.
    Preference.objects.bulk_create(random_labels(project, comparisons, users, rng, 20))
    assert_aggregates_match()

    # An import (COPY into a staging table, then one INSERT ... SELECT) on new and existing comparisons.
    records = read_records(
        [
            json.dumps(
                {"prompt": f"p{i % 3}", "chosen": f"good {i % 3}", "rejected": f"bad {i % 3}", "annotator": f"imp{i}"}
            ).encode()
            for i in range(6)
        ]
    )
    preferences_import(project=project, records=records)
    assert_aggregates_match()

    # Deletes: one label, then many at once.
    Preference.objects.filter(pk=Preference.objects.order_by("?").first().pk).delete()
    ids = list(Preference.objects.order_by("id").values_list("id", flat=True))[::3]
    Preference.objects.filter(pk__in=ids).delete()
    assert_aggregates_match()

    # Updates made by hand: another choice, another side, a label moved to another day, and a
    # statement that changes several labels of one comparison at once.
    first = Preference.objects.order_by("id").first()
    Preference.objects.filter(pk=first.pk).update(choice="tie" if first.choice != "tie" else "a", strength=None)
    some = list(Preference.objects.order_by("-id").values_list("id", flat=True))[:4]
    Preference.objects.filter(pk__in=some).update(shown_left="b", created_at=timezone.now() - timedelta(days=3))
    shared = (
        Preference.objects.values("comparison_id")
        .annotate(n=Count("id"))
        .filter(n__gte=3)
        .order_by("comparison_id")
        .first()
    )
    assert shared is not None, "the fixture has a comparison with three labels"
    Preference.objects.filter(comparison_id=shared["comparison_id"]).update(choice="both_bad", strength=None)
    Preference.objects.filter(pk=first.pk).update(rationale="edited: changes no figure")
    assert_aggregates_match()

    # Gold made after the labels, and its answer changed.
    labelled = Preference.objects.filter(project=project).values_list("comparison_id", flat=True).first()
    Comparison.objects.filter(pk=labelled).update(is_gold=True, gold_choice="b")
    assert_aggregates_match()
    Comparison.objects.filter(pk=labelled).update(gold_choice="tie")
    assert_aggregates_match()

    # Prompts, responses and comparisons created on another day, and deleted.
    Prompt.objects.filter(pk=comparisons[0].prompt_id).update(created_at=timezone.now() - timedelta(days=2))
    Response.objects.filter(prompt_id=comparisons[1].prompt_id).update(created_at=timezone.now() - timedelta(days=5))
    comparisons[2].delete()
    assert_aggregates_match()

    # A second project's rows are its own; deleting a project leaves nothing of it behind.
    other = Project.objects.create(name="Other", slug="other")
    for preference in random_labels(other, [make_comparison(project=other) for _ in range(3)], users, rng, 6):
        preference.save()
    assert_aggregates_match()
    Project.objects.get(pk=project.pk).delete()
    assert_aggregates_match()
    with connection.cursor() as cursor:
        for table in aggregates.STATS_TABLES:
            cursor.execute(f"SELECT COUNT(*) FROM {table} WHERE project_id = %s", [project.pk])
            assert cursor.fetchone()[0] == 0, table


@pytest.mark.skipif(connection.vendor != "postgresql", reason="imports count their own rows on PostgreSQL")
def test_an_import_that_counts_its_own_rows_leaves_the_aggregates_the_triggers_would(project, monkeypatch):
    # On PostgreSQL an import counts the statistics of the prompts, responses, comparisons and labels
    # it creates itself (the INSERT triggers step aside, migration 0013), and leaves its labels on
    # older comparisons to the triggers. Chunks of four lines: new pairs labelled by several
    # annotators at once, one labelled again two chunks later, unlabelled pairs, labels on older
    # comparisons (one of them gold), ties and both-bad.
    monkeypatch.setattr(services, "IMPORT_CHUNK", 4)
    users = [UserFactory() for _ in range(2)]
    older = [
        make_comparison(project=project, **({"is_gold": True, "gold_choice": "a"} if i == 0 else {})) for i in range(3)
    ]
    for comparison, user, choice in ((older[0], users[0], "a"), (older[1], users[1], "tie"), (older[1], users[0], "b")):
        Preference.objects.create(project=project, comparison=comparison, annotator=user, choice=choice)

    def pair(prompt, annotator, **extra):
        return {
            "prompt": prompt,
            "chosen": f"good {prompt}",
            "rejected": f"bad {prompt}",
            "annotator": annotator,
            **extra,
        }

    def old(comparison, annotator, **extra):
        a, b = comparison.response_a.text, comparison.response_b.text
        return {"prompt": comparison.prompt.text, "chosen": a, "rejected": b, "annotator": annotator, **extra}

    lines = [
        pair("p1", "x"),
        pair("p1", "y", choice="tie"),
        pair("p1", "z"),
        pair("p2", "x", choice="both_bad"),
        {"prompt": "p3", "responses": ["r1", "r2", "r3"]},
        old(older[0], "x"),
        pair("p4", "y"),
        pair("p4", "x"),
        pair("p2", "y", choice="both_bad"),
        old(older[1], "x", choice="tie"),
        old(older[2], "z"),
        pair("p5", "z"),
        pair("p6", "y", choice="tie"),
    ]
    summary = services.preferences_import(
        project=project, chunks=services.import_chunks([json.dumps(x).encode() + b"\n" for x in lines])
    )
    assert (summary.comparisons_created, summary.preferences_created) == (8, 12)
    assert_aggregates_match()
    # Both did count: p1's new comparison (three labels) moved into the unit row m = 3 under the
    # import's writer key; the trigger moved older[1] there (its third label) under the annotator's.
    assert fetch(
        f"SELECT annotator_id < 0, SUM(comparisons) FROM annotation_stats_units WHERE project_id = {project.pk} "
        "AND m = 3 GROUP BY 1 ORDER BY 1"
    ) == [(False, 1), (True, 1)]
    # ... and handed the counting back to the triggers: a label stored afterwards, in the same
    # transaction, is counted.
    assert fetch(f"SELECT current_setting('{services.STATS_BY_WRITER}', true)") == [("off",)]
    fresh = Comparison.objects.get(project=project, prompt__text="p5")
    Preference.objects.create(project=project, comparison=fresh, annotator=users[1], choice="b")
    Comparison.objects.create(
        project=project,
        prompt=fresh.prompt,
        response_a=fresh.response_a,
        response_b=Response.objects.create(
            prompt=fresh.prompt, text="third", content_hash=services.content_hash("third"), source="s"
        ),
    )
    assert_aggregates_match()


SQLITE_SCRIPT = r"""
import importlib, json, math, random, django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from django.db import connection
from django.db.models import Count
from annotation.models import Comparison, Preference, Project, Prompt, Response
from django.contrib.auth import get_user_model
agg = importlib.import_module("annotation.migrations.0005_label_aggregates")
rng = random.Random(5)
project = Project.objects.create(name="P", slug="p")
users = [get_user_model().objects.create(username=f"u{i}") for i in range(4)]
comparisons = []
for i in range(8):
    prompt = Prompt.objects.create(project=project, text=f"q{i}", content_hash=f"q{i}")
    a, b = (Response.objects.create(prompt=prompt, text=f"r{i}{j}", content_hash=f"r{i}{j}", source="s") for j in "ab")
    comparisons.append(Comparison.objects.create(project=project, prompt=prompt, response_a=a, response_b=b,
                                                 is_gold=i == 0, gold_choice="a" if i == 0 else ""))
labels = []
for c in comparisons:
    for u in users:
        if rng.random() < 0.7:
            choice = rng.choice(["a", "b", "tie", "both_bad"])
            labels.append(Preference(project=project, comparison=c, annotator=u, choice=choice,
                                     strength=1 if choice in "ab" else None, shown_left=rng.choice("ab"),
                                     time_spent_ms=rng.randrange(10, 99)))
Preference.objects.bulk_create(labels)
Preference.objects.filter(pk__in=list(Preference.objects.values_list("pk", flat=True))[::4]).delete()
Preference.objects.filter(pk=Preference.objects.first().pk).update(choice="both_bad", strength=None)
Comparison.objects.filter(pk=comparisons[1].pk).update(is_gold=True, gold_choice="b")
comparisons[2].delete()
result = {}
units = (
    "SELECT project_id, is_gold, m, SUM(comparisons), SUM(n_a), SUM(n_b), SUM(n_tie), SUM(n_both_bad), SUM(same) "
    "FROM ({}) u GROUP BY 1, 2, 3 HAVING SUM(comparisons) <> 0 OR SUM(same) <> 0 "
    "OR SUM(n_a + n_b + n_tie + n_both_bad) <> 0 ORDER BY 1, 2, 3"
)
with connection.cursor() as cursor:
    for table, columns, select in agg.backfill_selects("sqlite"):
        order = ", ".join(str(i + 1) for i in range(columns.count(",") + 1))
        if table == "annotation_stats_units":
            queries = [units.format(f"SELECT {columns} FROM {table}"), units.format(select)]
        else:
            queries = [f"SELECT {columns} FROM {table} ORDER BY {order}", f"SELECT * FROM ({select}) ORDER BY {order}"]
        result[table] = []
        for query in queries:
            cursor.execute(query)
            result[table].append([list(r) for r in cursor.fetchall()])
# The console's figures on SQLite, against the same figures counted here from the label rows.
from collections import Counter
from pathlib import Path
from training import selectors
from training.models import ModelVersion
board = selectors.dashboard(project=project)
labels = list(Preference.objects.filter(project=project).values_list("comparison_id", "annotator_id", "choice"))
per_comparison = {}
for cid, _, choice in labels:
    per_comparison.setdefault(cid, Counter())[choice] += 1
units = [c for c in per_comparison.values() if sum(c.values()) >= 2]
pairs = sum(sum(c.values()) * (sum(c.values()) - 1) for c in units)
same = sum(n * (n - 1) for c in units for n in c.values())
result["figures"] = [
    [board["bias"]["total"], board["agreement"]["units"], board["agreement"]["percent"],
     sum(a.last_day for a in board["annotators"]), board["queue"]["comparisons"], board["queue"]["labelled"],
     sum(d["preferences"] for d in board["days"])],
    [len(labels), len(units), same / pairs, len(labels), Comparison.objects.count(), len(per_comparison), len(labels)],
]
folder = Path(connection.settings_dict["NAME"]).parent / "rm"
folder.mkdir()
ModelVersion.objects.create(
    project=project, kind="reward", version=1, artifact_path=str(folder), base="b", is_active=True
)
(folder / "scores.jsonl").write_text("\n".join(
    json.dumps({"comparison_id": cid, "score_a": 0.0, "score_b": 5.0}) for cid in per_comparison
))
shown = selectors.disagreements(project=project)["rows"]
model_a = 1 / (1 + math.exp(5.0))


def gap(cid):
    c = per_comparison[cid]
    return abs(model_a - c["a"] / (c["a"] + c["b"]))


ab = [cid for cid, c in per_comparison.items() if c["a"] + c["b"]]
result["disagreements"] = [[r["comparison_id"] for r in shown][:3], sorted(ab, key=lambda cid: (-gap(cid), cid))[:3]]
print(json.dumps(result, default=str))
"""


@pytest.mark.slow
def test_the_sqlite_triggers_of_the_embedded_default_keep_the_same_aggregates(tmp_path):
    env = {
        "PATH": "/usr/bin:/bin",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}",
        "RLHF_VAR_DIR": str(tmp_path / "var"),
        "DEBUG": "1",
    }
    result = subprocess.run(
        [sys.executable, "-c", SQLITE_SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    tables = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(tables) >= set(aggregates.STATS_TABLES)
    for table in aggregates.STATS_TABLES:
        stored, recount = tables[table]
        assert stored == recount, table
    assert tables["annotation_stats_agreement"][0], "the fixture has overlapping labels"
    shown, expected = tables["figures"]
    assert shown[:2] == expected[:2] and shown[2] == pytest.approx(expected[2]) and shown[3:] == expected[3:]
    shown, expected = tables["disagreements"]
    assert shown == expected and len(shown) == 3


def test_two_writers_in_one_project_do_not_wait_for_each_others_counters(transactional_db, project):
    """A label by one annotator and an item added by one transaction do not lock a counter that
    another annotator's label or another transaction's items need: the second writer finishes
    while the first is still open (it would fail on lock_timeout otherwise)."""
    first_user, second_user = UserFactory(), UserFactory()
    first_comparison, second_comparison = make_comparison(project=project), make_comparison(project=project)
    open_now, finish = threading.Event(), threading.Event()
    errors = []

    def first_writer():
        try:
            with transaction.atomic():
                Preference.objects.create(
                    project=project, comparison=first_comparison, annotator=first_user, choice="a"
                )
                make_comparison(project=project)
                open_now.set()
                finish.wait(20)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)
            open_now.set()
        finally:
            connection.close()

    thread = threading.Thread(target=first_writer)
    thread.start()
    assert open_now.wait(20)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '3s'")
        with transaction.atomic():
            Preference.objects.create(project=project, comparison=second_comparison, annotator=second_user, choice="b")
            make_comparison(project=project)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
        finish.set()
        thread.join(30)
    assert not errors, errors
    assert_aggregates_match()


def test_a_truncate_which_fires_no_delete_trigger_counts_the_aggregates_again(project):
    users = [UserFactory() for _ in range(3)]
    comparisons = [make_comparison(project=project) for _ in range(4)]
    Preference.objects.bulk_create(random_labels(project, comparisons, users, random.Random(1), 9))
    with connection.cursor() as cursor:
        # The deferred foreign key checks of the inserts must run before a TRUNCATE in the same transaction.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("TRUNCATE annotation_preference")
        assert_aggregates_match()
        cursor.execute("SELECT COUNT(*) FROM annotation_stats_units WHERE project_id = %s", [project.pk])
        assert cursor.fetchone()[0] > 0, "the comparisons are still there, now with no label"
        cursor.execute(
            "TRUNCATE annotation_project, annotation_prompt, annotation_response, annotation_comparison, "
            "annotation_assignment, annotation_membership CASCADE"
        )
        assert_aggregates_match()
        for table in aggregates.STATS_TABLES:
            cursor.execute(f"SELECT COUNT(*) FROM {table}")
            assert cursor.fetchone()[0] == 0, table


def test_project_delete_empties_the_project_in_bulk_and_keeps_the_others_aggregates(project):
    from annotation.models import Assignment
    from annotation.services import project_delete
    from tests.factories import ProjectFactory

    rng = random.Random(7)
    users = [UserFactory() for _ in range(4)]
    other = ProjectFactory()
    doomed = [make_comparison(project=project) for _ in range(6)]
    kept = [make_comparison(project=other) for _ in range(6)]
    Preference.objects.bulk_create(random_labels(project, doomed, users, rng, 12))
    Preference.objects.bulk_create(random_labels(other, kept, users, rng, 12))
    now = timezone.now()
    Assignment.objects.create(
        project=project,
        comparison=doomed[0],
        annotator=users[0],
        shown_left="a",
        leased_at=now,
        expires_at=now + timedelta(minutes=5),
    )
    kept_counts = (Prompt.objects.filter(project=other).count(), Preference.objects.filter(project=other).count())

    project_id = project.pk
    project_delete(project=project)

    assert not Project.objects.filter(pk=project_id).exists()
    for model in (Prompt, Comparison, Preference, Assignment):
        assert not model.objects.filter(project_id=project_id).exists(), model.__name__
    assert not Response.objects.filter(prompt__project_id=project_id).exists()
    assert (Prompt.objects.filter(project=other).count(), Preference.objects.filter(project=other).count()) == (
        kept_counts
    )
    assert kept_counts[1] == 12
    for table in ("annotation_stats_comparison", "annotation_stats_annotator_day", "annotation_stats_agreement"):
        assert fetch(f"SELECT count(*) FROM {table} WHERE project_id = {project_id}") == [(0,)], table
    assert_aggregates_match()


def test_project_delete_first_analyses_the_statistics_tables_its_triggers_clean_up(project):
    """Planned from an empty table's statistics, the clean-up of zeroed statistics rows after a large
    delete was quadratic (100,000 labels: unfinished after 10 minutes); analysed first, 6 s."""
    if connection.vendor != "postgresql":
        pytest.skip("ANALYZE and its row estimates are PostgreSQL's")
    from annotation.services import project_delete

    def estimate() -> float:
        with connection.cursor() as cursor:
            cursor.execute("SELECT reltuples FROM pg_class WHERE relname = 'annotation_stats_comparison'")
            return cursor.fetchone()[0]

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE annotation_stats_comparison")  # empty, as in a new database
    users = [UserFactory() for _ in range(3)]
    comparisons = [make_comparison(project=project) for _ in range(5)]
    Preference.objects.bulk_create(random_labels(project, comparisons, users, random.Random(3), 9))
    assert estimate() <= 0
    project_delete(project=project)
    assert estimate() > 0
    assert_aggregates_match()
    # project_delete's list of those tables is migration 0005's.
    assert sorted(services._STATS_TABLES) == sorted(aggregates.STATS_TABLES)
