"""Console benchmark: the dashboard and the training page on a project with 1,000,000 preferences.

    .venv/bin/python bench/console_bench.py [--preferences 1000000] [--annotators 100] [--requests 40]

What it measures, per page: server time of a GET (the whole Django stack, middleware and template
included, through the test client in this process, with DEBUG off, a logged-in project admin),
p50 and p99 over --requests requests after two warm-up requests. Target (issue 7): p99 <= 300 ms.
The dashboard's figures are cached for a minute (training.selectors.dashboard_cached), so its
line is the page as admins get it; "dashboard, cold" is the request that recomputes them (?fresh=1),
reported separately over --cold requests.

The fixture lives in its own database (BENCH_DATABASE_URL, default rlhf_bench_console, created and
migrated on first use) and is bulk-loaded with COPY: one prompt, two responses and one comparison
per `preferences / 10` comparisons, ten labels on each from 100 annotators (annotator (i + 10k) mod
100 for k = 0..9, so each pair is unique), choices skewed towards A with some ties and both-bad,
shown_left at random, created over the last 30 days, 5% gold. It is kept between runs and rebuilt
when its size differs. Twenty finished training runs and a few model versions are added, so the
training page has its usual rows.
"""

from __future__ import annotations

import argparse
import random
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


def _copy(cursor, table: str, columns: list[str], rows) -> None:
    with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:
        for row in rows:
            buffer.write("\t".join(_copy_text(v) for v in row) + "\n")
        buffer.seek(0)
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)


def _next_id(cursor, table: str) -> int:
    cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
    return cursor.fetchone()[0]


def build_fixture(n_preferences: int, n_annotators: int):
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation.models import Membership, Preference, Project, Role, content_hash
    from training.models import ModelVersion, TrainingRun

    User = get_user_model()
    project = Project.objects.filter(slug=SLUG).first()
    if project is not None and Preference.objects.filter(project=project).count() == n_preferences:
        return project
    if project is not None:
        print("rebuilding the fixture (size differs)", flush=True)
        with connection.cursor() as cursor:
            for table in ("annotation_preference", "annotation_assignment", "annotation_comparison"):
                cursor.execute(f"DELETE FROM {table} WHERE project_id = %s", [project.pk])
        TrainingRun.objects.filter(project=project).delete()
        ModelVersion.objects.filter(project=project).delete()
        project.delete()
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

            def stamp(i: int):
                return now - timedelta(seconds=rng.randrange(30 * 86400))

            _copy(
                cursor,
                "annotation_prompt",
                ["id", "project_id", "text", "content_hash", "is_eval", "created_at"],
                (
                    (p0 + i, project.pk, f"Prompt {i}", content_hash(f"Prompt {i}"), False, stamp(i))
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
                        stamp(i),
                    )
                    for i in range(n_comparisons)
                    for j in (0, 1)
                ),
            )
            _copy(
                cursor,
                "annotation_comparison",
                [
                    "id",
                    "project_id",
                    "prompt_id",
                    "response_a_id",
                    "response_b_id",
                    "is_gold",
                    "gold_choice",
                    "label_count",
                    "created_at",
                ],
                (
                    (
                        c0 + i,
                        project.pk,
                        p0 + i,
                        r0 + 2 * i,
                        r0 + 2 * i + 1,
                        i % 20 == 0,
                        "a" if i % 20 == 0 else "",
                        LABELS_PER_COMPARISON,
                        stamp(i),
                    )
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
                            stamp(i),
                        )

            _copy(
                cursor,
                "annotation_preference",
                [
                    "project_id",
                    "comparison_id",
                    "annotator_id",
                    "choice",
                    "strength",
                    "rationale",
                    "shown_left",
                    "time_spent_ms",
                    "created_at",
                ],
                preferences(),
            )
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
                    artifact_path=f"/bench/{n}",
                    base="b",
                    run=run,
                    metrics=run.metrics,
                    is_active=n >= 5,
                )
    with connection.cursor() as cursor:
        cursor.execute(
            "ANALYZE annotation_preference; ANALYZE annotation_comparison; ANALYZE annotation_prompt; "
            "ANALYZE annotation_response"
        )
    print(f"fixture: {n_preferences} preferences loaded in {time.monotonic() - started:.0f} s", flush=True)
    return project


def time_page(client, url: str, requests: int) -> list[float]:
    for _ in range(2):
        assert client.get(url).status_code == 200
    times = []
    for _ in range(requests):
        t0 = time.perf_counter()
        response = client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert response.status_code == 200, response.status_code
    return times


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preferences", type=int, default=1_000_000)
    parser.add_argument("--annotators", type=int, default=100)
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--cold", type=int, default=5, help="requests that recompute the dashboard's figures")
    parser.add_argument("--database", default=None, help=f"default: $BENCH_DATABASE_URL or {DEFAULT_DB}")
    args = parser.parse_args()
    import os

    setup_django(args.database or os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB))
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.test.utils import setup_test_environment
    from django.urls import reverse

    project = build_fixture(args.preferences, args.annotators)
    setup_test_environment()  # lets the test client run against this database, DEBUG stays off
    client = Client()
    client.force_login(get_user_model().objects.get(username="console-bench-admin"))
    print(f"project {project.slug}: {args.preferences} preferences, {args.annotators} annotators")
    pages = [
        ("dashboard", reverse("console-dashboard", kwargs={"slug": project.slug}), args.requests),
        ("training", reverse("console-training", kwargs={"slug": project.slug}), args.requests),
        # The dashboard's figures are cached for a minute; this is the request that computes them.
        ("dashboard, cold", reverse("console-dashboard", kwargs={"slug": project.slug}) + "?fresh=1", args.cold),
    ]
    for name, url, requests in pages:
        times = time_page(client, url, requests)
        print(
            f"{name:<16} n={len(times):<3}  p50 {statistics.median(times):7.1f} ms"
            f"  p99 {percentile(times, 0.99):7.1f} ms  max {max(times):7.1f} ms",
            flush=True,
        )


if __name__ == "__main__":
    main()
