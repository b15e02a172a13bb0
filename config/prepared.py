"""Server-side prepared statements for the labelling hot path (PostgreSQL).

The queue's statements are small: PostgreSQL spends longer planning each (0.1-0.2 ms) than running
it (0.02-0.1 ms), and a "next" request runs about eight of them. psycopg2 sends every statement as
text to be parsed and planned anew, so the statements that run on every request are prepared once
per database connection (`PREPARE name AS ...`) and then run as `EXECUTE name (...)`, which reuses
the plan. A prepared statement lives as long as the connection; the names prepared on one are
remembered on Django's connection wrapper beside the driver connection they belong to, so a new
connection (after a reconnect) prepares them again.

SQL is written with psycopg2's placeholders (`%s` or `%(name)s`), as for cursor.execute; every
parameter must be where PostgreSQL can tell its type (compared with a column, inserted into one).
On other databases (SQLite) the statement runs as it is written.

Not for a connection pooler in transaction mode (PgBouncer's default), which hands a session's
prepared statements to other clients' transactions; the same holds for Django's own
server_side_binding option.
"""

from __future__ import annotations

import functools
import re

from django.db import DEFAULT_DB_ALIAS, connections

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%s")
_STATE = "_rlhf_prepared"


@functools.lru_cache(maxsize=64)
def _numbered(sql: str) -> tuple[str, tuple[str, ...] | int]:
    """`sql` with its placeholders as $1, $2, ...: for named ones, the names in $ order; for
    positional ones, how many there are."""
    names: list[str] = []
    count = 0

    def number(match: re.Match) -> str:
        nonlocal count
        name = match.group(1)
        if name is None:
            count += 1
            return f"${count}"
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    text = _PLACEHOLDER.sub(number, sql)
    if names and count:
        raise ValueError("a statement uses named or positional placeholders, not both")
    return text, tuple(names) if names else count


def statement(name: str, sql: str, params, *, using: str = DEFAULT_DB_ALIAS) -> tuple[str, list]:
    """The SQL and parameters to run in place of (sql, params): on PostgreSQL `EXECUTE name (...)`,
    preparing `sql` as `name` on this connection first if it was not yet. `name` must be unique to
    `sql`."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return sql, params
    connection.ensure_connection()
    raw = connection.connection
    state = getattr(connection, _STATE, None)
    if state is None or state[0] is not raw:
        state = (raw, set())
        setattr(connection, _STATE, state)
    text, shape = _numbered(sql)
    if name not in state[1]:
        with connection.cursor() as cursor:
            # No parameters: psycopg2 leaves the text alone, so "%%" would reach the server as is.
            cursor.execute(f"PREPARE {name} AS {text.replace('%%', '%')}")
        state[1].add(name)
    values = [params[key] for key in shape] if isinstance(shape, tuple) else list(params)
    if not isinstance(shape, tuple) and len(values) != shape:
        raise ValueError(f"{name} takes {shape} parameters, {len(values)} given")
    if not values:
        return f"EXECUTE {name}", []
    return f"EXECUTE {name} ({', '.join(['%s'] * len(values))})", values


def execute(cursor, name: str, sql: str, params, *, using: str = DEFAULT_DB_ALIAS) -> None:
    """cursor.execute(sql, params), as the prepared statement `name` on PostgreSQL; `cursor` is one
    of the connection `using`."""
    cursor.execute(*statement(name, sql, params, using=using))
