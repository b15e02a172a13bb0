"""Queue benchmark: 20 annotators labelling at once against 100,000 comparisons in PostgreSQL.

    .venv/bin/python bench/queue_bench.py [--clients 20] [--seconds 30] [--think-ms 0] [--keep] [--explain]
    .venv/bin/python bench/queue_bench.py --seconds 60 --think-ms 1000     # the issue-3 figures

What it measures: the latency of the labelling page's two JSON endpoints, end to end over HTTP on
loopback, as the page uses them: POST /p/<slug>/next (lease the next comparison and render it as an
HTML fragment; like the page's prefetch, it names the comparison on screen as `shown` and in
`exclude`) and POST /p/<slug>/submit (store the label of the one on screen), one of each per
label. It prints p50/p95/p99 and the maximum of each in milliseconds, the request rate, and any
error. Targets (issue 3): next p99 <= 20 ms, submit p99 <= 30 ms.

The server is gunicorn on 127.0.0.1 with production settings (DEBUG off, persistent database
connections) and docker-compose.yml's worker setup: 3 gthread workers of 4 threads, which keep
connections alive. The clients are one asyncio loop with one keep-alive HTTP/1.1 connection per
annotator, each logged in with its own session, so the load generator costs little CPU next to the
server. Every client is bounded in time (--seconds) and in requests (--max-requests).

--think-ms adds a pause between the prefetch and the submit, as a person reading would (uniform in
0.5-1.5 times the value; each client starts at a random point of one such pause, so the clients
are not in lockstep). 0 (the default) runs the clients flat out: then the latency is set by how
many requests queue for the 2 cores (Little's law: 20 clients / the server's request rate), not by
the queue. It also prints the CPU time the server spent per request (gunicorn workers and
PostgreSQL backends, from /proc), which does not depend on what else the machine is doing.

The fixture lives in its own database (BENCH_DATABASE_URL, default rlhf_bench_queue), is
bulk-loaded with COPY and rebuilt on each run (--keep reuses a loaded one): one project with
overlap 3 and 5% gold, 33,334 prompts with three responses each (a third from two policy
versions), all 100,002 pairs as comparisons (1% gold), and 200,000 labels from 60 imported
annotators (50,000 comparisons complete, 25,000 with two labels, the rest none) with their
submitted leases, plus 5,000 expired leases. After loading it runs VACUUM ANALYZE and a CHECKPOINT,
so that the measurement starts from a settled database rather than in the write-out of the load.

--explain prints PostgreSQL's plan of the queue's leasing query (EXPLAIN ANALYZE) for one bench
annotator and exits.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import random
import re
import socket
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/rlhf_bench_queue"
BENCH_VAR = ROOT / "var" / "bench-queue"
SLUG = "bench-queue"
PASSWORD = "bench-queue-pw-1"
PROMPTS = 33_334
IMPORTED_ANNOTATORS = 60


def bench_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env.update(
        DATABASE_URL=database_url,
        DEBUG="0",
        RLHF_VAR_DIR=str(BENCH_VAR),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SETTINGS_MODULE="config.settings",
        WHITENOISE_USE_FINDERS="0",
        LOG_LEVEL="WARNING",
        SECRET_KEY="queue-bench-only-not-a-secret-" + "x" * 40,
    )
    return env


def setup_django(database_url: str) -> None:
    BENCH_VAR.mkdir(parents=True, exist_ok=True)
    os.environ.update(bench_env(database_url))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def recreate_database(database_url: str) -> None:
    import psycopg2

    name = database_url.rsplit("/", 1)[1]
    admin = psycopg2.connect(database_url.rsplit("/", 1)[0].replace("postgres://", "postgresql://", 1) + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


def _copy(cursor, table: str, columns: list[str], rows) -> int:
    """COPY rows (tuples; None is NULL) into table; returns the row count."""
    buffer = io.StringIO()
    n = 0
    for row in rows:
        fields = []
        for value in row:
            if value is None:
                fields.append("\\N")
            else:
                text = str(value)
                fields.append(text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n"))
        buffer.write("\t".join(fields) + "\n")
        n += 1
    buffer.seek(0)
    cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)
    return n


def load_fixture(clients: int) -> None:
    """Bulk-loads the project described in the module text, with `clients` bench annotators."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.db import connection

    from annotation.models import Membership, Project, Role
    from training.models import ModelVersion

    rng = random.Random(42)
    now = datetime.now(UTC)
    User = get_user_model()
    project = Project.objects.create(name="Queue bench", slug=SLUG, overlap=3, gold_rate=0.05, lease_seconds=600)
    policies = [
        ModelVersion.objects.create(project=project, kind="policy", version=v, artifact_path=f"/bench/p{v}", base="b")
        for v in (1, 2)
    ]
    password = make_password(PASSWORD)  # hashed once: the same password for every bench annotator
    User.objects.bulk_create(
        [User(username=f"bench{i}", password=password) for i in range(clients)]
        + [User(username=f"import:bench{i}", is_active=False) for i in range(IMPORTED_ANNOTATORS)]
    )
    bench_users = list(User.objects.filter(username__startswith="bench").order_by("id"))
    imported = list(User.objects.filter(username__startswith="import:bench").values_list("id", flat=True))
    Membership.objects.bulk_create([Membership(project=project, user=u, role=Role.ANNOTATOR) for u in bench_users])

    raw = connection.connection
    with raw.cursor() as cursor:
        started = time.perf_counter()
        prompts = []
        for i in range(1, PROMPTS + 1):
            text = f"Question {i}: how would you explain topic {i % 977} to a newcomer, briefly?"
            prompts.append((i, project.pk, text, hashlib.sha256(text.encode()).hexdigest(), False, now))
        _copy(
            cursor,
            "annotation_prompt",
            ["id", "project_id", "text", "content_hash", "is_eval", "created_at"],
            prompts,
        )
        responses = []
        for i in range(1, PROMPTS + 1):
            for k in range(3):
                rid = (i - 1) * 3 + k + 1
                text = (
                    f"Answer {k} to question {i}.\n\n- **First**, the core idea in plain words.\n"
                    f"- *Then* an example: `f(x) = {k} * x`.\n\n" + "Some more explanation follows here. " * 8
                )
                policy = policies[k - 1].pk if k and i % 3 == 0 else None
                responses.append(
                    (rid, i, text, hashlib.sha256(text.encode()).hexdigest(), "bench-model", policy, "{}", now)
                )
        _copy(
            cursor,
            "annotation_response",
            ["id", "prompt_id", "text", "content_hash", "source", "policy_version_id", "generation", "created_at"],
            responses,
        )
        pairs = []
        for i in range(1, PROMPTS + 1):
            first = (i - 1) * 3 + 1
            pairs += [(i, first, first + 1), (i, first, first + 2), (i, first + 1, first + 2)]
        order = list(range(len(pairs)))
        rng.shuffle(order)
        complete, two_labels = set(order[:50_000]), set(order[50_000:75_000])
        gold = set(order[75_000:76_000])
        comparisons, labels = [], {}
        for index, (prompt_id, a, b) in enumerate(pairs, start=1):
            n = 3 if index - 1 in complete else 2 if index - 1 in two_labels else 0
            is_gold = index - 1 in gold
            comparisons.append(
                (index, project.pk, prompt_id, a, b, is_gold, rng.choice("ab") if is_gold else "", n, now)
            )
            labels[index] = n
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
            comparisons,
        )
        preferences, assignments = [], []
        for comparison_id, n in labels.items():
            for j in range(n):
                annotator = imported[(comparison_id + j) % IMPORTED_ANNOTATORS]
                side = rng.choice("ab")
                preferences.append(
                    (project.pk, comparison_id, annotator, rng.choice("ab"), rng.choice((1, 2, 3)), "", side, 4000, now)
                )
                assignments.append(
                    (project.pk, comparison_id, annotator, "submitted", side, now, now + timedelta(minutes=10), now, "")
                )
        unlabelled = [cid for cid, n in labels.items() if n == 0]
        for comparison_id in rng.sample(unlabelled, 5_000):
            annotator = imported[comparison_id % IMPORTED_ANNOTATORS]
            leased = now - timedelta(hours=2)
            assignments.append(
                (project.pk, comparison_id, annotator, "leased", "a", leased, leased + timedelta(minutes=10), None, "")
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
            preferences,
        )
        _copy(
            cursor,
            "annotation_assignment",
            [
                "project_id",
                "comparison_id",
                "annotator_id",
                "status",
                "shown_left",
                "leased_at",
                "expires_at",
                "first_shown_at",
                "skip_reason",
            ],
            assignments,
        )
        for table in ("annotation_prompt", "annotation_response", "annotation_comparison"):
            cursor.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
    raw.commit()
    with raw.cursor() as cursor:
        raw.autocommit = True
        cursor.execute("VACUUM ANALYZE")
        # The load leaves hundreds of MB of dirty pages and WAL. Without a checkpoint now, the
        # next one (timed, or forced by max_wal_size) writes them out during the measurement, and
        # the labels that wait for a WAL flush then wait for the disk: tails that belong to this
        # bulk load, not to labelling. Needs superuser or pg_checkpoint; skipped without.
        try:
            cursor.execute("CHECKPOINT")
        except Exception as exc:  # noqa: BLE001 - the bench runs on without it
            print(f"warning: no CHECKPOINT after the load ({exc}); a checkpoint may land in the run", flush=True)
    print(
        f"loaded {len(pairs):,} comparisons, {len(preferences):,} preferences and {len(assignments):,} "
        f"assignments in {time.perf_counter() - started:.1f} s",
        flush=True,
    )


def explain(clients: int) -> None:
    """EXPLAIN ANALYZE of the leasing query, as annotation.queue builds it, for a bench annotator."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction
    from django.utils import timezone

    from annotation import queue
    from annotation.models import Project

    project = Project.objects.get(slug=SLUG)
    user = get_user_model().objects.get(username="bench0")
    for gold in (False, True):
        sql = queue._candidate_sql(gold=gold) + queue._ORDER + " FOR UPDATE OF c SKIP LOCKED"
        params = queue._params(project=project, annotator=user, now=timezone.now(), gold=gold)
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + sql, params)
            print(f"-- gold={gold}\n" + "\n".join(row[0] for row in cursor.fetchall()) + "\n")


# The load -------------------------------------------------------------------------------------------


class Client:
    """One annotator: a keep-alive HTTP/1.1 connection with its session and CSRF cookies."""

    def __init__(self, port: int, username: str) -> None:
        self.port, self.username = port, username
        self.cookies: dict[str, str] = {}
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        sock = self.writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        await self.ready()
        headers = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: keep-alive"]
        if self.cookies:
            headers.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if "csrftoken" in self.cookies:
            headers += [f"X-CSRFToken: {self.cookies['csrftoken']}", f"Referer: http://127.0.0.1:{self.port}/"]
        if body or method == "POST":
            headers += [f"Content-Length: {len(body)}", f"Content-Type: {content_type or 'application/json'}"]
        self.writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, close = 0, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";", 1)[0]
            elif name == "connection" and value.lower() == "close":
                close = True
        data = await self.reader.readexactly(length) if length else b""
        if close:
            self.writer.close()
            self.writer = None
        return status, data

    async def ready(self) -> None:
        """Reconnects if the server closed the connection after the last answer (gunicorn's sync
        workers do after every request); called outside the timed part of a request."""
        if self.writer is None:
            await self.connect()

    async def log_in(self) -> None:
        await self.connect()
        status, page = await self.request("GET", "/accounts/login/")
        token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1).decode()
        form = f"csrfmiddlewaretoken={token}&username={self.username}&password={PASSWORD}&next=/".encode()
        status, _ = await self.request("POST", "/accounts/login/", form, "application/x-www-form-urlencoded")
        if status != 302 or "sessionid" not in self.cookies:
            raise RuntimeError(f"{self.username} could not log in (HTTP {status})")


async def annotate(client: Client, deadline: float, max_requests: int, think: float, stats: dict) -> None:
    """One annotator, as the labelling page drives the two endpoints: the page shows comparison X
    and at once prefetches the next one, telling the server that X is now on screen (`shown`) and
    not to hand X out again (`exclude`); the annotator reads and answers X (the think time), the page
    submits X and shows the prefetched one, and so on. So each label costs one next and one submit,
    and each next carries what the page's does."""
    rng = random.Random(client.username)
    requests = 0
    current = None
    if think:
        # People do not all click at the same instant: each client starts at its own point of a
        # think interval, or the first requests of all twenty would queue behind one another.
        await asyncio.sleep(rng.uniform(0, think))
    while time.perf_counter() < deadline and requests < max_requests:
        ask = {"exclude": [current["comparison_id"]] if current else [], "shown": current and current["comparison_id"]}
        await client.ready()
        started = time.perf_counter()
        status, data = await client.request("POST", f"/p/{SLUG}/next", json.dumps(ask).encode())
        stats["next"].append(time.perf_counter() - started)
        requests += 1
        upcoming = None
        if status != 200:
            stats["errors"].append(f"next {status}: {data[:200]!r}")
        else:
            upcoming = json.loads(data)["assignment"]
            if upcoming is None:
                stats["empty"] += 1
        if current is not None:
            if think:
                await asyncio.sleep(rng.uniform(0.5, 1.5) * think)
            choice = rng.choice(["a", "b", "a", "b", "tie", "both_bad"])
            answer = {
                "comparison_id": current["comparison_id"],
                "choice": choice,
                "strength": rng.choice((1, 2, 3)) if choice in ("a", "b") else None,
                "time_spent_ms": rng.randint(2000, 30000),
                "shown_left": current["shown_left"],
            }
            await client.ready()
            started = time.perf_counter()
            status, data = await client.request("POST", f"/p/{SLUG}/submit", json.dumps(answer).encode())
            stats["submit"].append(time.perf_counter() - started)
            requests += 1
            if status != 200:
                stats["errors"].append(f"submit {status}: {data[:200]!r}")
        if upcoming is None and status == 200:
            break
        current = upcoming


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used, from /proc."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def server_pids(gunicorn: int) -> tuple[list[int], list[int]]:
    """The gunicorn workers, and the PostgreSQL backends serving the bench database."""
    from django.db import connection

    workers = [int(p) for p in Path(f"/proc/{gunicorn}/task/{gunicorn}/children").read_text().split()]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        backends = [row[0] for row in cursor.fetchall()]
    return workers, backends


async def run_load(port: int, gunicorn: int, args) -> dict:
    users = [Client(port, f"bench{i}") for i in range(args.clients)]
    await asyncio.gather(*(user.log_in() for user in users))
    stats: dict = {"next": [], "submit": [], "errors": [], "empty": 0}
    # A short warm-up fills each worker's caches and connections; it is not measured.
    warm_up = {"next": [], "submit": [], "errors": [], "empty": 0}
    await asyncio.gather(*(annotate(u, time.perf_counter() + 2, 6, 0, warm_up) for u in users))
    workers, backends = await asyncio.to_thread(server_pids, gunicorn)
    cpu_before = (cpu_seconds(workers), cpu_seconds(backends))
    started = time.perf_counter()
    deadline = started + args.seconds
    think = args.think_ms / 1000
    await asyncio.gather(*(annotate(u, deadline, args.max_requests, think, stats) for u in users))
    stats["elapsed"] = time.perf_counter() - started
    stats["cpu"] = (cpu_seconds(workers) - cpu_before[0], cpu_seconds(backends) - cpu_before[1])
    return stats


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def report(stats: dict, args) -> None:
    print(
        f"\n{args.clients} clients, {args.seconds:g} s, think time {args.think_ms} ms, "
        f"gunicorn {args.workers} {args.worker_class} workers, {os.cpu_count()} CPUs"
    )
    for name, target in (("next", 20), ("submit", 30)):
        values = stats[name]
        if not values:
            print(f"{name:>7}: no requests")
            continue
        p99 = percentile(values, 99)
        verdict = "meets" if p99 <= target else "MISSES"
        print(
            f"{name:>7}: n={len(values):6d}  p50={percentile(values, 50):6.1f} ms  p95={percentile(values, 95):6.1f} ms"
            f"  p99={p99:6.1f} ms  max={max(values) * 1000:6.1f} ms  mean={statistics.mean(values) * 1000:5.1f} ms"
            f"  ({verdict} p99 <= {target} ms)"
        )
    total = len(stats["next"]) + len(stats["submit"])
    print(f"   rate: {total / stats['elapsed']:.0f} requests/s, {len(stats['submit']) / stats['elapsed']:.0f} labels/s")
    web, database = stats["cpu"]
    print(
        f"    cpu: {1000 * web / total:.1f} ms in gunicorn + {1000 * database / total:.1f} ms in PostgreSQL per request"
        f" (the capacity of an idle machine: about {os.cpu_count() * total / (web + database):.0f} requests/s)"
    )
    load = os.getloadavg()[0]
    if load > os.cpu_count():
        print(f"   note: load average {load:.1f} on {os.cpu_count()} CPUs; other processes inflate every latency")
    if stats["empty"]:
        print(f"  empty: {stats['empty']} clients found the queue empty")
    if stats["errors"]:
        print(f" errors: {len(stats['errors'])}, first: {stats['errors'][0]}")


def check_overlap() -> None:
    """After the run: no comparison has more labels than the overlap, and label_count is right."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM annotation_comparison c WHERE NOT c.is_gold AND ("
            " c.label_count > 3 OR c.label_count <> (SELECT count(*) FROM annotation_preference p"
            " WHERE p.comparison_id = c.id))"
        )
        bad = cursor.fetchone()[0]
    print(f"  check: {bad} regular comparisons over the overlap or with a wrong label_count")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=30)
    parser.add_argument("--max-requests", type=int, default=5000, help="per client")
    parser.add_argument("--think-ms", type=int, default=0)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn workers")
    parser.add_argument("--worker-class", default="gthread", choices=["sync", "gthread"])
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--keep", action="store_true", help="reuse the loaded bench database")
    parser.add_argument("--explain", action="store_true", help="print the leasing query's plan and exit")
    args = parser.parse_args()
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)

    if not args.keep and not args.explain:
        recreate_database(database_url)
    setup_django(database_url)
    if not args.keep and not args.explain:
        from django.core.management import call_command

        call_command("migrate", verbosity=0)
        load_fixture(args.clients)
    if args.explain:
        explain(args.clients)
        return

    port = free_port()
    server = subprocess.Popen(
        [
            str(ROOT / ".venv" / "bin" / "gunicorn"),
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(args.workers),
            "--worker-class",
            args.worker_class,
            "--threads",
            str(args.threads),
            "--keep-alive",
            "30",
            "--log-level",
            "warning",
        ],
        cwd=ROOT,
        env=bench_env(database_url),
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise SystemExit("gunicorn did not start")
        stats = asyncio.run(run_load(port, server.pid, args))
    finally:
        server.terminate()
        server.wait(timeout=30)
    report(stats, args)
    check_overlap()


if __name__ == "__main__":
    main()
