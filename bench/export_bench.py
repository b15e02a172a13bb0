"""Export benchmark: 1,000,000 preferences streamed out of PostgreSQL through the HTTP endpoint.

    .venv/bin/python bench/export_bench.py [--rows 1000000] [--formats trl,parquet] [--mode raw]

What it measures, per format: rows per second from the request to the last byte, and the growth
of the web worker's resident memory (peak during the request minus its size before it). The web
process is gunicorn on 127.0.0.1 with one sync worker and the production settings (DEBUG off);
the client reads the body in 1 MiB pieces and counts rows as they arrive (JSONL), or keeps the
body in a file and counts its rows once the clock has stopped (Parquet: from its footer; CSV).
Targets (issue 4): >= 50,000 rows/s, <= 100 MB RSS growth.

Before each measured export the same format is exported from a small project (100 labels), so
that the baseline includes what any first export of a format loads once per process (DRF, and
for Parquet pyarrow's conversion code, about 60 MiB of it) and the growth is what the rows cost.
Besides the wall clock it reports the CPU time of the three processes that share the machine:
the web worker, the PostgreSQL backend serving it (found by the database name in its process
title) and this client. On a shared machine the wall clock says more about the neighbours than
about the export; the CPU seconds per million rows do not.

The fixture lives in its own database (BENCH_DATABASE_URL, default rlhf_bench_api, created and
migrated on first use) and is bulk-loaded with COPY: 100,000 prompts from the HH-RLHF dev file
(each made unique by a suffix), their chosen and rejected answers, one comparison each and ten
annotators' labels on every comparison. It is kept between runs and rebuilt when its size differs.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HH = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"
DEFAULT_DB = "postgres://postgres@127.0.0.1:5432/rlhf_bench_api"
ANNOTATORS = 10
BENCH_VAR = ROOT / "var" / "bench-api"


# Shared with bench/import_bench.py ---------------------------------------------------------------


def bench_env(database_url: str) -> dict[str, str]:
    """The environment of a production web process, on the bench database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env.update(
        DATABASE_URL=database_url,
        DEBUG="0",
        RLHF_VAR_DIR=str(BENCH_VAR),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SETTINGS_MODULE="config.settings",
        WHITENOISE_USE_FINDERS="0",
    )
    return env


def setup_django(database_url: str) -> None:
    BENCH_VAR.mkdir(parents=True, exist_ok=True)
    os.environ.update(bench_env(database_url))
    sys.path.insert(0, str(ROOT))
    _ensure_database(database_url)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _ensure_database(database_url: str) -> None:
    import psycopg2
    from psycopg2 import sql

    base, name = database_url.rsplit("/", 1)
    conn = psycopg2.connect(base.replace("postgres://", "postgresql://", 1) + "/postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cur.fetchone() is None:
            cur.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    conn.close()


def staff_token() -> str:
    from django.contrib.auth import get_user_model

    from annotation.api.services import api_token_create

    user, _ = get_user_model().objects.get_or_create(username="bench-staff", defaults={"is_staff": True})
    return api_token_create(user=user, name="bench").key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gunicorn:
    """gunicorn serving config.wsgi on 127.0.0.1 with one sync worker, as in docker-compose.yml."""

    def __init__(self, database_url: str, timeout: int = 600):
        self.port = free_port()
        self.log = open(BENCH_VAR / "gunicorn.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "gunicorn"),
                "config.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                "1",
                "--timeout",
                str(timeout),
            ],
            cwd=ROOT,
            env=bench_env(database_url),
            stdout=self.log,
            stderr=self.log,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError(f"gunicorn did not start; see {BENCH_VAR / 'gunicorn.log'}") from None
                time.sleep(0.3)

    def worker_pid(self) -> int:
        import psutil

        children = psutil.Process(self.process.pid).children()
        assert len(children) == 1, children
        return children[0].pid

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


class PeakRss(threading.Thread):
    """Samples a process's resident set size every 10 ms until stopped; keeps the peak."""

    def __init__(self, pid: int):
        import psutil

        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.baseline = self.peak = self.process.memory_info().rss
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.peak = max(self.peak, self.process.memory_info().rss)
        return self.peak - self.baseline


class BackendCpu(threading.Thread):
    """CPU seconds of the PostgreSQL backends serving one database, from when it starts until it
    stops: the backends are found by the database name in their process titles ("postgres: 15/main:
    postgres rlhf_bench_api 127.0.0.1(50984) idle"), rescanned every 0.2 s and once at the end."""

    def __init__(self, database_url: str):
        import psutil

        super().__init__(daemon=True)
        self.psutil = psutil
        self.tag = f" {database_url.rsplit('/', 1)[1]} "
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop_event = threading.Event()
        self._scan(started=True)

    def _scan(self, started: bool = False) -> None:
        for proc in self.psutil.process_iter(["name", "cmdline"]):
            try:
                if proc.info["name"] != "postgres" or self.tag not in " ".join(proc.info["cmdline"] or ()):
                    continue
                times = proc.cpu_times()
            except self.psutil.Error:
                continue
            cpu = times.user + times.system
            # A backend that appears later was started for this run: all of its time counts.
            self.first.setdefault(proc.pid, cpu if started else 0.0)
            self.last[proc.pid] = cpu

    def run(self) -> None:
        while not self._stop_event.wait(0.2):
            self._scan()

    def stop(self) -> float:
        self._stop_event.set()
        self.join()
        self._scan()
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def load_average() -> str:
    return f"{', '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs"


def hh_pairs() -> list[dict]:
    return [json.loads(line) for line in HH.read_text(encoding="utf-8").splitlines() if line.strip()]


# The export fixture ------------------------------------------------------------------------------


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy(cursor, table: str, columns: list[str], rows) -> None:
    """COPY rows into a table through a temporary file, written and sent in one pass each."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:
        for row in rows:
            buffer.write("\t".join(_copy_text(v) for v in row) + "\n")
        buffer.seek(0)
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)


def _next_ids(cursor, table: str) -> int:
    cursor.execute(f"SELECT COALESCE(MAX(id), 0) + 1 FROM {table}")
    return cursor.fetchone()[0]


def build_export_fixture(slug: str, n_preferences: int) -> int:
    """Makes (or finds) a project with n_preferences labels; returns how many it has."""
    from django.contrib.auth import get_user_model
    from django.db import connection, transaction

    from annotation.models import Preference, Project

    project = Project.objects.filter(slug=slug).first()
    if project is not None:
        have = Preference.objects.filter(project=project).count()
        if have == n_preferences:
            return have
        print(f"rebuilding the fixture ({have:,} preferences, {n_preferences:,} wanted)", flush=True)
        with connection.cursor() as cursor:
            cursor.execute("DELETE FROM annotation_preference WHERE project_id = %s", [project.pk])
        project.delete()
    n_comparisons = max(1, n_preferences // ANNOTATORS)
    pairs = hh_pairs()
    User = get_user_model()
    annotators = []
    for i in range(ANNOTATORS):
        user, _ = User.objects.get_or_create(username=f"bench-annotator-{i}", defaults={"is_active": False})
        annotators.append(user.pk)
    started = time.perf_counter()
    rng = random.Random(0)
    with transaction.atomic(), connection.cursor() as cur:
        project = Project.objects.create(name="Export benchmark", slug=slug)
        now = "2026-01-01 00:00:00+00"
        prompt0, response0, comparison0, preference0 = (
            _next_ids(cur, t)
            for t in ("annotation_prompt", "annotation_response", "annotation_comparison", "annotation_preference")
        )
        texts = []
        for i in range(n_comparisons):
            pair = pairs[i % len(pairs)]
            # HH repeats some prompts; a number makes each one a prompt of its own.
            prompt = f"[{i}] {pair['prompt']}"
            texts.append((prompt, pair["chosen"], pair["rejected"] if pair["rejected"] != pair["chosen"] else "-"))
        _copy(
            cur,
            "annotation_prompt",
            ["id", "project_id", "text", "messages", "content_hash", "is_eval", "created_at"],
            (
                (prompt0 + i, project.pk, p, None, hashlib.sha256(p.encode()).hexdigest(), "f", now)
                for i, (p, _, _) in enumerate(texts)
            ),
        )

        def responses():
            for i, (_, chosen, rejected) in enumerate(texts):
                for j, text in enumerate((chosen, rejected)):
                    digest = hashlib.sha256(text.encode()).hexdigest()
                    yield (response0 + 2 * i + j, prompt0 + i, text, digest, "hh", "{}", None, now)

        _copy(
            cur,
            "annotation_response",
            ["id", "prompt_id", "text", "content_hash", "source", "generation", "policy_version_id", "created_at"],
            responses(),
        )
        _copy(
            cur,
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
                (comparison0 + i, project.pk, prompt0 + i, response0 + 2 * i, response0 + 2 * i + 1, "f", "", 10, now)
                for i in range(n_comparisons)
            ),
        )

        def preferences():
            pid = preference0
            for i in range(n_comparisons):
                for annotator in annotators:
                    choice = "a" if rng.random() < 0.8 else rng.choice(("b", "b", "tie", "both_bad"))
                    strength = rng.choice((1, 2, 3, None)) if choice in ("a", "b") else None
                    yield (pid, project.pk, comparison0 + i, annotator, choice, strength, "", "a", 1500, now)
                    pid += 1

        _copy(
            cur,
            "annotation_preference",
            [
                "id",
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
        for table in ("annotation_prompt", "annotation_response", "annotation_comparison", "annotation_preference"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT MAX(id) FROM {table}))")
    with connection.cursor() as cur:
        cur.execute("VACUUM ANALYZE annotation_preference")
        cur.execute("VACUUM ANALYZE annotation_comparison")
    print(f"fixture built in {time.perf_counter() - started:.0f} s", flush=True)
    return Preference.objects.filter(project=project).count()


# The measurement ---------------------------------------------------------------------------------


def measure(server: Gunicorn, token: str, url: str, warm_up_url: str, fmt: str, database_url: str) -> dict:
    """Streams one export; returns its rows, seconds, bytes, the web worker's RSS growth (bytes)
    and the CPU seconds of the web worker, the PostgreSQL backend and this client. A small export
    of the same format goes first (see the module's docstring)."""
    headers = {"Authorization": f"Token {token}"}
    urllib.request.urlopen(urllib.request.Request(server.base + warm_up_url, headers=headers), timeout=60).read()
    rss = PeakRss(server.worker_pid())
    cpu_before = rss.process.cpu_times()
    database = BackendCpu(database_url)
    database.start()
    rss.start()
    request = urllib.request.Request(server.base + url, headers=headers)
    started = time.perf_counter()
    client_started = time.process_time()
    rows = size = 0
    # Parquet's rows are in its footer and CSV's quoted texts hold line breaks: both are kept in a
    # file and counted after the clock stops; JSONL's rows are its lines.
    spool = tempfile.TemporaryFile() if fmt in ("parquet", "csv") else None
    with urllib.request.urlopen(request, timeout=600) as response:
        assert response.status == 200, response.status
        while piece := response.read(1 << 20):
            size += len(piece)
            if spool is not None:
                spool.write(piece)
            else:
                rows += piece.count(b"\n")
    elapsed = time.perf_counter() - started
    client = time.process_time() - client_started
    growth = rss.stop()
    cpu_after = rss.process.cpu_times()
    worker = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    postgres = database.stop()
    if fmt == "parquet":
        import pyarrow.parquet as pq

        spool.seek(0)
        rows = pq.ParquetFile(spool).metadata.num_rows
    elif fmt == "csv":
        import csv
        import io

        spool.seek(0)
        rows = sum(1 for _ in csv.reader(io.TextIOWrapper(spool, encoding="utf-8", newline=""))) - 1
    if spool is not None:
        spool.close()
    return dict(rows=rows, seconds=elapsed, bytes=size, growth=growth, worker=worker, postgres=postgres, client=client)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="preferences in the fixture")
    parser.add_argument("--formats", default="trl,parquet", help="comma-separated: trl, conversational, csv, parquet")
    parser.add_argument("--mode", default="raw", choices=["raw", "aggregated"])
    args = parser.parse_args()
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    setup_django(database_url)
    slug = f"bench-export-{args.rows}"
    have = build_export_fixture(slug, args.rows)
    build_export_fixture("bench-export-warm-up", 100)
    token = staff_token()
    server = Gunicorn(database_url)
    try:
        print(f"{have:,} preferences in {slug}; export mode={args.mode}, ties included (every row is sent)")
        print(f"load average before: {load_average()}")
        for fmt in args.formats.split(","):
            query = f"/export/?format={fmt}&mode={args.mode}&include_ties=true"
            m = measure(
                server,
                token,
                f"/api/v1/projects/{slug}{query}",
                f"/api/v1/projects/bench-export-warm-up{query}",
                fmt,
                database_url,
            )
            per_million = 1e6 / m["rows"]
            print(
                f"{fmt:>14}: {m['rows']:,} rows in {m['seconds']:.1f} s = {m['rows'] / m['seconds']:,.0f} rows/s, "
                f"{m['bytes'] / 1e6:,.0f} MB sent, web worker RSS +{m['growth'] / 2**20:.1f} MiB (peak over "
                f"baseline); CPU s per million rows: web worker {m['worker'] * per_million:.1f}, "
                f"PostgreSQL {m['postgres'] * per_million:.1f}, client {m['client'] * per_million:.1f}; "
                f"load average after: {load_average()}",
                flush=True,
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
