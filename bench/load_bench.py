"""Load benchmark: 50 annotators labelling at once, against our app and against Label Studio.

    .venv/bin/python bench/load_bench.py [--clients 50] [--seconds 60] [--comparisons 6000] [--overlap 3]
                                         [--think-ms 0] [--skip-ls] [--skip-ours] [--ls-postgres]

Label Studio must be installed in its own environment first (never a project dependency):
    python3 -m venv var/venv-ls && var/venv-ls/bin/pip install label-studio

Each side in turn, alone on the machine (the other one's server is stopped): `--clients` simulated
annotators, each with its own logged-in session and one keep-alive HTTP/1.1 connection (one asyncio
loop drives them all), label in a loop for `--seconds`, at most `--max-requests` requests each,
over loopback. One label is the labelling flow of that side's own interface:
- ours: POST /p/<slug>/next (lease the next comparison, rendered as the page's HTML fragment),
  then POST /p/<slug>/submit (the label). gunicorn runs config.wsgi with the production settings
  (DEBUG off) as docker-compose.yml does (3 gthread workers of 4 threads) on PostgreSQL.
- Label Studio: GET /api/projects/<id>/next/ (its label stream: the next task, locked for the
  annotator), then POST /api/tasks/<id>/annotations/. It runs as `label-studio start` does by
  default: Django's threaded development server in one process, on SQLite.
Before the timed part each annotator asks once for its next item (not timed), so that every
server has its connections open and its code loaded.

Same data on both sides: `--comparisons` prompt/response pairs from HH-RLHF (each prompt made
unique by a number), overlap `--overlap` (a comparison/task takes at most that many labels; no
gold). Ours is bulk-loaded with COPY into its own database (BENCH_DATABASE_URL, default
rlhf_bench_load, rebuilt on each run); Label Studio's through its import API into a fresh data
folder under var/bench-load/.

Printed for each side: p50/p95/p99/max latency of each request (a request unanswered after 60 s
is an error), labels stored per second (those answered within the `--seconds`; requests under way
at the deadline are waited for, and the total is printed too), errors, and the server's CPU time
per label (gunicorn + its PostgreSQL backends; Label Studio's process, with SQLite inside it),
which depends less on what else the machine is doing than the wall clock. Then the ratios.
Checked afterwards: ours, successful submits == preference rows, no (annotator, comparison)
twice, no comparison with more labels than the overlap, label_count right; Label Studio,
annotations created == successful submits (by its API and in its database), and the same
duplicate and overlap counts read from its database. The exit status is 1 when one of our checks
fails (Label Studio's are reported only).

--ls-postgres runs Label Studio on PostgreSQL (LS_DATABASE_URL, default rlhf_bench_load_ls, made
afresh) instead of its default SQLite, still with its own server; its backends' CPU then counts.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from _common import (
    ROOT,
    Gunicorn,
    HttpClient,
    LabelStudio,
    comparison_texts,
    copy_rows,
    cpu_seconds,
    database_backends,
    json_bytes,
    load_average,
    ls_create_project,
    ls_import,
    ls_result,
    percentile,
    postgres_backends,
    process_tree,
    setup_django,
)

DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/rlhf_bench_load"
LS_POSTGRES = os.environ.get("LS_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/rlhf_bench_load_ls")
BENCH_VAR = ROOT / "var" / "bench-load"
SLUG = "bench-load"
PASSWORD = "bench-load-pw-1"
CHOICES = ["a", "b", "a", "b", "tie", "both_bad"]
REQUEST_TIMEOUT = 60


# Fixtures ----------------------------------------------------------------------------------------


def load_ours(texts: list[tuple[str, str, str]], overlap: int, clients: int) -> None:
    """Our project, bulk-loaded: the comparisons, `clients` annotators with one password."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection, transaction

    from annotation.models import Membership, Project, Role

    started = time.perf_counter()
    User = get_user_model()
    password = make_password(PASSWORD)  # hashed once: the same password for every bench annotator
    with transaction.atomic():
        project = Project.objects.create(name="Load bench", slug=SLUG, overlap=overlap, gold_rate=0, lease_seconds=600)
        User.objects.bulk_create([User(username=f"annotator{i}", password=password) for i in range(clients)])
        users = User.objects.filter(username__startswith="annotator")
        Membership.objects.bulk_create([Membership(project=project, user=u, role=Role.ANNOTATOR) for u in users])
        now = datetime.now(UTC)
        with connection.cursor() as cursor:
            copy_rows(
                cursor.cursor,
                "annotation_prompt",
                ["id", "project_id", "text", "content_hash", "is_eval", "created_at"],
                (
                    (i + 1, project.pk, p, hashlib.sha256(p.encode()).hexdigest(), False, now)
                    for i, (p, _, _) in enumerate(texts)
                ),
            )
            copy_rows(
                cursor.cursor,
                "annotation_response",
                ["id", "prompt_id", "text", "content_hash", "source", "generation", "created_at"],
                (
                    (2 * i + j + 1, i + 1, text, hashlib.sha256(text.encode()).hexdigest(), "hh", "{}", now)
                    for i, (_, a, b) in enumerate(texts)
                    for j, text in enumerate((a, b))
                ),
            )
            copy_rows(
                cursor.cursor,
                "annotation_comparison",
                ["id", "project_id", "prompt_id", "response_a_id", "response_b_id", "is_gold", "gold_choice"]
                + ["label_count", "created_at"],
                ((i + 1, project.pk, i + 1, 2 * i + 1, 2 * i + 2, False, "", 0, now) for i in range(len(texts))),
            )
            for table in ("annotation_prompt", "annotation_response", "annotation_comparison"):
                cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE")
    print(f"ours: loaded {len(texts):,} comparisons in {time.perf_counter() - started:.1f} s (COPY)", flush=True)


def ls_tasks(texts: list[tuple[str, str, str]]) -> list[dict]:
    return [
        {"data": {"prompt": p, "response_a": a, "response_b": b, "comparison": i + 1}}
        for i, (p, a, b) in enumerate(texts)
    ]


# The two labelling loops -------------------------------------------------------------------------


def new_stats() -> dict:
    return {
        "next": [],
        "submit": [],
        "errors": [],
        "empty": 0,
        "stored": 0,
        "in_window": 0,
        "not_created": 0,
    }


async def timed(client: HttpClient, stats: dict, name: str, method: str, path: str, body: bytes = b""):
    """One request, its latency recorded under `name`; None when it timed out or failed."""
    await client.ready()
    started = time.perf_counter()
    try:
        answer = await asyncio.wait_for(client.request(method, path, body), REQUEST_TIMEOUT)
    except TimeoutError:
        client.close()
        stats["errors"].append(f"{name} timeout: {client.name} {method} {path}: no answer in {REQUEST_TIMEOUT} s")
        return None
    except (ConnectionError, asyncio.IncompleteReadError) as error:
        stats["errors"].append(f"{name} connection: {client.name} {method} {path}: {error!r}")
        return None
    stats[name].append(time.perf_counter() - started)
    return answer


def an_answer(rng: random.Random) -> tuple[str, int | None, int]:
    choice = rng.choice(CHOICES)
    return choice, rng.choice((1, 2, 3)) if choice in ("a", "b") else None, rng.randint(2000, 30000)


async def label_ours(client: HttpClient, deadline: float, max_requests: int, think: float, stats: dict) -> None:
    rng = random.Random(client.name)
    requests = 0
    while time.perf_counter() < deadline and requests < max_requests:
        answer = await timed(client, stats, "next", "POST", f"/p/{SLUG}/next", b'{"exclude": []}')
        requests += 1
        if answer is None:
            continue
        status, data = answer
        if status != 200:
            stats["errors"].append(f"next HTTP {status}: {client.name}: {data[:200]!r}")
            continue
        assignment = json.loads(data)["assignment"]
        if assignment is None:
            stats["empty"] += 1
            break
        choice, strength, spent = an_answer(rng)
        body = {
            "comparison_id": assignment["comparison_id"],
            "choice": choice,
            "strength": strength,
            "time_spent_ms": spent,
            "shown_left": assignment["shown_left"],
        }
        answer = await timed(client, stats, "submit", "POST", f"/p/{SLUG}/submit", json_bytes(body))
        requests += 1
        if answer is None:
            continue
        status, data = answer
        if status == 200 and json.loads(data)["created"]:
            stats["stored"] += 1
            stats["in_window"] += time.perf_counter() <= deadline
        elif status == 200:
            stats["not_created"] += 1
        else:
            stats["errors"].append(f"submit HTTP {status}: {client.name}: {body}: {data[:200]!r}")
        if think:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)


async def label_ls(
    client: HttpClient, project_id: int, deadline: float, max_requests: int, think: float, stats: dict
) -> None:
    rng = random.Random(client.name)
    requests = 0
    while time.perf_counter() < deadline and requests < max_requests:
        answer = await timed(client, stats, "next", "GET", f"/api/projects/{project_id}/next/")
        requests += 1
        if answer is None:
            continue
        status, data = answer
        if status == 404:  # "There are no tasks for <user>"
            stats["empty"] += 1
            break
        if status != 200:
            stats["errors"].append(f"next HTTP {status}: {client.name}: {data[:200]!r}")
            continue
        task = json.loads(data)
        choice, strength, spent = an_answer(rng)
        body = {"result": ls_result(choice, strength), "lead_time": spent / 1000, "project": project_id}
        answer = await timed(client, stats, "submit", "POST", f"/api/tasks/{task['id']}/annotations/", json_bytes(body))
        requests += 1
        if answer is None:
            continue
        status, data = answer
        if status == 201:
            stats["stored"] += 1
            stats["in_window"] += time.perf_counter() <= deadline
        else:
            stats["errors"].append(f"submit HTTP {status}: {client.name} task {task['id']}: {data[:200]!r}")
        if think:
            await asyncio.sleep(rng.uniform(0.5, 1.5) * think)


async def drive(clients: list[HttpClient], one_label, warm_up, server_pids, args, log_in=None) -> dict:
    """Logs the clients in if asked, warms up (one untimed `next` per client), then runs every
    client until the deadline. One event loop for all of it: a connection belongs to its loop."""
    if log_in is not None:
        await log_in(clients)
    statuses = await asyncio.gather(*(warm_up(c) for c in clients))
    failed = [status for status, _ in statuses if status != 200]
    if failed:
        print(f"  warm-up: {len(failed)} of {len(clients)} first requests failed: {Counter(failed)}")
    pids = set(await asyncio.to_thread(server_pids))
    cpu_before = cpu_seconds(list(pids))
    stats = new_stats()
    started = time.perf_counter()
    deadline = started + args.seconds
    think = args.think_ms / 1000
    await asyncio.gather(*(one_label(c, deadline, args.max_requests, think, stats) for c in clients))
    stats["elapsed"] = time.perf_counter() - started
    stats["seconds"] = args.seconds
    # A process that appeared meanwhile (a database connection of a thread that had not served a
    # request yet) counts in full: it had used nothing before.
    stats["cpu"] = cpu_seconds(list(pids | set(await asyncio.to_thread(server_pids)))) - cpu_before
    stats["load"] = os.getloadavg()
    stats["log"] = BENCH_VAR / f"errors-{clients[0].port}.txt"
    stats["log"].write_text("".join(error + "\n" for error in stats["errors"]))
    for client in clients:
        client.close()
    return stats


# The two sides -----------------------------------------------------------------------------------


def run_ours(texts, args, database_url: str) -> dict:
    setup_django(database_url, BENCH_VAR, fresh=True)
    load_ours(texts, args.overlap, args.clients)
    server = Gunicorn(database_url, BENCH_VAR, workers=args.workers, threads=args.threads)
    try:
        clients = [HttpClient(server.port, f"annotator{i}") for i in range(args.clients)]

        async def warm_up(client):
            return await client.request("POST", f"/p/{SLUG}/next", b'{"exclude": []}')

        def server_pids():
            return process_tree(server.process.pid) + database_backends()

        stats = asyncio.run(drive(clients, label_ours, warm_up, server_pids, args, log_in=log_in_ours))
    finally:
        server.stop()
    stats["checks"] = check_ours(stats, args.overlap)
    return stats


async def log_in_ours(clients: list[HttpClient]) -> None:
    import re

    async def log_in(client: HttpClient) -> None:
        status, page = await client.request("GET", "/accounts/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        form = f"csrfmiddlewaretoken={token}&username={client.name}&password={PASSWORD}&next=/".encode()
        status, _ = await client.request("POST", "/accounts/login/", form, "application/x-www-form-urlencoded")
        if status != 302 or "sessionid" not in client.cookies:
            raise RuntimeError(f"{client.name} could not log in (HTTP {status})")

    await asyncio.gather(*(log_in(c) for c in clients))


def check_ours(stats: dict, overlap: int) -> list[tuple[str, bool]]:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM annotation_preference")
        rows = cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM (SELECT 1 FROM annotation_preference GROUP BY annotator_id, comparison_id"
            " HAVING count(*) > 1) d"
        )
        duplicates = cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM (SELECT 1 FROM annotation_preference GROUP BY comparison_id HAVING count(*) > %s) o",
            [overlap],
        )
        over = cursor.fetchone()[0]
        cursor.execute(
            "SELECT count(*) FROM annotation_comparison c WHERE c.label_count <>"
            " (SELECT count(*) FROM annotation_preference p WHERE p.comparison_id = c.id)"
        )
        wrong_count = cursor.fetchone()[0]
    return [
        (f"preference rows {rows:,} == successful submits {stats['stored']:,}", rows == stats["stored"]),
        (f"(annotator, comparison) pairs labelled twice: {duplicates}", duplicates == 0),
        (f"comparisons with more than {overlap} labels: {over}", over == 0),
        (f"comparisons whose label_count is not their preference count: {wrong_count}", wrong_count == 0),
    ]


def run_ls(texts, args) -> dict:
    started = time.perf_counter()
    ls = LabelStudio(BENCH_VAR / "label-studio", postgres_url=LS_POSTGRES if args.ls_postgres else None)
    try:
        stats = _run_ls(ls, texts, args, started)
    finally:
        ls.stop()
    stats["checks"] += check_ls_database(ls, stats, args.overlap)
    return stats


def _run_ls(ls: LabelStudio, texts, args, started: float) -> dict:
    print(f"label studio {ls.version()}: started in {time.perf_counter() - started:.0f} s", flush=True)
    admin = ls.admin()
    project_id = ls_create_project(admin, "Load bench", args.overlap)
    started = time.perf_counter()
    n_tasks, _ = ls_import(admin, project_id, ls_tasks(texts), batch=1000)
    print(f"label studio: imported {n_tasks:,} tasks in {time.perf_counter() - started:.1f} s (import API)")
    if n_tasks != len(texts):
        raise RuntimeError(f"Label Studio imported {n_tasks} of {len(texts)} tasks")
    sessions = [ls.sign_up(f"annotator{i}@example.com") for i in range(args.clients)]
    clients = [HttpClient(ls.port, f"annotator{i}", s.cookies) for i, s in enumerate(sessions)]

    async def warm_up(client):
        return await client.request("GET", f"/api/projects/{project_id}/next/")

    async def one_label(client, deadline, max_requests, think, stats):
        await label_ls(client, project_id, deadline, max_requests, think, stats)

    def server_pids():
        backends = postgres_backends(LS_POSTGRES.rsplit("/", 1)[1]) if ls.postgres_url else []
        return process_tree(ls.process.pid) + backends

    stats = asyncio.run(drive(clients, one_label, warm_up, server_pids, args))
    stats["project_id"], stats["database"] = project_id, ls.database_name
    total = admin.api("GET", f"/api/projects/{project_id}/")["total_annotations_number"]
    stats["checks"] = [
        (f"annotations its API counts {total:,} == successful submits {stats['stored']:,}", total == stats["stored"])
    ]
    return stats


def check_ls_database(ls: LabelStudio, stats: dict, overlap: int) -> list[tuple[str, bool]]:
    project, stored = stats["project_id"], stats["stored"]
    rows = ls.query("SELECT count(*) FROM task_completion WHERE project_id = %s", (project,))[0][0]
    duplicates = ls.query(
        "SELECT count(*) FROM (SELECT 1 FROM task_completion WHERE project_id = %s AND NOT was_cancelled"
        " GROUP BY task_id, completed_by_id HAVING count(*) > 1) d",
        (project,),
    )[0][0]
    over = ls.query(
        "SELECT count(*) FROM (SELECT 1 FROM task_completion WHERE project_id = %s AND NOT was_cancelled"
        " GROUP BY task_id HAVING count(*) > %s) o",
        (project, overlap),
    )[0][0]
    examples = ls.query(
        "SELECT task_id, count(*), count(DISTINCT completed_by_id) FROM task_completion WHERE project_id = %s"
        " AND NOT was_cancelled GROUP BY task_id HAVING count(*) > %s ORDER BY count(*) DESC, task_id LIMIT 5",
        (project, overlap),
    )
    detail = ", e.g. " + ", ".join(f"task {t}: {n} annotations by {a} annotators" for t, n, a in examples)
    return [
        (f"annotation rows in its database {rows:,} == successful submits {stats['stored']:,}", rows == stored),
        (f"(annotator, task) pairs annotated twice: {duplicates}", duplicates == 0),
        (f"tasks with more than {overlap} annotations: {over}" + (detail if over else ""), over == 0),
    ]


# The report --------------------------------------------------------------------------------------


def report(name: str, stats: dict) -> None:
    elapsed = stats["elapsed"]
    print(f"\n== {name}: {elapsed:.1f} s, load average at the end {' / '.join(f'{x:.2f}' for x in stats['load'])}")
    for request in ("next", "submit"):
        values = stats[request]
        if not values:
            print(f"  {request:>6}: no answers")
            continue
        print(
            f"  {request:>6}: n={len(values):6,}  p50={percentile(values, 50):7.1f} ms"
            f"  p95={percentile(values, 95):7.1f} ms  p99={percentile(values, 99):7.1f} ms"
            f"  max={max(values) * 1000:7.1f} ms  mean={statistics.mean(values) * 1000:6.1f} ms"
        )
    stored = stats["stored"]
    print(
        f"  labels stored: {stats['in_window']:,} within the {stats['seconds']:g} s ="
        f" {stats['in_window'] / stats['seconds']:.1f} per second; {stored:,} in all, when the last"
        f" answer came at {elapsed:.1f} s"
    )
    if stored:
        print(f"  server CPU: {1000 * stats['cpu'] / stored:.1f} ms per label ({stats['cpu']:.1f} s in all)")
    if stats["empty"]:
        print(f"  {stats['empty']} annotators found nothing left to label (the fixture ran out)")
    if stats["not_created"]:
        print(f"  {stats['not_created']} submits answered 200 without storing a label")
    errors = stats["errors"]
    kinds = Counter(error.split(":", 1)[0] for error in errors)
    print(f"  errors: {len(errors)}" + "".join(f", {n} {kind}" for kind, n in kinds.most_common()))
    for kind in kinds:
        print(f"    first {kind}: {next(e for e in errors if e.startswith(kind + ':'))[:300]}")
    if errors:
        print(f"    all errors: {stats['log']}")
    for text, ok in stats["checks"]:
        print(f"  check {'ok  ' if ok else 'FAIL'} {text}")


def compare(ours: dict, theirs: dict) -> None:
    print("\n== ours vs Label Studio")

    def rate(s):
        return s["in_window"] / s["seconds"]

    if theirs["in_window"] and ours["in_window"]:
        print(
            f"  labels stored per second (within the {ours['seconds']:g} s): {rate(ours):.1f} vs {rate(theirs):.1f}"
            f" = {rate(ours) / rate(theirs):.2f}x"
        )
        per_ours, per_theirs = ours["cpu"] / ours["stored"], theirs["cpu"] / theirs["stored"]
        print(
            f"  server CPU per label: {per_ours * 1000:.1f} ms vs {per_theirs * 1000:.1f} ms ="
            f" {per_theirs / per_ours:.2f}x less for ours"
        )
    for request in ("next", "submit"):
        if ours[request] and theirs[request]:
            for q in (50, 99):
                a, b = percentile(ours[request], q), percentile(theirs[request], q)
                print(f"  {request} p{q}: {a:.1f} ms vs {b:.1f} ms = {b / a:.2f}x faster for ours")
    print(f"  errors: {len(ours['errors'])} vs {len(theirs['errors'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-requests", type=int, default=4000, help="per annotator")
    parser.add_argument("--comparisons", type=int, default=6000)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--think-ms", type=int, default=0, help="mean pause after each label (0: flat out)")
    parser.add_argument("--workers", type=int, default=3, help="our gunicorn workers (gthread)")
    parser.add_argument("--threads", type=int, default=4, help="threads per gunicorn worker")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--skip-ls", action="store_true")
    parser.add_argument(
        "--ls-postgres",
        action="store_true",
        help="Label Studio on PostgreSQL (LS_DATABASE_URL) instead of its default SQLite",
    )
    args = parser.parse_args()
    sys.stdout.reconfigure(line_buffering=True)
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    Path(BENCH_VAR).mkdir(parents=True, exist_ok=True)

    texts = comparison_texts(args.comparisons)
    print(
        f"{args.clients} annotators, {args.seconds:g} s, think time {args.think_ms} ms, {args.comparisons:,}"
        f" comparisons, overlap {args.overlap}; load average before: {load_average()}",
        flush=True,
    )
    results = {}
    if not args.skip_ours:
        results["ours"] = run_ours(texts, args, database_url)
        report(f"ours (gunicorn {args.workers}x{args.threads} gthread, PostgreSQL)", results["ours"])
    if not args.skip_ls:
        results["ls"] = run_ls(texts, args)
        report(f"Label Studio (label-studio start: one process, threaded, {results['ls']['database']})", results["ls"])
    if len(results) == 2:
        compare(results["ours"], results["ls"])
    print(f"\nload average after: {load_average()}")
    failed = [text for text, ok in results.get("ours", {"checks": []})["checks"] if not ok]
    if failed:
        raise SystemExit("our checks failed: " + "; ".join(failed))


if __name__ == "__main__":
    main()
