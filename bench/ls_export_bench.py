"""Export benchmark against Label Studio: the same 50,000 annotations exported from both.

    .venv/bin/python bench/ls_export_bench.py [--annotations 50000] [--annotators 10] [--keep] [--ls-postgres]

Label Studio must be installed in its own environment first (never a project dependency):
    python3 -m venv var/venv-ls && var/venv-ls/bin/pip install label-studio

The data: `--annotations / --annotators` comparisons from HH-RLHF (each prompt made unique by a
number), each labelled by every one of `--annotators` annotators; the labels (choice, strength,
time spent) are drawn from one seeded generator, so both systems hold the same labels.
- Ours: bulk-loaded with COPY into its own database (BENCH_DATABASE_URL, default
  rlhf_bench_ls_export), as bench/export_bench.py does.
- Label Studio: the comparisons are tasks (prompt, response_a, response_b) of a project with a
  choice-and-rating labelling config; each task is imported with its annotations inline through
  its import API (POST /api/projects/<id>/import, 500 tasks a request), each annotation
  `completed_by` the Label Studio user of its annotator (signed up through its sign-up page).
`--keep` reuses both loaded fixtures (var/bench-ls-export/). `--ls-postgres` puts Label Studio's
database in PostgreSQL (LS_DATABASE_URL, default rlhf_bench_ls_export_ls) instead of its default
SQLite; the private memory growth of its backends is then printed as for ours.

Each side runs alone: our gunicorn is stopped before Label Studio starts, and Label Studio is
restarted after the import, so that each export is served by a freshly started server (the
import's garbage is not in its memory). Each export is preceded
by an untimed tiny one (ours: an empty date range; Label Studio: one task), so the modules it
imports are loaded before the baseline is taken. Then, timed from the request to the last byte,
read by the client in 1 MiB pieces:
- ours: GET /api/v1/projects/<slug>/export/?format=trl&mode=raw&include_ties=true (TRL JSONL, one
  line per label, streamed), served by gunicorn with the production settings (DEBUG off) on
  PostgreSQL: a gthread worker of 4 threads as in docker-compose.yml, but one worker instead of 3
  (`--workers`), so that the untimed export warms up the worker the timed one runs in, and the
  tree's size compares with Label Studio's single process (an idle worker only adds its baseline);
- Label Studio: GET /api/projects/<id>/export?exportType=JSON (its JSON: each task with its
  annotations), served by `label-studio start` on its defaults (one process, SQLite).
Memory: the resident set of the server's whole process tree (gunicorn's master and workers; Label
Studio's one process, which has SQLite inside it), sampled every 10 ms from /proc; printed are its
size before the request, its peak during it and the growth. For ours the private memory (RssAnon)
growth of the PostgreSQL backends serving the bench database is printed too, and the CPU time is
the server tree's plus (ours) those backends'. Rows are counted in
both answers (JSONL lines; annotations in the JSON) and must equal the annotations loaded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import sys
import time
import urllib.request
from pathlib import Path

from _common import (
    ROOT,
    Gunicorn,
    LabelStudio,
    PeakRss,
    comparison_texts,
    copy_rows,
    cpu_seconds,
    load_average,
    ls_create_project,
    ls_import,
    ls_result,
    postgres_backends,
    process_tree,
    setup_django,
)

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/rlhf_bench_ls_export"
LS_POSTGRES = os.environ.get("LS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rlhf_bench_ls_export_ls")
BENCH_VAR = ROOT / "var" / "bench-ls-export"
SLUG = "bench-ls-export"
CHOICES = ("a", "a", "a", "a", "b", "b", "tie", "both_bad")


def the_labels(n_comparisons: int, n_annotators: int) -> list[list[tuple[str, int | None, int]]]:
    """For each comparison, each annotator's (choice, strength, milliseconds spent)."""
    rng = random.Random(0)
    labels = []
    for _ in range(n_comparisons):
        row = []
        for _ in range(n_annotators):
            choice = rng.choice(CHOICES)
            row.append((choice, rng.choice((1, 2, 3)) if choice in ("a", "b") else None, rng.randint(1000, 60000)))
        labels.append(row)
    return labels


# Our side ----------------------------------------------------------------------------------------


def load_ours(texts, labels, n_annotators: int) -> int:
    """Our project, bulk-loaded unless already there with the same size; returns its label count."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotation.models import Preference, Project

    wanted = len(texts) * n_annotators
    project = Project.objects.filter(slug=SLUG).first()
    if project is not None:
        have = Preference.objects.filter(project=project).count()
        if have == wanted:
            print(f"ours: reusing the loaded fixture ({have:,} preferences)", flush=True)
            return have
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM annotation_preference WHERE project_id = %s", [project.pk])
        project.delete()
    started = time.perf_counter()
    User = get_user_model()
    with transaction.atomic(), connection.cursor() as cursor:
        annotators = [
            User.objects.get_or_create(username=f"annotator{k}", defaults={"is_active": False})[0].pk
            for k in range(n_annotators)
        ]
        project = Project.objects.create(name="Export bench (vs Label Studio)", slug=SLUG, overlap=n_annotators)
        cursor.execute("SELECT COALESCE(max(id), 0) FROM annotation_prompt")
        prompt0 = cursor.fetchone()[0] + 1
        cursor.execute("SELECT COALESCE(max(id), 0) FROM annotation_response")
        response0 = cursor.fetchone()[0] + 1
        cursor.execute("SELECT COALESCE(max(id), 0) FROM annotation_comparison")
        comparison0 = cursor.fetchone()[0] + 1
        now = "2026-01-01 00:00:00+00"
        raw = cursor.cursor
        copy_rows(
            raw,
            "annotation_prompt",
            ["id", "project_id", "text", "content_hash", "is_eval", "created_at"],
            (
                (prompt0 + i, project.pk, p, hashlib.sha256(p.encode()).hexdigest(), False, now)
                for i, (p, _, _) in enumerate(texts)
            ),
        )
        copy_rows(
            raw,
            "annotation_response",
            ["id", "prompt_id", "text", "content_hash", "source", "generation", "created_at"],
            (
                (response0 + 2 * i + j, prompt0 + i, text, hashlib.sha256(text.encode()).hexdigest(), "hh", "{}", now)
                for i, (_, a, b) in enumerate(texts)
                for j, text in enumerate((a, b))
            ),
        )
        copy_rows(
            raw,
            "annotation_comparison",
            ["id", "project_id", "prompt_id", "response_a_id", "response_b_id", "is_gold", "gold_choice"]
            + ["label_count", "created_at"],
            (
                (comparison0 + i, project.pk, prompt0 + i, response0 + 2 * i, response0 + 2 * i + 1, False, "")
                + (n_annotators, now)
                for i in range(len(texts))
            ),
        )
        copy_rows(
            raw,
            "annotation_preference",
            ["project_id", "comparison_id", "annotator_id", "choice", "strength", "rationale", "shown_left"]
            + ["time_spent_ms", "created_at"],
            (
                (project.pk, comparison0 + i, annotators[k], choice, strength, "", "a", spent, now)
                for i, row in enumerate(labels)
                for k, (choice, strength, spent) in enumerate(row)
            ),
        )
        for table in ("annotation_prompt", "annotation_response", "annotation_comparison"):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    have = Preference.objects.filter(project=project).count()
    print(f"ours: loaded {have:,} preferences in {time.perf_counter() - started:.1f} s (COPY)", flush=True)
    return have


def staff_token() -> str:
    from django.contrib.auth import get_user_model

    from annotation.api.services import api_token_create

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    return api_token_create(user=user, name="ls export bench").key


def measure_ours(database_url: str, workers: int) -> dict:
    token = staff_token()
    server = Gunicorn(database_url, BENCH_VAR, workers=workers)
    try:
        url = f"{server.base}/api/v1/projects/{SLUG}/export/?format=trl&mode=raw&include_ties=true"
        headers = {"Authorization": f"Token {token}"}
        fetch(url + "&since=2999-01-01T00:00:00Z", headers)  # untimed: loads the export's modules
        database = database_url.rsplit("/", 1)[1]
        result = timed_export(server.process.pid, url, headers, lambda: postgres_backends(database))
    finally:
        server.stop()
    result["rows"] = result["body_lines"]
    return result


# Label Studio's side -----------------------------------------------------------------------------


def loaded_ls_project(data_dir: Path, expected: dict) -> int | None:
    """The project id of a fixture of this size already imported into the data folder, if any."""
    marker = data_dir / "bench-fixture.json"
    if not marker.exists():
        return None
    saved = json.loads(marker.read_text())
    if saved["size"] != expected:
        raise SystemExit(f"{marker} holds another fixture size; run without --keep")
    return saved["project"]


def load_ls(ls: LabelStudio, texts, labels, n_annotators: int, expected: dict) -> int:
    """Imports the fixture into a fresh Label Studio; returns its project id."""
    admin = ls.admin()
    annotators = [
        ls.sign_up(f"annotator{k}@example.com").api("GET", "/api/current-user/whoami")["id"]
        for k in range(n_annotators)
    ]
    project_id = ls_create_project(admin, "Export bench", n_annotators)
    tasks = [
        {
            "data": {"prompt": p, "response_a": a, "response_b": b, "comparison": i + 1},
            "annotations": [
                {"result": ls_result(choice, strength), "completed_by": annotators[k], "lead_time": spent / 1000}
                for k, (choice, strength, spent) in enumerate(labels[i])
            ],
        }
        for i, (p, a, b) in enumerate(texts)
    ]
    started = time.perf_counter()
    n_tasks, n_annotations = ls_import(admin, project_id, tasks, batch=500)
    print(
        f"label studio: imported {n_tasks:,} tasks with {n_annotations:,} annotations in"
        f" {time.perf_counter() - started:.1f} s (import API, annotations inline)",
        flush=True,
    )
    if (n_tasks, n_annotations) != (expected["tasks"], expected["annotations"]):
        raise RuntimeError(f"Label Studio imported {n_tasks} tasks and {n_annotations} annotations, not {expected}")
    (ls.data_dir / "bench-fixture.json").write_text(json.dumps({"project": project_id, "size": expected}))
    return project_id


def measure_ls(ls: LabelStudio, project_id: int) -> dict:
    admin = ls.admin()
    first = admin.api("GET", f"/api/tasks/?project={project_id}&page_size=1")
    first_id = (first["tasks"] if isinstance(first, dict) else first)[0]["id"]
    url = f"/api/projects/{project_id}/export?exportType=JSON"
    admin.open(f"{url}&ids[]={first_id}").read()  # untimed: loads the export's modules
    headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in admin.cookies.items())}
    backends = None
    if ls.postgres_url:
        database = ls.postgres_url.rsplit("/", 1)[1]

        def backends():
            return postgres_backends(database)

    result = timed_export(ls.process.pid, ls.base + url, headers, backends, keep_body=True)
    tasks = json.loads(result.pop("body"))
    result["rows"] = sum(len(task["annotations"]) for task in tasks)
    result["tasks"] = len(tasks)
    return result


# The measurement ---------------------------------------------------------------------------------


def fetch(url: str, headers: dict[str, str]) -> bytes:
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1800) as response:
        return response.read()


def timed_export(server_pid: int, url: str, headers: dict[str, str], backends, keep_body=False) -> dict:
    """Streams one export, sampling the server's memory; the time is to the last byte. `backends`
    lists the database processes outside the server's tree (ours: PostgreSQL's), or is None."""
    rss = PeakRss(server_pid, extra=backends)
    pids = set(process_tree(server_pid) + (backends() if backends else []))
    cpu_before = cpu_seconds(list(pids))
    rss.start()
    size = lines = 0
    body = bytearray() if keep_body else None
    started = time.perf_counter()
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=1800) as response:
        if response.status != 200:
            raise RuntimeError(f"{url}: HTTP {response.status}")
        while piece := response.read(1 << 20):
            size += len(piece)
            lines += piece.count(b"\n")
            if body is not None:
                body += piece
    seconds = time.perf_counter() - started
    rss.stop()
    result = {
        "seconds": seconds,
        "bytes": size,
        "body_lines": lines,
        "rss_before": rss.baseline,
        "rss_peak": rss.peak,
        # A process that appeared meanwhile (a database connection opened by the thread that
        # served the export) counts in full: it had used nothing before.
        "cpu": cpu_seconds(list(pids | set(process_tree(server_pid)) | rss.extra_seen)) - cpu_before,
        "db_growth": rss.extra_peak - rss.extra_baseline if backends else None,
        "load": os.getloadavg(),
    }
    if body is not None:
        result["body"] = bytes(body)
    return result


def report(name: str, result: dict, expected: int) -> None:
    mib = 2**20
    growth = result["rss_peak"] - result["rss_before"]
    print(f"\n== {name}")
    print(
        f"  {result['rows']:,} annotations in {result['seconds']:.2f} s = {result['rows'] / result['seconds']:,.0f}"
        f" per second, {result['bytes'] / 1e6:.1f} MB; server CPU {result['cpu']:.1f} s"
    )
    print(
        f"  server process tree RSS: {result['rss_before'] / mib:.0f} MiB before, peak {result['rss_peak'] / mib:.0f}"
        f" MiB, growth {growth / mib:.1f} MiB"
    )
    if result["db_growth"] is not None:
        print(f"  PostgreSQL backends' private memory growth: {result['db_growth'] / mib:.1f} MiB")
    print(f"  load average at the end: {' / '.join(f'{x:.2f}' for x in result['load'])}")
    ok = result["rows"] == expected
    print(f"  check {'ok  ' if ok else 'FAIL'} annotations exported {result['rows']:,} == loaded {expected:,}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--annotations", type=int, default=50_000)
    parser.add_argument("--annotators", type=int, default=10, help="labels per comparison")
    parser.add_argument("--workers", type=int, default=1, help="our gunicorn workers (gthread, 4 threads)")
    parser.add_argument("--keep", action="store_true", help="reuse both loaded fixtures")
    parser.add_argument(
        "--ls-postgres",
        action="store_true",
        help="Label Studio on PostgreSQL (LS_DATABASE_URL) instead of its default SQLite",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    if args.annotations % args.annotators:
        raise SystemExit("--annotations must be a multiple of --annotators")
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    n_comparisons = args.annotations // args.annotators
    texts, labels = comparison_texts(n_comparisons), the_labels(n_comparisons, args.annotators)
    print(
        f"{args.annotations:,} annotations ({n_comparisons:,} comparisons x {args.annotators} annotators);"
        f" load average before: {load_average()}",
        flush=True,
    )

    setup_django(database_url, BENCH_VAR, fresh=not args.keep)
    loaded = load_ours(texts, labels, args.annotators)
    ours = measure_ours(database_url, args.workers)
    report(f"ours: TRL JSONL, raw (gunicorn {args.workers}x4 gthread, PostgreSQL)", ours, loaded)

    postgres_url = LS_POSTGRES if args.ls_postgres else None
    data_dir = BENCH_VAR / ("label-studio-pg" if postgres_url else "label-studio")
    expected = {"tasks": n_comparisons, "annotations": args.annotations}
    project_id = loaded_ls_project(data_dir, expected) if args.keep else None
    if project_id is None:
        ls = LabelStudio(data_dir, fresh=True, postgres_url=postgres_url)
        try:
            print(f"\nlabel studio {ls.version()}: importing", flush=True)
            project_id = load_ls(ls, texts, labels, args.annotators, expected)
        finally:
            ls.stop()
    else:
        print(f"\nlabel studio: reusing the loaded fixture ({args.annotations:,} annotations)", flush=True)
    # A freshly started server exports, as on our side: the import's garbage is not in its memory.
    ls = LabelStudio(data_dir, fresh=False, postgres_url=postgres_url)
    try:
        theirs = measure_ls(ls, project_id)
    finally:
        ls.stop()
    name = f"Label Studio: exportType=JSON (label-studio start: one process, {ls.database_name})"
    report(name, theirs, args.annotations)

    growth_ours = ours["rss_peak"] - ours["rss_before"]
    growth_theirs = theirs["rss_peak"] - theirs["rss_before"]
    print("\n== Label Studio / ours")
    print(f"  seconds: {theirs['seconds']:.2f} / {ours['seconds']:.2f} = {theirs['seconds'] / ours['seconds']:.1f}x")
    print(
        f"  server RSS growth: {growth_theirs / 2**20:.1f} / {growth_ours / 2**20:.1f} MiB ="
        f" {growth_theirs / max(growth_ours, 1):.1f}x; peak {theirs['rss_peak'] / 2**20:.0f} /"
        f" {ours['rss_peak'] / 2**20:.0f} MiB = {theirs['rss_peak'] / ours['rss_peak']:.1f}x"
    )
    print(f"  server CPU: {theirs['cpu']:.1f} / {ours['cpu']:.1f} s")
    print(f"\nload average after: {load_average()}")
    if ours["rows"] != loaded or theirs["rows"] != args.annotations:
        raise SystemExit("an export lost or added annotations")


if __name__ == "__main__":
    main()
