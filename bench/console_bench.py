"""Console benchmark: the admin console's pages on a project with 1,000,000 preferences.

    .venv/bin/python bench/console_bench.py [--preferences 1000000] [--annotators 100] [--requests 200]

What it measures, per page: server time of a GET (the whole Django stack, middleware and template
included, through Django's test client in this process but without the test environment's
template instrumentation, with DEBUG off, a logged-in project admin),
p50, p99 and max over --requests requests after two warm-up requests. Target (issue 7): p99 <= 300
ms for the dashboard and the training page.

Nothing is cached between requests: every dashboard figure is computed on each request from the
counters the database keeps (annotation migration 0005). To show that no request is served from a
cache, --writes new labels (3 per comparison, on fresh comparisons, through the triggers) are
written before each timed request, outside the clock, and the dashboard must count them. The only
cache is the disagreements page's parsed scores.jsonl (per process, checked against the file's
mtime and size): that page is timed cold (cache cleared before each request) and warm.

Also printed: the load average before and after (the machine may be shared), PostgreSQL's own
execution time of each query of one dashboard and one training page (EXPLAIN ANALYZE), and what the
triggers cost the writes: single-label INSERTs and one 100,000-label INSERT ... SELECT, with the
triggers on and off (each in a transaction that is rolled back).

The fixture lives in its own database (BENCH_DATABASE_URL, default rlhf_bench_console, created and
migrated on first use) and is bulk-loaded with COPY, so the triggers build the counters as they
would for an import: one prompt, two responses and one comparison per 10 preferences, ten labels on
each from the annotators (annotator (i + 10k) mod n for k = 0..9, so each pair is unique), choices
skewed towards A with some ties and both-bad, shown_left at random, created over the last 30 days,
5% gold. Twenty finished training runs and six model versions are added; the active reward model
gets a scores.jsonl with a score for every comparison. The fixture is kept between runs and rebuilt
when its size differs or with --rebuild.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.export_bench import _copy_text, setup_django  # noqa: E402

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/rlhf_bench_console"
SLUG = "console-bench"
LABELS_PER_COMPARISON = 10
SCORES_DIR = ROOT / "var" / "bench-console" / "reward-model"


def _copy(cursor, table: str, columns: list[str], rows) -> None:
    with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:
        for row in rows:
            buffer.write("\t".join(_copy_text(v) for v in row) + "\n")
        buffer.seek(0)
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)


def _next_id(cursor, table: str) -> int:
    cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
    return cursor.fetchone()[0]


def build_fixture(n_preferences: int, n_annotators: int, rebuild: bool):
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation.models import Membership, Preference, Project, Role, content_hash
    from training.models import ModelVersion, TrainingRun

    User = get_user_model()
    project = Project.objects.filter(slug=SLUG).first()
    if project is not None and not rebuild and Preference.objects.filter(project=project).count() == n_preferences:
        return project
    if project is not None:
        print("rebuilding the fixture", flush=True)
        started = time.monotonic()
        with connection.cursor() as cursor:
            for table in ("annotation_preference", "annotation_assignment", "annotation_comparison"):
                cursor.execute(f"DELETE FROM {table} WHERE project_id = %s", [project.pk])
            cursor.execute(
                "DELETE FROM annotation_response WHERE prompt_id IN "
                "(SELECT id FROM annotation_prompt WHERE project_id = %s)",
                [project.pk],
            )
            cursor.execute("DELETE FROM annotation_prompt WHERE project_id = %s", [project.pk])
        TrainingRun.objects.filter(project=project).delete()
        ModelVersion.objects.filter(project=project).delete()
        project.delete()
        print(f"old fixture deleted in {time.monotonic() - started:.0f} s (the triggers included)", flush=True)
    started = time.monotonic()
    rng = random.Random(7)
    n_comparisons = n_preferences // LABELS_PER_COMPARISON
    now = timezone.now()
    with transaction.atomic():
        project = Project.objects.create(name="Console bench", slug=SLUG, overlap=12)
        admin, _ = User.objects.get_or_create(username="console-bench-admin")
        Membership.objects.create(project=project, user=admin, role=Role.ADMIN)
        annotators = []
        for i in range(n_annotators):
            user, _ = User.objects.get_or_create(username=f"console-bench-{i}")
            annotators.append(user.pk)
        Membership.objects.bulk_create(
            [Membership(project=project, user_id=pk, role=Role.ANNOTATOR) for pk in annotators]
        )
        with connection.cursor() as cursor:
            p0, r0, c0 = (
                _next_id(cursor, t) for t in ("annotation_prompt", "annotation_response", "annotation_comparison")
            )

            def stamp():
                return now - timedelta(seconds=rng.randrange(30 * 86400))

            _copy(
                cursor,
                "annotation_prompt",
                ["id", "project_id", "text", "content_hash", "is_eval", "created_at"],
                (
                    (p0 + i, project.pk, f"Prompt {i}", content_hash(f"Prompt {i}"), False, stamp())
                    for i in range(n_comparisons)
                ),
            )
            _copy(
                cursor,
                "annotation_response",
                ["id", "prompt_id", "text", "content_hash", "source", "generation", "created_at"],
                (
                    (
                        r0 + 2 * i + j,
                        p0 + i,
                        f"Answer {j} to {i}",
                        content_hash(f"Answer {j} to {i}"),
                        "bench",
                        "{}",
                        stamp(),
                    )
                    for i in range(n_comparisons)
                    for j in (0, 1)
                ),
            )
            columns = ["id", "project_id", "prompt_id", "response_a_id", "response_b_id", "is_gold", "gold_choice"]
            _copy(
                cursor,
                "annotation_comparison",
                [*columns, "label_count", "created_at"],
                (
                    (c0 + i, project.pk, p0 + i, r0 + 2 * i, r0 + 2 * i + 1, i % 20 == 0, "a" if i % 20 == 0 else "")
                    + (LABELS_PER_COMPARISON, stamp())
                    for i in range(n_comparisons)
                ),
            )
            choices = ["a"] * 45 + ["b"] * 35 + ["tie"] * 12 + ["both_bad"] * 8

            def preferences():
                for i in range(n_comparisons):
                    for k in range(LABELS_PER_COMPARISON):
                        choice = rng.choice(choices)
                        yield (
                            project.pk,
                            c0 + i,
                            annotators[(i + 10 * k) % n_annotators],
                            choice,
                            rng.choice((1, 2, 3)) if choice in ("a", "b") else None,
                            "",
                            rng.choice("ab"),
                            rng.randrange(2000, 60000),
                            stamp(),
                        )

            pref_columns = ["project_id", "comparison_id", "annotator_id", "choice", "strength", "rationale"]
            pref_columns += ["shown_left", "time_spent_ms", "created_at"]
            t0 = time.monotonic()
            _copy(cursor, "annotation_preference", pref_columns, preferences())
            print(f"COPY of {n_preferences} preferences, the triggers included: {time.monotonic() - t0:.0f} s")
            # The ids above were chosen here; the sequences must move past them for later inserts.
            for table in ("annotation_prompt", "annotation_response", "annotation_comparison"):
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
        for n in range(1, 21):
            run = TrainingRun.objects.create(
                project=project,
                kind="reward" if n % 2 else "ppo",
                status="succeeded",
                progress=1.0,
                step=100,
                total_steps=100,
                metrics={"reward/accuracy": 0.6 + n / 100},
                finished_at=now,
            )
            if n <= 6:
                kind = "reward" if n % 2 else "policy"
                ModelVersion.objects.create(
                    project=project,
                    kind=kind,
                    version=(n + 1) // 2,
                    artifact_path=str(SCORES_DIR) if n == 5 else f"/bench/{n}",
                    base="b",
                    run=run,
                    metrics=run.metrics,
                    is_active=n >= 5,
                )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"fixture: {n_preferences} preferences loaded in {time.monotonic() - started:.0f} s", flush=True)
    return project


def write_scores(project) -> int:
    """A score for every comparison of the project, in the active reward model's folder."""
    from annotation.models import Comparison

    SCORES_DIR.mkdir(parents=True, exist_ok=True)
    path = SCORES_DIR / "scores.jsonl"
    ids = list(Comparison.objects.filter(project=project).values_list("id", flat=True))
    if path.exists() and sum(1 for _ in path.open()) == len(ids):
        return len(ids)
    rng = random.Random(11)
    with path.open("w") as out:
        for cid in ids:
            out.write(json.dumps({"comparison_id": cid, "score_a": rng.gauss(0, 2), "score_b": rng.gauss(0, 2)}) + "\n")
    return len(ids)


class NewLabels:
    """Writes labels between timed requests: a fresh comparison with three labels each time."""

    def __init__(self, project, per_request: int) -> None:
        from django.contrib.auth import get_user_model

        self.project, self.per_request = project, per_request
        self.annotators = list(
            get_user_model()
            .objects.filter(username__startswith="console-bench-")
            .exclude(username__endswith="admin")[:3]
        )
        self.written = 0
        self.prompts: list[int] = []

    def write(self) -> None:
        from annotation.models import Comparison, Preference, Prompt, Response

        for _ in range(self.per_request // 3):
            n = self.written
            stamp = time.time_ns()
            prompt = Prompt.objects.create(project=self.project, text=f"bench new {stamp}", content_hash=f"n{stamp}")
            self.prompts.append(prompt.pk)
            a, b = (Response.objects.create(prompt=prompt, text=t, content_hash=t, source="bench") for t in ("x", "y"))
            comparison = Comparison.objects.create(project=self.project, prompt=prompt, response_a=a, response_b=b)
            for user in self.annotators:
                Preference.objects.create(
                    project=self.project, comparison=comparison, annotator=user, choice="ab"[n % 2], shown_left="a"
                )
                self.written += 1

    def remove(self) -> None:
        """Deletes what was written (through the triggers too), so the fixture keeps its size."""
        from annotation.models import Comparison, Preference, Prompt

        Preference.objects.filter(comparison__prompt__in=self.prompts).delete()
        Comparison.objects.filter(prompt__in=self.prompts).delete()
        Prompt.objects.filter(pk__in=self.prompts).delete()


def time_page(client, url: str, requests: int, before=None, check=None) -> list[float]:
    for _ in range(2):
        assert client.get(url).status_code == 200
    times = []
    for _ in range(requests):
        if before:
            before()
        t0 = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
        if check:
            check(response)
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def explain(client, url: str) -> None:
    """PostgreSQL's execution time of each query one request of the page makes."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as captured:
        client.get(url)
    total = 0.0
    for query in captured.captured_queries:
        sql = query["sql"]
        if sql.startswith(("SAVEPOINT", "RELEASE")):
            continue
        with connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, TIMING OFF) " + sql)
            plan = [row[0] for row in cursor.fetchall()]
        ms = float(plan[-1].split(":")[1].split()[0])
        total += ms
        first = " ".join(sql.split())[:110]
        print(f"    {ms:7.2f} ms  {first}")
    print(f"    {total:7.2f} ms  in all, {len(captured.captured_queries)} queries")


def write_cost(project) -> None:
    """Single-label INSERTs and one 100,000-row INSERT ... SELECT, with and without the triggers,
    each in a transaction that is rolled back."""
    from django.db import connection, transaction

    def single(n: int) -> float:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT id FROM annotation_comparison WHERE project_id = %s ORDER BY id DESC LIMIT %s", [project.pk, n]
            )
            comparisons = [r[0] for r in cursor.fetchall()]
            cursor.execute("SELECT id FROM auth_user WHERE username = 'console-bench-admin'")
            admin = cursor.fetchone()[0]
            t0 = time.perf_counter()
            for cid in comparisons:
                cursor.execute(
                    "INSERT INTO annotation_preference (project_id, comparison_id, annotator_id, choice, rationale, "
                    "shown_left, created_at) VALUES (%s, %s, %s, 'a', '', 'a', now())",
                    [project.pk, cid, admin],
                )
            return (time.perf_counter() - t0) * 1000 / len(comparisons)

    def bulk(n: int) -> float:
        with connection.cursor() as cursor:
            t0 = time.perf_counter()
            cursor.execute(
                "INSERT INTO annotation_preference (project_id, comparison_id, annotator_id, choice, rationale, "
                "shown_left, created_at) SELECT c.project_id, c.id, u.id, 'b', '', 'b', now() "
                "FROM (SELECT id, project_id FROM annotation_comparison WHERE project_id = %s ORDER BY id LIMIT %s) c "
                "CROSS JOIN (SELECT id FROM auth_user WHERE username = 'console-bench-admin') u",
                [project.pk, n],
            )
            return time.perf_counter() - t0

    results = {}
    for triggers in (True, False):
        for name, measure, n in (("single", single, 500), ("bulk", bulk, 100_000)):
            try:
                with transaction.atomic():
                    if not triggers:
                        with connection.cursor() as cursor:
                            cursor.execute("ALTER TABLE annotation_preference DISABLE TRIGGER USER")
                    results[(name, triggers)] = measure(n)
                    raise _Rollback
            except _Rollback:
                pass
    print(
        f"  one label per INSERT (500): {results['single', True]:.2f} ms with the triggers, "
        f"{results['single', False]:.2f} ms without"
    )
    print(
        f"  100,000 labels in one INSERT ... SELECT: {results['bulk', True]:.1f} s with the triggers, "
        f"{results['bulk', False]:.1f} s without"
    )


class _Rollback(Exception):
    pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preferences", type=int, default=1_000_000)
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--writes", type=int, default=3, help="labels written before each timed dashboard request")
    parser.add_argument("--rebuild", action="store_true", help="rebuild the fixture even if its size matches")
    parser.add_argument("--skip-write-cost", action="store_true")
    parser.add_argument("--database", default=None, help=f"default: $BENCH_DATABASE_URL or {DEFAULT_DB}")
    args = parser.parse_args()

    setup_django(args.database or os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from training import selectors

    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    project = build_fixture(args.preferences, args.annotators, args.rebuild)
    scored = write_scores(project)
    # No setup_test_environment(): it would instrument template rendering (a copy of every context
    # for the test client), which production does not pay. The host is one ALLOWED_HOSTS accepts.
    client = Client(HTTP_HOST="localhost")
    client.force_login(get_user_model().objects.get(username="console-bench-admin"))
    print(f"project {project.slug}: {args.preferences} preferences, {args.annotators} annotators, {scored} scored")

    def url(name: str) -> str:
        return reverse(name, kwargs={"slug": project.slug})

    writer = NewLabels(project, args.writes)
    seen = {"total": None}

    def counted(response) -> None:
        # Each request sees the labels written just before it (A/B labels with a known side, which
        # the "Left chosen" figure counts): nothing was served from a cache.
        total = int(re.search(rb"of (\d+) A/B labels", response.content).group(1))
        assert seen["total"] is None or total == seen["total"] + writer.per_request // 3 * 3, (total, seen)
        seen["total"] = total

    def clear_scores() -> None:
        selectors._SCORES_CACHE.clear()

    pages = [
        (
            "dashboard",
            url("console-dashboard"),
            writer.write if args.writes >= 3 else None,
            counted if args.writes >= 3 else None,
        ),
        ("training", url("console-training"), None, None),
        ("policies", url("console-policies"), None, None),
        ("disagreements, cold", url("console-disagreements"), clear_scores, None),
        ("disagreements, warm", url("console-disagreements"), None, None),
    ]
    print(f"server time per page, {args.requests} requests each (no cache unless named):")
    for name, address, before, check in pages:
        times = time_page(client, address, args.requests, before, check)
        print(
            f"  {name:<21} p50 {statistics.median(times):7.1f} ms  p99 {percentile(times, 0.99):7.1f} ms"
            f"  max {max(times):7.1f} ms",
            flush=True,
        )
    if args.writes >= 3:
        print(f"  ({writer.written} labels written between dashboard requests, each counted by the next one)")
        writer.remove()
    for name in ("console-dashboard", "console-training"):
        print(f"EXPLAIN ANALYZE of each query of one {name} request:")
        explain(client, url(name))
    if not args.skip_write_cost:
        print("what the triggers cost the writes (rolled back):")
        write_cost(project)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
