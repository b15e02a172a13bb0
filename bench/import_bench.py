"""Import benchmark: 100,000 labelled pairs through POST /api/v1/projects/<slug>/import/.

    .venv/bin/python bench/import_bench.py [--pairs 100000] [--runs 5]

The pairs are HH-RLHF dev pairs (prompts made unique by a number, so every pair is new work: a
prompt, two responses, a comparison and a preference each), sent as one raw JSONL body to
gunicorn on 127.0.0.1 (one sync worker, production settings), into a fresh project of the bench
database (BENCH_DATABASE_URL, default rlhf_bench_api). Reported: pairs per second from the first
byte sent to the response (target: >= 10,000 pairs/s), and the CPU seconds the web worker and the
PostgreSQL backend serving it spent, which a busy machine inflates far less than the wall clock.
The project is deleted afterwards and the tables it wrote vacuumed. `--runs N` imports N times in a
row (a new project each time) and prints the median: on a shared machine single runs vary by 20%.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from export_bench import (  # noqa: E402
    DEFAULT_DB,
    BackendCpu,
    Gunicorn,
    hh_pairs,
    load_average,
    setup_django,
    staff_token,
)

# What an import writes and its project's deletion leaves dead: the data tables and the label
# statistics (migration 0005's STATS_TABLES; annotation_stats_comparison alone gains and loses a row
# per pair). This machine's PostgreSQL runs with autovacuum off; left unvacuumed, 7.8 million dead
# statistics rows (from session 6's runs) made the same import cost about a third more PostgreSQL CPU.
DATA_TABLES = ("annotation_prompt", "annotation_response", "annotation_comparison", "annotation_preference")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=100_000)
    parser.add_argument(
        "--runs", type=int, default=1, help="imports in a row, each into a new project; median reported"
    )
    args = parser.parse_args()
    database_url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_DB)
    setup_django(database_url)

    token = staff_token()
    pairs = hh_pairs()
    body = tempfile.TemporaryFile()
    for i in range(args.pairs):
        pair = pairs[i % len(pairs)]
        rejected = pair["rejected"] if pair["rejected"] != pair["chosen"] else pair["rejected"] + " "
        line = {"prompt": f"[{i}] {pair['prompt']}", "chosen": pair["chosen"], "rejected": rejected, "margin": 1}
        body.write(json.dumps(line, ensure_ascii=False).encode() + b"\n")
    size = body.tell()
    server = Gunicorn(database_url)
    rates = []
    try:
        for run in range(args.runs):
            rates.append(_run(args, database_url, server, token, body, size, label=f"run {run + 1}/{args.runs}"))
    finally:
        server.stop()
        body.close()
    if args.runs > 1:
        print(f"median of {args.runs} runs: {statistics.median(rates):,.0f} pairs/s (best {max(rates):,.0f})")


def _run(args, database_url: str, server, token: str, body, size: int, *, label: str) -> float:
    """One import into a new project, reported, then deleted (and the tables it wrote vacuumed, as
    autovacuum would in time, so that the next run does not pay for this one's dead rows)."""
    import psutil
    from django.db import connection

    from annotation.models import Preference, Project
    from annotation.services import project_delete

    slug = f"bench-import-{int(time.time() * 1000)}"
    Project.objects.create(name="Import benchmark", slug=slug)
    body.seek(0)
    request = urllib.request.Request(
        f"{server.base}/api/v1/projects/{slug}/import/?annotator=bench",
        data=body,
        method="POST",
        headers={
            "Authorization": f"Token {token}",
            "Content-Type": "application/jsonl",
            "Content-Length": str(size),
        },
    )
    worker = psutil.Process(server.worker_pid())
    cpu_before = worker.cpu_times()
    database = BackendCpu(database_url)
    database.start()
    load_before = load_average()
    started = time.perf_counter()
    with urllib.request.urlopen(request, timeout=600) as response:
        summary = json.loads(response.read())
    elapsed = time.perf_counter() - started
    cpu_after = worker.cpu_times()
    cpu = (cpu_after.user - cpu_before.user) + (cpu_after.system - cpu_before.system)
    postgres = database.stop()
    project = Project.objects.get(slug=slug)
    stored = Preference.objects.filter(project=project).count()
    assert stored == args.pairs == summary["preferences_created"], (stored, summary)
    rate = args.pairs / elapsed
    per = 100_000 / args.pairs
    print(f"{label}: created: {summary}")
    print(
        f"{args.pairs:,} pairs ({size / 1e6:.0f} MB of JSONL) imported in {elapsed:.1f} s = {rate:,.0f} pairs/s; "
        f"CPU s per 100,000 pairs: web worker {cpu * per:.1f}, PostgreSQL {postgres * per:.1f}; "
        f"load average before: {load_before}, after: {load_average()}"
    )
    started = time.perf_counter()
    project_delete(project=project)
    with connection.cursor() as cursor:
        stats = importlib.import_module("annotation.migrations.0005_label_aggregates").STATS_TABLES
        cursor.execute(f"VACUUM ANALYZE {', '.join((*DATA_TABLES, *stats))}")
    print(f"(bench project deleted and its tables vacuumed in {time.perf_counter() - started:.0f} s)", flush=True)
    return rate


if __name__ == "__main__":
    main()
