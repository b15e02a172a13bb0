"""Helpers shared by the benchmarks against Label Studio (load_bench.py, ls_export_bench.py).

Our side: a bench database bulk-loaded with COPY, Django set up on it in this process, and gunicorn
serving config.wsgi on loopback with the production settings (DEBUG off). Label Studio's side: the
PyPI package in its own virtual environment (var/venv-ls, never a dependency of the project),
started with `label-studio start` on loopback in a scratch data folder, on its defaults (SQLite,
Django's threaded development server: one process, a thread per connection), driven through its
HTTP API with logged-in sessions. Both: an asyncio keep-alive HTTP/1.1 client, and the CPU time and
resident memory of a server's process tree, read from /proc.
"""

from __future__ import annotations

import asyncio
import http.cookiejar
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HH = ROOT.parent / "shared" / "data" / "hh-harmless-dev.jsonl"
LS_VENV = ROOT / "var" / "venv-ls"
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def hh_pairs() -> list[dict]:
    return [json.loads(line) for line in HH.read_text(encoding="utf-8").splitlines() if line.strip()]


def comparison_texts(n: int) -> list[tuple[str, str, str]]:
    """n (prompt, response a, response b) from HH-RLHF, cycled; a number makes each prompt unique."""
    pairs = hh_pairs()
    texts = []
    for i in range(n):
        pair = pairs[i % len(pairs)]
        rejected = pair["rejected"] if pair["rejected"] != pair["chosen"] else "-"
        texts.append((f"[{i}] {pair['prompt']}", pair["chosen"], rejected))
    return texts


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, seconds: float, log: Path) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError(f"{url} did not answer; see {log}") from None
            time.sleep(0.3)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of durations in seconds, in milliseconds."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))] * 1000


def load_average() -> str:
    return f"{' / '.join(f'{x:.2f}' for x in os.getloadavg())} (1/5/15 min) on {os.cpu_count()} CPUs"


# /proc -------------------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                pass
    return pids


def rss_bytes(pids: list[int], field: str = "VmRSS") -> int:
    """The summed resident memory of the processes (VmRSS, or RssAnon for private memory only)."""
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(field + ":"):
                    total += int(line.split()[1]) * 1024
                    break
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes have used."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def postgres_backends(database: str) -> list[int]:
    """The PostgreSQL backends connected to a database, found by their process titles."""
    pids = []
    for path in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            title = path.read_bytes()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        if title.startswith(b"postgres: ") and f" {database} ".encode() in title:
            pids.append(int(path.parent.name))
    return pids


class PeakRss(threading.Thread):
    """Samples the summed RSS of a process tree every 10 ms until stopped and keeps the peak; the
    tree is re-read on each sample, so a worker forked meanwhile counts too. `extra` (a function
    that lists processes outside the tree: database backends, re-listed every 100 ms since one may
    connect meanwhile) is summed on its own, private memory (RssAnon) only: a backend's RSS also
    counts the shared buffers it touches."""

    def __init__(self, root_pid: int, extra=None) -> None:
        super().__init__(daemon=True)
        self.root_pid, self.extra = root_pid, extra
        self.baseline = self.peak = rss_bytes(process_tree(root_pid))
        self.extra_pids = extra() if extra else []
        self.extra_seen = set(self.extra_pids)
        self.extra_baseline = self.extra_peak = rss_bytes(self.extra_pids, "RssAnon")
        self._stop_event = threading.Event()
        self._samples = 0

    def sample(self) -> None:
        self.peak = max(self.peak, rss_bytes(process_tree(self.root_pid)))
        if self.extra:
            self._samples += 1
            if self._samples % 10 == 0:
                self.extra_pids = self.extra()
                self.extra_seen.update(self.extra_pids)
            self.extra_peak = max(self.extra_peak, rss_bytes(self.extra_pids, "RssAnon"))

    def run(self) -> None:
        while not self._stop_event.wait(0.01):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        if self.extra:
            self.extra_pids = self.extra()
            self.extra_seen.update(self.extra_pids)
        self.sample()


# An asyncio HTTP/1.1 client ------------------------------------------------------------------------


class HttpClient:
    """One user: a keep-alive HTTP/1.1 connection with its cookies; sends Django's CSRF header
    when it holds a csrftoken cookie. Reads Content-Length, chunked and read-to-close bodies."""

    def __init__(self, port: int, name: str, cookies: dict[str, str] | None = None) -> None:
        self.port, self.name = port, name
        self.cookies: dict[str, str] = dict(cookies or {})
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def ready(self) -> None:
        """Reconnects if the server closed the connection after the last answer; called outside
        the timed part of a request."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            self.writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def request(self, method: str, path: str, body: bytes = b"", content_type: str = "") -> tuple[int, bytes]:
        await self.ready()
        headers = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{self.port}", "Connection: keep-alive"]
        if self.cookies:
            headers.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if "csrftoken" in self.cookies:
            headers += [f"X-CSRFToken: {self.cookies['csrftoken']}", f"Referer: http://127.0.0.1:{self.port}/"]
        if body or method in ("POST", "PUT", "PATCH"):
            headers += [f"Content-Length: {len(body)}", f"Content-Type: {content_type or 'application/json'}"]
        try:
            self.writer.write(("\r\n".join(headers) + "\r\n\r\n").encode() + body)
            return await self._response()
        except (ConnectionError, asyncio.IncompleteReadError):
            self.close()
            raise

    async def _response(self) -> tuple[int, bytes]:
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("the server closed the connection")
        status = int(status_line.split()[1])
        length, chunked, close = None, False, False
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
            elif name == "set-cookie":
                key, _, rest = value.partition("=")
                self.cookies[key] = rest.split(";", 1)[0]
            elif name == "connection" and value.lower() == "close":
                close = True
        if chunked:
            data = bytearray()
            while (size := int((await self.reader.readline()).split(b";")[0], 16)) > 0:
                data += await self.reader.readexactly(size)
                await self.reader.readline()
            while await self.reader.readline() not in (b"\r\n", b""):
                pass
            data = bytes(data)
        elif length is not None:
            data = await self.reader.readexactly(length) if length else b""
        elif close:
            data = await self.reader.read()
        else:
            data = b""
        if close:
            self.close()
        return status, data


# Our side ----------------------------------------------------------------------------------------


def our_env(database_url: str, var_dir: Path) -> dict[str, str]:
    """The environment of a production web process (DEBUG off) on a bench database."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    env.update(
        DATABASE_URL=database_url,
        DEBUG="0",
        RLHF_VAR_DIR=str(var_dir),
        ALLOWED_HOSTS="127.0.0.1,localhost",
        DJANGO_SETTINGS_MODULE="config.settings",
        WHITENOISE_USE_FINDERS="0",
        LOG_LEVEL="WARNING",
        SECRET_KEY="ls-bench-only-not-a-secret-" + "x" * 40,
    )
    return env


def prepare_database(database_url: str, fresh: bool) -> None:
    """Creates the bench database if it is missing; `fresh` drops it first."""
    import psycopg2

    base, name = database_url.rsplit("/", 1)
    admin = psycopg2.connect(base.replace("postgres://", "postgresql://", 1) + "/postgres")
    admin.autocommit = True
    with admin.cursor() as cursor:
        if fresh:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name])
        if cursor.fetchone() is None:
            cursor.execute(f'CREATE DATABASE "{name}"')
    admin.close()


def setup_django(database_url: str, var_dir: Path, fresh: bool) -> None:
    """Django on the bench database in this process; `fresh` drops and recreates it first."""
    var_dir.mkdir(parents=True, exist_ok=True)
    prepare_database(database_url, fresh)
    os.environ.update(our_env(database_url, var_dir))
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)


def _copy_text(value) -> str:
    if value is None:
        return "\\N"
    return str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def copy_rows(cursor, table: str, columns: list[str], rows) -> None:
    """COPY rows (tuples; None is NULL) into a table through a temporary file."""
    with tempfile.TemporaryFile("w+", encoding="utf-8") as buffer:
        for row in rows:
            buffer.write("\t".join(_copy_text(v) for v in row) + "\n")
        buffer.seek(0)
        cursor.copy_expert(f"COPY {table} ({', '.join(columns)}) FROM STDIN", buffer)


def database_backends() -> list[int]:
    """The PostgreSQL backends serving the bench database, other than this process's own."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        return [row[0] for row in cursor.fetchall()]


class Gunicorn:
    """gunicorn serving config.wsgi on 127.0.0.1 as docker-compose.yml runs it in production:
    3 gthread workers of 4 threads, a 600 s timeout. Idle keep-alive connections are kept 30 s
    instead of gunicorn's 2 s (in production the proxy in front holds the browsers' connections),
    so that a client that paused is not cut off between two requests."""

    def __init__(self, database_url: str, var_dir: Path, workers: int = 3, threads: int = 4) -> None:
        self.port = free_port()
        self.log_path = var_dir / "gunicorn.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(ROOT / ".venv" / "bin" / "gunicorn"),
                "config.wsgi:application",
                "--bind",
                f"127.0.0.1:{self.port}",
                "--workers",
                str(workers),
                "--worker-class",
                "gthread",
                "--threads",
                str(threads),
                "--timeout",
                "600",
                "--keep-alive",
                "30",
                "--log-level",
                "warning",
            ],
            cwd=ROOT,
            env=our_env(database_url, var_dir),
            stdout=self.log,
            stderr=self.log,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for_http(self.base + "/healthz", self.process, 60, self.log_path)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


# Label Studio's side -----------------------------------------------------------------------------

# A pairwise preference in Label Studio's labelling language: the prompt, the two responses, one
# choice among the four our annotators have, and a 1-3 strength.
LS_LABEL_CONFIG = """<View>
  <Header value="$prompt"/>
  <Text name="response_a" value="$response_a"/>
  <Text name="response_b" value="$response_b"/>
  <Choices name="choice" toName="response_a" choice="single" required="true">
    <Choice value="a"/><Choice value="b"/><Choice value="tie"/><Choice value="both_bad"/>
  </Choices>
  <Rating name="strength" toName="response_a" maxRating="3"/>
</View>"""


def ls_result(choice: str, strength: int | None) -> list[dict]:
    """An annotation's `result` for LS_LABEL_CONFIG."""
    result = [{"from_name": "choice", "to_name": "response_a", "type": "choices", "value": {"choices": [choice]}}]
    if strength is not None:
        result.append(
            {"from_name": "strength", "to_name": "response_a", "type": "rating", "value": {"rating": strength}}
        )
    return result


class LsSession:
    """A logged-in Label Studio user over urllib, for setting things up (not for timed requests)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.jar = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(self.jar))

    @property
    def cookies(self) -> dict[str, str]:
        return {cookie.name: cookie.value for cookie in self.jar}

    def form(self, path: str, fields: dict[str, str]) -> None:
        """Posts a Django form (login, sign-up) with the CSRF token of its page."""
        page = self.opener.open(self.base + path, timeout=60).read().decode()
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
        fields = dict(fields, csrfmiddlewaretoken=token.group(1) if token else self.cookies.get("csrftoken", ""))
        request = urllib.request.Request(
            self.base + path, data=urllib.parse.urlencode(fields).encode(), headers={"Referer": self.base + path}
        )
        self.opener.open(request, timeout=60).read()
        if "sessionid" not in self.cookies:
            raise RuntimeError(f"Label Studio: {path} did not log {fields.get('email')} in")

    def api(self, method: str, path: str, body=None, timeout: float = 600):
        data = json.dumps(body).encode() if body is not None else None
        headers = {
            "Content-Type": "application/json",
            "X-CSRFToken": self.cookies.get("csrftoken", ""),
            "Referer": self.base + "/",
        }
        request = urllib.request.Request(self.base + path, data=data, method=method, headers=headers)
        try:
            with self.opener.open(request, timeout=timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"Label Studio: {method} {path}: HTTP {error.code} {error.read()[:500]!r}") from None

    def open(self, path: str, timeout: float = 1800):
        request = urllib.request.Request(self.base + path, headers={"Referer": self.base + "/"})
        return self.opener.open(request, timeout=timeout)


class LabelStudio:
    """`label-studio start` on 127.0.0.1 in a fresh scratch data folder (its SQLite database and
    media), with an admin user. Its defaults are kept, except four settings that would make it
    reach the internet: Sentry (server and browser), the PyPI version check and analytics.
    `postgres_url` (optional, not its default) puts its database in PostgreSQL instead."""

    ADMIN_EMAIL = "bench-admin@example.com"
    PASSWORD = "ls-bench-pw-12345"

    def __init__(self, data_dir: Path, fresh: bool = True, postgres_url: str | None = None) -> None:
        executable = LS_VENV / "bin" / "label-studio"
        if not executable.exists():
            raise SystemExit(
                f"Label Studio is not installed: python3 -m venv {LS_VENV} && {LS_VENV}/bin/pip install label-studio"
            )
        if fresh and data_dir.exists():
            shutil.rmtree(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir, self.port = data_dir, free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST", "VIRTUAL_ENV"))}
        env.pop("HOST", None)
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(data_dir),
            SENTRY_DSN="",
            FRONTEND_SENTRY_DSN="",
            LATEST_VERSION_CHECK="0",
            COLLECT_ANALYTICS="0",
            PATH=f"{LS_VENV / 'bin'}:{env.get('PATH', '')}",
        )
        self.postgres_url = postgres_url
        if postgres_url:
            prepare_database(postgres_url, fresh)
            parsed = urllib.parse.urlsplit(postgres_url)
            env.update(
                LABEL_STUDIO_DJANGO_DB="postgresql",
                LABEL_STUDIO_POSTGRE_NAME=parsed.path.lstrip("/"),
                LABEL_STUDIO_POSTGRE_USER=parsed.username or "postgres",
                LABEL_STUDIO_POSTGRE_PASSWORD=parsed.password or "",
                LABEL_STUDIO_POSTGRE_HOST=parsed.hostname or "127.0.0.1",
                LABEL_STUDIO_POSTGRE_PORT=str(parsed.port or 5432),
            )
        self.log_path = data_dir / "label-studio.log"
        self.log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [
                str(executable),
                "start",
                "--no-browser",
                "--internal-host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--username",
                self.ADMIN_EMAIL,
                "--password",
                self.PASSWORD,
            ],
            cwd=data_dir,
            env=env,
            stdout=self.log,
            stderr=self.log,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        wait_for_http(self.base + "/health", self.process, 300, self.log_path)
        self.database = data_dir / "label_studio.sqlite3"

    @property
    def database_name(self) -> str:
        return f"PostgreSQL ({self.postgres_url.rsplit('/', 1)[1]})" if self.postgres_url else "SQLite"

    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        """Reads its database directly (SQLite read-only), for the counts after a run; `sql` uses
        %s placeholders."""
        if self.postgres_url:
            import psycopg2

            connection = psycopg2.connect(self.postgres_url.replace("postgres://", "postgresql://", 1))
            try:
                with connection.cursor() as cursor:
                    cursor.execute(sql, params)
                    return cursor.fetchall()
            finally:
                connection.close()
        return sqlite_query(self.database, sql.replace("%s", "?"), params)

    def admin(self) -> LsSession:
        session = LsSession(self.base)
        session.form("/user/login/", {"email": self.ADMIN_EMAIL, "password": self.PASSWORD})
        return session

    def sign_up(self, email: str) -> LsSession:
        """A new user through Label Studio's sign-up page; it joins the organization, logged in."""
        session = LsSession(self.base)
        session.form("/user/signup/", {"email": email, "password": self.PASSWORD})
        return session

    def version(self) -> str:
        import importlib.metadata

        paths = [str(p) for p in (LS_VENV / "lib").glob("python*/site-packages")]
        found = next(importlib.metadata.distributions(name="label-studio", path=paths), None)
        return found.version if found else "?"

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def ls_create_project(admin: LsSession, title: str, overlap: int) -> int:
    project = admin.api(
        "POST", "/api/projects", {"title": title, "label_config": LS_LABEL_CONFIG, "maximum_annotations": overlap}
    )
    return project["id"]


def ls_import(admin: LsSession, project_id: int, tasks: list[dict], batch: int) -> tuple[int, int]:
    """Imports tasks (with any inline annotations) through the import API, `batch` tasks a
    request; returns the tasks and annotations Label Studio says it created."""
    n_tasks = n_annotations = 0
    for start in range(0, len(tasks), batch):
        answer = admin.api("POST", f"/api/projects/{project_id}/import", tasks[start : start + batch])
        n_tasks += answer["task_count"]
        n_annotations += answer["annotation_count"]
    return n_tasks, n_annotations


def sqlite_query(database: Path, sql: str, params: tuple = ()) -> list[tuple]:
    """Reads Label Studio's SQLite file directly (read-only), for the counts after a run."""
    import sqlite3

    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def json_bytes(value) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode()
