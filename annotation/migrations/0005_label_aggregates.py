"""Label aggregates kept by the database, so that the admin console reads counters instead of
scanning a project's labels (issue 7: every figure stays fast at 1,000,000 preferences).

Six tables, written only by the triggers below, whatever writes the rows (the queue, an import, the
API, a psql session):

- annotation_stats_annotator_day: per project, annotator and UTC day, the annotator's labels by
  choice, left choices among A/B labels shown with a known side, time spent, gold labels and how
  many matched the gold answer. Throughput, position bias, tie and both-bad rates, gold accuracy
  and the labels-per-day chart are sums over it.
- annotation_stats_annotator_hour: labels per project, UTC hour and annotator, for the partial
  days at the ends of the console's rolling windows (last 24 hours, last 7 days).
- annotation_stats_project_day: prompts, responses and comparisons created per project and UTC day
  (and writer, see below).
- annotation_stats_comparison: per labelled comparison, the count of each choice (the policy win
  rates and the disagreements read a comparison's label split from it).
- annotation_stats_units: comparisons grouped by their number of labels m and gold flag, with the
  sums Krippendorff's alpha needs (labels of each choice, and sum over choices of n (n - 1)). The
  queue figures and alpha are sums over a few rows per annotator, whatever the number of
  comparisons. A comparison that moves from m to m + 1 labels is moved by the label that moved it,
  in rows keyed by that label's annotator (for moves that no label made — a new or deleted
  comparison, a change of its gold flag — by the writer, see below), so a row may hold negative
  counts; the sums over the rows are the true ones.
- annotation_stats_agreement: per project and pair of annotators, the comparisons both labelled
  (shared) and those where they chose the same (agreeing), keyed (annotator of the earlier label,
  annotator of the later one). An annotator's agreement with the others is the sum of the rows they
  appear in.

Every row a label writes is keyed by that label's annotator, so labellers never wait on each
other's counters; the per-comparison row is written after the lock the queue already holds on the
comparison. Rows that no annotator owns are keyed by their writer, the database backend (its
process id, negated), so two transactions adding prompts or comparisons to one project at once (an
import and a generation run, say) do not wait for each other's commit; readers sum over writers. On PostgreSQL the triggers on inserts and deletes run once per statement over its
transition tables, so an import of a million labels adds one grouped write per table, not a
million; updates of labels (the app never changes one; psql may) are handled the same way. On
SQLite (the embedded default) they are row triggers. A row whose counters are all back to zero is
deleted. Day and hour buckets are UTC (settings.TIME_ZONE is UTC).
"""

from __future__ import annotations

from django.db import migrations

TABLES = [
    """CREATE TABLE annotation_stats_annotator_day (
        project_id bigint NOT NULL,
        annotator_id bigint NOT NULL,
        day date NOT NULL,
        labels bigint NOT NULL DEFAULT 0,
        n_a bigint NOT NULL DEFAULT 0,
        n_b bigint NOT NULL DEFAULT 0,
        n_tie bigint NOT NULL DEFAULT 0,
        n_both_bad bigint NOT NULL DEFAULT 0,
        n_left bigint NOT NULL DEFAULT 0,
        n_sided bigint NOT NULL DEFAULT 0,
        time_ms bigint NOT NULL DEFAULT 0,
        n_timed bigint NOT NULL DEFAULT 0,
        gold_labels bigint NOT NULL DEFAULT 0,
        gold_correct bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, annotator_id, day)
    )""",
    # Keyed by hour first: the console reads a project's hours in a range, for every annotator.
    """CREATE TABLE annotation_stats_annotator_hour (
        project_id bigint NOT NULL,
        hour timestamp NOT NULL,
        annotator_id bigint NOT NULL,
        labels bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, hour, annotator_id)
    )""",
    """CREATE TABLE annotation_stats_project_day (
        project_id bigint NOT NULL,
        day date NOT NULL,
        writer bigint NOT NULL DEFAULT 0,
        prompts bigint NOT NULL DEFAULT 0,
        responses bigint NOT NULL DEFAULT 0,
        comparisons bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, day, writer)
    )""",
    """CREATE TABLE annotation_stats_comparison (
        comparison_id bigint PRIMARY KEY,
        project_id bigint NOT NULL,
        n_a integer NOT NULL DEFAULT 0,
        n_b integer NOT NULL DEFAULT 0,
        n_tie integer NOT NULL DEFAULT 0,
        n_both_bad integer NOT NULL DEFAULT 0
    )""",
    """CREATE TABLE annotation_stats_units (
        project_id bigint NOT NULL,
        annotator_id bigint NOT NULL,
        is_gold boolean NOT NULL,
        m bigint NOT NULL,
        comparisons bigint NOT NULL DEFAULT 0,
        n_a bigint NOT NULL DEFAULT 0,
        n_b bigint NOT NULL DEFAULT 0,
        n_tie bigint NOT NULL DEFAULT 0,
        n_both_bad bigint NOT NULL DEFAULT 0,
        same bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, annotator_id, is_gold, m)
    )""",
    """CREATE TABLE annotation_stats_agreement (
        project_id bigint NOT NULL,
        first_annotator_id bigint NOT NULL,
        second_annotator_id bigint NOT NULL,
        shared bigint NOT NULL DEFAULT 0,
        agreeing bigint NOT NULL DEFAULT 0,
        PRIMARY KEY (project_id, first_annotator_id, second_annotator_id)
    )""",
    # The policy win rates: one project's labelled comparisons.
    "CREATE INDEX annotation_stats_comparison_project ON annotation_stats_comparison (project_id)",
    # The dashboard's "live leases": a project's leased assignments by expiry. Submitted and skipped
    # assignments (nearly all of them: one per label) are left out of the index.
    "CREATE INDEX assignment_live_by_project ON annotation_assignment (project_id, expires_at) WHERE status = 'leased'",
]
STATS_TABLES = [
    "annotation_stats_annotator_day",
    "annotation_stats_annotator_hour",
    "annotation_stats_project_day",
    "annotation_stats_comparison",
    "annotation_stats_units",
    "annotation_stats_agreement",
]

DAY_COUNTERS = [
    "labels",
    "n_a",
    "n_b",
    "n_tie",
    "n_both_bad",
    "n_left",
    "n_sided",
    "time_ms",
    "n_timed",
    "gold_labels",
    "gold_correct",
]
CHOICE_COUNTS = ["n_a", "n_b", "n_tie", "n_both_bad"]
UNIT_COUNTERS = ["comparisons", *CHOICE_COUNTS, "same"]
PREF_COLUMNS = [
    "id",
    "project_id",
    "comparison_id",
    "annotator_id",
    "choice",
    "shown_left",
    "time_spent_ms",
    "created_at",
]


def day_counter_terms(p: str, c: str, bit) -> list[str]:
    """What one label row `p` adds to each DAY_COUNTERS column; `c` is its comparison (LEFT JOINed,
    so NULL-safe) and `bit` turns a condition into 0 or 1 in the vendor's dialect."""
    return [
        "1",
        bit(f"{p}.choice = 'a'"),
        bit(f"{p}.choice = 'b'"),
        bit(f"{p}.choice = 'tie'"),
        bit(f"{p}.choice = 'both_bad'"),
        bit(f"({p}.choice = 'a' AND {p}.shown_left = 'a') OR ({p}.choice = 'b' AND {p}.shown_left = 'b')"),
        bit(f"{p}.choice IN ('a', 'b') AND {p}.shown_left IN ('a', 'b')"),
        f"COALESCE({p}.time_spent_ms, 0)",
        bit(f"{p}.time_spent_ms IS NOT NULL"),
        bit(f"{c}.is_gold"),
        bit(f"{c}.is_gold AND {p}.choice = {c}.gold_choice"),
    ]


def same_expr(prefix: str) -> str:
    """sum over choices of n (n - 1), for counts named {prefix}n_a etc."""
    return " + ".join(f"{prefix}{n} * ({prefix}{n} - 1)" for n in CHOICE_COUNTS)


def case_bit(condition: str) -> str:
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


# PostgreSQL ----------------------------------------------------------------------------------------

PG_DAY = "({}created_at AT TIME ZONE 'UTC')::date"
PG_HOUR = "date_trunc('hour', {}created_at AT TIME ZONE 'UTC')"
KEY_TYPES = {"day": "date", "hour": "timestamp", "is_gold": "boolean"}
# A big import groups and joins hundreds of thousands of rows in these functions; with the default
# 4 MB they spill to disk. The setting holds only while the function runs.
FUNCTION_SETTINGS = "SET work_mem = '32MB'"
# The writer of rows that no annotator owns (per-day counts of new prompts, responses and
# comparisons; comparisons entering or leaving the unit rows): the database backend, as a negative
# id, so that an import, a generation run and the API adding prompts to one project at once each
# write rows of their own instead of waiting for each other's commit.
PG_WRITER = "(-pg_backend_pid())::bigint"


def pg_bit(condition: str) -> str:
    return f"COALESCE(({condition})::int, 0)"


def _pg_delta(event: str) -> list[str]:
    """CTEs naming the label rows a statement changed, in `delta`, each with +1 (the row as it is
    now) or -1 (as it was). An UPDATE that changes no counted column (a rationale) yields none.
    (Joins and EXISTS throughout: an IN (subquery) that PostgreSQL cannot turn into a join is
    looked up row by row once the subquery outgrows work_mem, which on a large import is
    quadratic.)"""
    columns = ", ".join(PREF_COLUMNS)
    if event == "INSERT":
        return [f"delta AS (SELECT 1 AS sign, {columns} FROM new_rows)"]
    if event == "DELETE":
        return [f"delta AS (SELECT -1 AS sign, {columns} FROM old_rows)"]
    now = ", ".join(f"n.{c}" for c in PREF_COLUMNS)
    before = ", ".join(f"o.{c}" for c in PREF_COLUMNS)
    return [
        f"""changed_ids AS (
            SELECT n.id FROM new_rows n LEFT JOIN old_rows o ON o.id = n.id
             WHERE o.id IS NULL OR ({now}) IS DISTINCT FROM ({before})
            UNION SELECT o.id FROM old_rows o WHERE NOT EXISTS (SELECT 1 FROM new_rows n WHERE n.id = o.id))""",
        f"""delta AS (
            SELECT 1 AS sign, {", ".join(f"n.{c}" for c in PREF_COLUMNS)} FROM new_rows n JOIN changed_ids USING (id)
            UNION ALL
            SELECT -1 AS sign, {", ".join(f"o.{c}" for c in PREF_COLUMNS)} FROM old_rows o JOIN changed_ids USING (id))""",
    ]


def _pg_upsert(
    event: str, ctes: list[str], table: str, key: list[str], counters: list[str], select: str, extra=()
) -> str:
    """Adds grouped deltas (`select` yields key, extra, counters) to `table`. After a delete or an
    update, which can bring a row back to zero, the rows left at zero are deleted; the upsert
    returns their keys into arrays declared by `_pg_declarations`."""
    columns = [*key, *extra, *counters]
    upsert = (
        f"INSERT INTO {table} AS s ({', '.join(columns)}) {select} "
        f"ON CONFLICT ({', '.join(key)}) DO UPDATE SET " + ", ".join(f"{c} = s.{c} + EXCLUDED.{c}" for c in counters)
    )
    if event == "INSERT":
        return f"WITH {', '.join(ctes)} {upsert};"
    returning = ", ".join(f"s.{c}" for c in key + counters)
    arrays = [f"zero_{table}_{k}" for k in key]
    all_zero = " AND ".join(f"{c} = 0" for c in counters)
    return (
        f"WITH {', '.join([*ctes, f'upserted AS ({upsert} RETURNING {returning})'])} "
        f"SELECT {', '.join(f'array_agg({k})' for k in key)} INTO {', '.join(arrays)} FROM upserted WHERE {all_zero}; "
        f"IF {arrays[0]} IS NOT NULL THEN DELETE FROM {table} s USING unnest({', '.join(arrays)}) AS z({', '.join(key)}) "
        f"WHERE {' AND '.join(f's.{k} = z.{k}' for k in key)} AND {' AND '.join(f's.{c} = 0' for c in counters)}; END IF;"
    )


def _pg_declarations() -> str:
    declared = [f"zero_{table}_{k} {KEY_TYPES.get(k, 'bigint')}[];" for table, key in STATS_KEYS.items() for k in key]
    return "DECLARE " + " ".join(declared)


STATS_KEYS = {
    "annotation_stats_annotator_day": ["project_id", "annotator_id", "day"],
    "annotation_stats_project_day": ["project_id", "day", "writer"],
    "annotation_stats_annotator_hour": ["project_id", "hour", "annotator_id"],
    "annotation_stats_units": ["project_id", "annotator_id", "is_gold", "m"],
    "annotation_stats_comparison": ["comparison_id"],
    "annotation_stats_agreement": ["project_id", "first_annotator_id", "second_annotator_id"],
}


def _pg_pairs(event: str) -> list[str]:
    """CTEs ending in `pairs`: the pairs of labels on one comparison that involve a changed label,
    as (earlier, later) by id, each with +1 when the pair exists now and -1 when it existed before
    the statement. A label is marked changed by joining it to `delta`."""
    touched = "touched AS (SELECT DISTINCT comparison_id FROM delta)"
    ids = "changed AS (SELECT DISTINCT id FROM delta)"
    current = (
        "SELECT p.id, p.project_id, p.comparison_id, p.annotator_id, p.choice, (c.id IS NOT NULL) AS changed "
        "FROM annotation_preference p JOIN touched t ON t.comparison_id = p.comparison_id "
        "LEFT JOIN changed c ON c.id = p.id"
    )
    old = "SELECT o.id, o.project_id, o.comparison_id, o.annotator_id, o.choice, true FROM old_rows o"
    states = {
        "INSERT": [("now_rows", 1, current)],
        "DELETE": [("before_rows", -1, f"{current} UNION ALL {old}")],
        "UPDATE": [
            ("now_rows", 1, current),
            # Before: the labels the statement did not change, and the changed ones as they were.
            ("before_rows", -1, f"{current} WHERE c.id IS NULL UNION ALL {old} JOIN changed_ids USING (id)"),
        ],
    }[event]
    ctes = [touched, ids]
    selects = []
    for name, sign, rows in states:
        ctes.append(f"{name} AS ({rows})")
        # Each changed label c with every other label o of its comparison; a pair of two changed
        # labels is taken once, from its earlier label. Driving the join from the changed labels
        # keeps it to (changed labels x labels per comparison) rows.
        selects.append(
            f"""SELECT {sign} AS sign, c.project_id,
                       CASE WHEN c.id < o.id THEN c.annotator_id ELSE o.annotator_id END AS first_id,
                       CASE WHEN c.id < o.id THEN o.annotator_id ELSE c.annotator_id END AS second_id,
                       (c.choice = o.choice)::int AS agree
                  FROM {name} c JOIN {name} o ON o.comparison_id = c.comparison_id AND o.id <> c.id
                 WHERE c.changed AND (NOT o.changed OR c.id < o.id)"""
        )
    return [*ctes, f"pairs AS ({' UNION ALL '.join(selects)})"]


def _pg_unit_moves(source: str) -> list[str]:
    """CTEs that turn `source` — per comparison: project_id, annotator_id (whose row records the
    move), is_gold, its counts before (o_n_a ...) and after (w_n_a ...) — into `moves`: -1 unit at
    its old m, +1 at its new m."""
    before = " + ".join(f"o_{n}" for n in CHOICE_COUNTS)
    after = " + ".join(f"w_{n}" for n in CHOICE_COUNTS)
    return [
        f"""moves AS (
            SELECT project_id, annotator_id, is_gold, {before} AS m, -1 AS comparisons,
                   {", ".join(f"-o_{n} AS {n}" for n in CHOICE_COUNTS)}, -({same_expr("o_")}) AS same FROM {source}
            UNION ALL
            SELECT project_id, annotator_id, is_gold, {after}, 1,
                   {", ".join(f"w_{n}" for n in CHOICE_COUNTS)}, {same_expr("w_")} FROM {source})"""
    ]


UNITS_GROUPED = (
    f"SELECT project_id, annotator_id, is_gold, m, {', '.join(f'SUM({c})' for c in UNIT_COUNTERS)} FROM moves "
    f"GROUP BY 1, 2, 3, 4 HAVING {' OR '.join(f'SUM({c}) <> 0' for c in UNIT_COUNTERS)} ORDER BY 1, 2, 3, 4"
)


def _pg_preference_function(event: str) -> str:
    delta = _pg_delta(event)
    choice = [f"(d.choice = '{c}')::int" for c in ("a", "b", "tie", "both_bad")]
    day_sums = ", ".join(f"SUM(d.sign * {t})" for t in day_counter_terms("d", "c", pg_bit))
    # Each comparison's move between unit rows reads its counts as they were: this runs before the
    # per-comparison counts change. The move is recorded under the annotator of the changed label
    # (the lowest id when a statement changed several labels of one comparison).
    unit_ctes = [
        f"""per_unit AS (
            SELECT d.comparison_id, MIN(d.project_id) AS project_id, MIN(d.annotator_id) AS annotator_id,
                   {", ".join(f"SUM(d.sign * {t}) AS d_{n}" for t, n in zip(choice, CHOICE_COUNTS, strict=True))}
              FROM delta d GROUP BY d.comparison_id)""",
        f"""moved AS (
            SELECT u.project_id, u.annotator_id, COALESCE(c.is_gold, false) AS is_gold,
                   {", ".join(f"COALESCE(s.{n}, 0) AS o_{n}" for n in CHOICE_COUNTS)},
                   {", ".join(f"COALESCE(s.{n}, 0) + u.d_{n} AS w_{n}" for n in CHOICE_COUNTS)}
              FROM per_unit u
              LEFT JOIN annotation_stats_comparison s ON s.comparison_id = u.comparison_id
              LEFT JOIN annotation_comparison c ON c.id = u.comparison_id)""",
        *_pg_unit_moves("moved"),
    ]
    body = [
        _pg_upsert(
            event,
            delta,
            "annotation_stats_annotator_day",
            STATS_KEYS["annotation_stats_annotator_day"],
            DAY_COUNTERS,
            f"SELECT d.project_id, d.annotator_id, {PG_DAY.format('d.')}, {day_sums} FROM delta d "
            "LEFT JOIN annotation_comparison c ON c.id = d.comparison_id GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
        _pg_upsert(
            event,
            delta,
            "annotation_stats_annotator_hour",
            STATS_KEYS["annotation_stats_annotator_hour"],
            ["labels"],
            f"SELECT d.project_id, {PG_HOUR.format('d.')}, d.annotator_id, SUM(d.sign) FROM delta d "
            "GROUP BY 1, 2, 3 ORDER BY 1, 2, 3",
        ),
        _pg_upsert(
            event,
            delta + unit_ctes,
            "annotation_stats_units",
            STATS_KEYS["annotation_stats_units"],
            UNIT_COUNTERS,
            UNITS_GROUPED,
        ),
        _pg_upsert(
            event,
            delta,
            "annotation_stats_comparison",
            ["comparison_id"],
            CHOICE_COUNTS,
            f"SELECT d.comparison_id, MIN(d.project_id), {', '.join(f'SUM(d.sign * {t})' for t in choice)} "
            "FROM delta d GROUP BY 1 ORDER BY 1",
            extra=["project_id"],
        ),
        _pg_upsert(
            event,
            [*delta, *_pg_pairs(event)],
            "annotation_stats_agreement",
            STATS_KEYS["annotation_stats_agreement"],
            ["shared", "agreeing"],
            "SELECT project_id, first_id, second_id, SUM(sign), SUM(sign * agree) FROM pairs GROUP BY 1, 2, 3 "
            "HAVING SUM(sign) <> 0 OR SUM(sign * agree) <> 0 ORDER BY 1, 2, 3",
        ),
    ]
    return (
        f"CREATE FUNCTION annotation_stats_preference_{event.lower()}() RETURNS trigger AS $$ "
        f"{_pg_declarations()} BEGIN {' '.join(body)} RETURN NULL; END $$ LANGUAGE plpgsql {FUNCTION_SETTINGS}"
    )


# Prompts, responses and comparisons per day: (table, counter, project of row r, join that gives it).
CREATED = [
    ("annotation_prompt", "prompts", "r.project_id", ""),
    ("annotation_response", "responses", "q.project_id", "JOIN annotation_prompt q ON q.id = r.prompt_id"),
    ("annotation_comparison", "comparisons", "r.project_id", ""),
]
# The columns whose change moves a row to another bucket.
CREATED_MOVES = {
    "annotation_prompt": ["created_at", "project_id"],
    "annotation_response": ["created_at", "prompt_id"],
    "annotation_comparison": ["created_at", "project_id"],
}
PROJECT_DAY = ["prompts", "responses", "comparisons"]


def _pg_created_functions() -> list[str]:
    statements = []
    key = STATS_KEYS["annotation_stats_project_day"]
    for table, counter, project, join in CREATED:
        for event, rows, sign in (("insert", "new_rows", "1"), ("delete", "old_rows", "-1")):
            body = [
                _pg_upsert(
                    event.upper(),
                    [f"changed AS (SELECT * FROM {rows})"],
                    "annotation_stats_project_day",
                    key,
                    PROJECT_DAY,
                    f"SELECT {project}, {PG_DAY.format('r.')}, {PG_WRITER}, "
                    + ", ".join(f"{sign} * COUNT(*)" if c == counter else "0" for c in PROJECT_DAY)
                    + f" FROM changed r {join} GROUP BY 1, 2 ORDER BY 1, 2",
                )
            ]
            if table == "annotation_comparison":
                # A new comparison joins the unit rows with no label; a deleted one leaves them with
                # the labels it has then (none, when Django deleted its labels first).
                counts = {n: "0" if event == "insert" else f"COALESCE(k.{n}, 0)" for n in CHOICE_COUNTS}
                m = " + ".join(counts.values())
                same = " + ".join(f"{v} * ({v} - 1)" for v in counts.values())
                body.append(
                    _pg_upsert(
                        event.upper(),
                        [f"changed AS (SELECT * FROM {rows})"],
                        "annotation_stats_units",
                        STATS_KEYS["annotation_stats_units"],
                        UNIT_COUNTERS,
                        f"SELECT r.project_id, {PG_WRITER}, r.is_gold, {m}, {sign} * COUNT(*), "
                        + ", ".join(f"{sign} * SUM({v})" for v in counts.values())
                        + f", {sign} * SUM({same}) FROM changed r "
                        + "LEFT JOIN annotation_stats_comparison k ON k.comparison_id = r.id "
                        + "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4",
                    )
                )
            statements.append(
                f"CREATE FUNCTION {table}_stats_{event}() RETURNS trigger AS $$ {_pg_declarations()} "
                f"BEGIN {' '.join(body)} RETURN NULL; END $$ LANGUAGE plpgsql {FUNCTION_SETTINGS}"
            )
        # Moving a row between days or projects (psql only): one row at a time.
        old_project = project.replace("r.", "OLD.").replace("q.", "oq.")
        new_project = project.replace("r.", "NEW.").replace("q.", "nq.")
        old_from = "FROM annotation_prompt oq WHERE oq.id = OLD.prompt_id" if join else ""
        new_from = "FROM annotation_prompt nq WHERE nq.id = NEW.prompt_id" if join else ""
        zero = " AND ".join(f"{c} = 0" for c in PROJECT_DAY)
        move = " ".join(
            f"INSERT INTO annotation_stats_project_day AS s (project_id, day, writer, {counter}) "
            f"SELECT {proj}, {PG_DAY.format(row + '.')}, {PG_WRITER}, {sign} {source} "
            f"ON CONFLICT (project_id, day, writer) DO UPDATE SET {counter} = s.{counter} + EXCLUDED.{counter};"
            for proj, row, sign, source in ((old_project, "OLD", -1, old_from), (new_project, "NEW", 1, new_from))
        )
        move += f" DELETE FROM annotation_stats_project_day WHERE {zero};"
        statements.append(
            f"CREATE FUNCTION {table}_stats_move() RETURNS trigger AS $$ BEGIN {move} RETURN NULL; END $$ "
            "LANGUAGE plpgsql"
        )
    return statements


# A comparison made gold (or given another answer) after it was labelled: its labels move between
# the gold counters of their annotators' days, and the comparison between unit rows.
PG_GOLD_FUNCTION = f"""
CREATE FUNCTION annotation_comparison_stats_gold() RETURNS trigger AS $$
DECLARE {" ".join(f"v_{n} bigint;" for n in CHOICE_COUNTS)}
BEGIN
    INSERT INTO annotation_stats_annotator_day AS s (project_id, annotator_id, day, gold_labels, gold_correct)
    SELECT p.project_id, p.annotator_id, {PG_DAY.format("p.")},
           SUM(NEW.is_gold::int - OLD.is_gold::int),
           SUM((NEW.is_gold AND p.choice = NEW.gold_choice)::int - (OLD.is_gold AND p.choice = OLD.gold_choice)::int)
      FROM annotation_preference p WHERE p.comparison_id = NEW.id
     GROUP BY 1, 2, 3 ORDER BY 1, 2, 3
    ON CONFLICT (project_id, annotator_id, day) DO UPDATE
       SET gold_labels = s.gold_labels + EXCLUDED.gold_labels, gold_correct = s.gold_correct + EXCLUDED.gold_correct;
    IF OLD.is_gold IS DISTINCT FROM NEW.is_gold THEN
        SELECT {", ".join(f"COALESCE(MAX({n}), 0)" for n in CHOICE_COUNTS)}
          INTO {", ".join(f"v_{n}" for n in CHOICE_COUNTS)}
          FROM annotation_stats_comparison WHERE comparison_id = NEW.id;
        INSERT INTO annotation_stats_units AS s (project_id, annotator_id, is_gold, m, {", ".join(UNIT_COUNTERS)})
        SELECT NEW.project_id, {PG_WRITER}, g.is_gold, {" + ".join(f"v_{n}" for n in CHOICE_COUNTS)}, g.sign,
               {", ".join(f"g.sign * v_{n}" for n in CHOICE_COUNTS)}, g.sign * ({same_expr("v_")})
          FROM (VALUES (OLD.is_gold, -1), (NEW.is_gold, 1)) AS g(is_gold, sign)
         ORDER BY g.is_gold
        ON CONFLICT (project_id, annotator_id, is_gold, m) DO UPDATE SET
           {", ".join(f"{c} = s.{c} + EXCLUDED.{c}" for c in UNIT_COUNTERS)};
        DELETE FROM annotation_stats_units
         WHERE project_id = NEW.project_id AND annotator_id = {PG_WRITER}
           AND {" AND ".join(f"{c} = 0" for c in UNIT_COUNTERS)};
    END IF;
    RETURN NULL;
END $$ LANGUAGE plpgsql"""

PG_PROJECT_FUNCTION = f"""
CREATE FUNCTION annotation_project_stats_delete() RETURNS trigger AS $$ BEGIN
    {" ".join(f"DELETE FROM {t} WHERE project_id = OLD.id;" for t in STATS_TABLES)}
    RETURN NULL;
END $$ LANGUAGE plpgsql"""


TRUNCATED = [
    "annotation_project",
    "annotation_prompt",
    "annotation_response",
    "annotation_comparison",
    "annotation_preference",
]


def _pg_install(schema_editor) -> None:
    run = schema_editor.execute
    for event in ("INSERT", "UPDATE", "DELETE"):
        run(_pg_preference_function(event))
        tables = {"INSERT": "NEW TABLE AS new_rows", "DELETE": "OLD TABLE AS old_rows"}.get(
            event, "OLD TABLE AS old_rows NEW TABLE AS new_rows"
        )
        run(
            f"CREATE TRIGGER preference_stats_{event.lower()} AFTER {event} ON annotation_preference "
            f"REFERENCING {tables} FOR EACH STATEMENT EXECUTE FUNCTION annotation_stats_preference_{event.lower()}()"
        )
    for statement in _pg_created_functions():
        run(statement)
    for table, *_ in CREATED:
        for event, rows in (("insert", "NEW TABLE AS new_rows"), ("delete", "OLD TABLE AS old_rows")):
            run(
                f"CREATE TRIGGER {table}_stats_{event} AFTER {event.upper()} ON {table} REFERENCING {rows} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {table}_stats_{event}()"
            )
        moves = CREATED_MOVES[table]
        changed = " OR ".join(f"OLD.{c} IS DISTINCT FROM NEW.{c}" for c in moves)
        run(
            f"CREATE TRIGGER {table}_stats_move AFTER UPDATE OF {', '.join(moves)} ON {table} FOR EACH ROW "
            f"WHEN ({changed}) EXECUTE FUNCTION {table}_stats_move()"
        )
    run(PG_GOLD_FUNCTION)
    # A row trigger: what it changes depends only on its own row and the comparison's labels, which
    # the statement does not change. The column list keeps it off the queue's label_count updates.
    run(
        "CREATE TRIGGER comparison_stats_gold AFTER UPDATE OF is_gold, gold_choice ON annotation_comparison "
        "FOR EACH ROW WHEN (OLD.is_gold IS DISTINCT FROM NEW.is_gold OR OLD.gold_choice IS DISTINCT FROM "
        "NEW.gold_choice) EXECUTE FUNCTION annotation_comparison_stats_gold()"
    )
    run(PG_PROJECT_FUNCTION)
    run(
        "CREATE TRIGGER project_stats_delete AFTER DELETE ON annotation_project FOR EACH ROW "
        "EXECUTE FUNCTION annotation_project_stats_delete()"
    )
    # TRUNCATE fires no row or delete triggers (Django's test flush uses it, and so may an operator):
    # after one, the aggregates are counted again from what is left.
    refill = " ".join(
        f"INSERT INTO {table} ({columns}) {select};" for table, columns, select in backfill_selects("postgresql")
    )
    run(
        "CREATE FUNCTION annotation_stats_rebuild() RETURNS trigger AS $$ BEGIN "
        f"TRUNCATE {', '.join(STATS_TABLES)}; {refill} RETURN NULL; END $$ LANGUAGE plpgsql {FUNCTION_SETTINGS}"
    )
    for table in TRUNCATED:
        run(
            f"CREATE TRIGGER {table}_stats_truncate AFTER TRUNCATE ON {table} FOR EACH STATEMENT "
            "EXECUTE FUNCTION annotation_stats_rebuild()"
        )


def _pg_remove(schema_editor) -> None:
    run = schema_editor.execute
    for event in ("insert", "update", "delete"):
        run(f"DROP TRIGGER IF EXISTS preference_stats_{event} ON annotation_preference")
        run(f"DROP FUNCTION IF EXISTS annotation_stats_preference_{event}()")
    for table, *_ in CREATED:
        for suffix in ("insert", "delete", "move"):
            run(f"DROP TRIGGER IF EXISTS {table}_stats_{suffix} ON {table}")
            run(f"DROP FUNCTION IF EXISTS {table}_stats_{suffix}()")
    run("DROP TRIGGER IF EXISTS comparison_stats_gold ON annotation_comparison")
    run("DROP FUNCTION IF EXISTS annotation_comparison_stats_gold()")
    run("DROP TRIGGER IF EXISTS project_stats_delete ON annotation_project")
    run("DROP FUNCTION IF EXISTS annotation_project_stats_delete()")
    for table in TRUNCATED:
        run(f"DROP TRIGGER IF EXISTS {table}_stats_truncate ON {table}")
    run("DROP FUNCTION IF EXISTS annotation_stats_rebuild()")


# SQLite: row triggers, one label at a time ----------------------------------------------------------

SQLITE_DAY = "date({}created_at)"
SQLITE_HOUR = "strftime('%Y-%m-%d %H:00:00', {}created_at)"


def sqlite_bit(condition: str) -> str:
    return f"COALESCE(({condition}), 0)"


def _sqlite_add(table: str, key: dict[str, str], changes: dict[str, str], cleanup: bool) -> list[str]:
    """Adds `changes` (column -> expression) to the row of `table` with `key` (column -> value),
    creating it first; with `cleanup`, deletes it when every counter is back at zero."""
    where = " AND ".join(f"{k} = {v}" for k, v in key.items())
    steps = [
        f"INSERT OR IGNORE INTO {table} ({', '.join(key)}) VALUES ({', '.join(key.values())})",
        f"UPDATE {table} SET {', '.join(f'{c} = {c} + {e}' for c, e in changes.items())} WHERE {where}",
    ]
    if cleanup:
        steps.append(f"DELETE FROM {table} WHERE {where} AND {' AND '.join(f'{c} = 0' for c in changes)}")
    return steps


def _sqlite_label_steps(row: str, sign: int, other_ids: str) -> list[str]:
    """Statements that add (sign 1) or remove (sign -1) one label row `row` (NEW or OLD); its
    pairs are formed with the other labels of its comparison (`other_ids` excludes the row)."""
    comparison = f"(SELECT {{}} FROM annotation_comparison WHERE id = {row}.comparison_id)"
    terms = day_counter_terms(row, "c", sqlite_bit)
    terms[-2] = f"COALESCE({comparison.format('is_gold')}, 0)"
    terms[-1] = f"COALESCE({comparison.format(f'is_gold AND gold_choice = {row}.choice')}, 0)"
    cleanup = sign < 0
    steps = _sqlite_add(
        "annotation_stats_annotator_day",
        {"project_id": f"{row}.project_id", "annotator_id": f"{row}.annotator_id", "day": SQLITE_DAY.format(row + ".")},
        {c: f"{sign} * {t}" for c, t in zip(DAY_COUNTERS, terms, strict=True)},
        cleanup,
    )
    steps += _sqlite_add(
        "annotation_stats_annotator_hour",
        {
            "project_id": f"{row}.project_id",
            "hour": SQLITE_HOUR.format(row + "."),
            "annotator_id": f"{row}.annotator_id",
        },
        {"labels": str(sign)},
        cleanup,
    )
    # The comparison moves between unit rows; its counts before come from the per-comparison row,
    # which changes after this.
    old = {
        n: f"COALESCE((SELECT {n} FROM annotation_stats_comparison WHERE comparison_id = {row}.comparison_id), 0)"
        for n in CHOICE_COUNTS
    }
    new = {
        n: f"({old[n]} + {sign} * ({row}.choice = '{c}'))"
        for n, c in zip(CHOICE_COUNTS, ("a", "b", "tie", "both_bad"), strict=True)
    }
    gold = f"COALESCE({comparison.format('is_gold')}, 0)"
    for counts, unit_sign in ((old, -1), (new, 1)):
        steps += _sqlite_add(
            "annotation_stats_units",
            {
                "project_id": f"{row}.project_id",
                "annotator_id": f"{row}.annotator_id",
                "is_gold": gold,
                "m": " + ".join(counts.values()),
            },
            {
                "comparisons": str(unit_sign),
                **{n: f"{unit_sign} * {counts[n]}" for n in CHOICE_COUNTS},
                "same": f"{unit_sign} * ({' + '.join(f'{v} * ({v} - 1)' for v in counts.values())})",
            },
            cleanup=True,
        )
    steps += _sqlite_add(
        "annotation_stats_comparison",
        {"comparison_id": f"{row}.comparison_id", "project_id": f"{row}.project_id"},
        {
            n: f"{sign} * ({row}.choice = '{c}')"
            for n, c in zip(CHOICE_COUNTS, ("a", "b", "tie", "both_bad"), strict=True)
        },
        cleanup,
    )
    others = f"FROM annotation_preference o WHERE o.comparison_id = {row}.comparison_id AND {other_ids}"
    for mine, theirs, cmp in (("second", "first", "<"), ("first", "second", ">")):
        pair = f"o.annotator_id, {row}.annotator_id" if mine == "second" else f"{row}.annotator_id, o.annotator_id"
        steps.append(
            "INSERT OR IGNORE INTO annotation_stats_agreement (project_id, first_annotator_id, second_annotator_id) "
            f"SELECT {row}.project_id, {pair} {others} AND o.id {cmp} {row}.id"
        )
        steps.append(
            f"UPDATE annotation_stats_agreement SET shared = shared + {sign}, agreeing = agreeing + {sign} * "
            f"(SELECT o.choice = {row}.choice {others} AND o.annotator_id = annotation_stats_agreement.{theirs}_annotator_id) "
            f"WHERE project_id = {row}.project_id AND {mine}_annotator_id = {row}.annotator_id "
            f"AND {theirs}_annotator_id IN (SELECT o.annotator_id {others} AND o.id {cmp} {row}.id)"
        )
    if cleanup:
        steps.append(
            f"DELETE FROM annotation_stats_agreement WHERE project_id = {row}.project_id AND shared = 0 "
            f"AND agreeing = 0 AND (first_annotator_id = {row}.annotator_id OR second_annotator_id = {row}.annotator_id)"
        )
    return steps


def _sqlite_comparison_unit(row: str, sign: int, gold: str) -> list[str]:
    """A comparison entering (sign 1) or leaving (-1) the unit rows with the labels it has."""
    counts = {
        n: f"COALESCE((SELECT {n} FROM annotation_stats_comparison WHERE comparison_id = {row}.id), 0)"
        for n in CHOICE_COUNTS
    }
    return _sqlite_add(
        "annotation_stats_units",
        {"project_id": f"{row}.project_id", "annotator_id": "0", "is_gold": gold, "m": " + ".join(counts.values())},
        {
            "comparisons": str(sign),
            **{n: f"{sign} * {counts[n]}" for n in CHOICE_COUNTS},
            "same": f"{sign} * ({' + '.join(f'{v} * ({v} - 1)' for v in counts.values())})",
        },
        cleanup=True,
    )


def _sqlite_install(schema_editor) -> None:
    run = schema_editor.execute

    def trigger(name: str, event: str, table: str, steps: list[str], when: str = "") -> None:
        when = f" WHEN {when}" if when else ""
        run(f"CREATE TRIGGER {name} AFTER {event} ON {table} FOR EACH ROW{when} BEGIN {'; '.join(steps)}; END")

    counted = ", ".join(c for c in PREF_COLUMNS if c != "id")
    pref = "annotation_preference"
    trigger("preference_stats_insert", "INSERT", pref, _sqlite_label_steps("NEW", 1, "o.id <> NEW.id"))
    trigger("preference_stats_delete", "DELETE", pref, _sqlite_label_steps("OLD", -1, "o.id <> OLD.id"))
    trigger(
        "preference_stats_update",
        f"UPDATE OF {counted}",
        pref,
        _sqlite_label_steps("OLD", -1, "o.id <> OLD.id AND o.id <> NEW.id")
        + _sqlite_label_steps("NEW", 1, "o.id <> NEW.id"),
    )
    for table, counter, _, _ in CREATED:

        def project_of(row: str, table=table) -> str:
            if table == "annotation_response":
                return f"(SELECT project_id FROM annotation_prompt WHERE id = {row}.prompt_id)"
            return f"{row}.project_id"

        def add(row: str, sign: int, counter=counter, project_of=project_of) -> list[str]:
            key = {"project_id": project_of(row), "day": SQLITE_DAY.format(row + "."), "writer": "0"}
            return _sqlite_add("annotation_stats_project_day", key, {counter: str(sign)}, cleanup=False) + (
                [f"DELETE FROM annotation_stats_project_day WHERE {' AND '.join(f'{c} = 0' for c in PROJECT_DAY)}"]
                if sign < 0
                else []
            )

        extra_insert = _sqlite_comparison_unit("NEW", 1, "NEW.is_gold") if table == "annotation_comparison" else []
        extra_delete = _sqlite_comparison_unit("OLD", -1, "OLD.is_gold") if table == "annotation_comparison" else []
        trigger(f"{table}_stats_insert", "INSERT", table, add("NEW", 1) + extra_insert)
        trigger(f"{table}_stats_delete", "DELETE", table, add("OLD", -1) + extra_delete)
        trigger(
            f"{table}_stats_move", f"UPDATE OF {', '.join(CREATED_MOVES[table])}", table, add("OLD", -1) + add("NEW", 1)
        )
    same_day = (
        "FROM annotation_preference p WHERE p.comparison_id = NEW.id "
        "AND p.annotator_id = annotation_stats_annotator_day.annotator_id "
        f"AND {SQLITE_DAY.format('p.')} = annotation_stats_annotator_day.day"
    )
    trigger(
        "comparison_stats_gold",
        "UPDATE OF is_gold, gold_choice",
        "annotation_comparison",
        [
            "UPDATE annotation_stats_annotator_day SET "
            f"gold_labels = gold_labels + (SELECT COUNT(*) * (NEW.is_gold - OLD.is_gold) {same_day}), "
            "gold_correct = gold_correct + (SELECT COALESCE(SUM((NEW.is_gold AND p.choice = NEW.gold_choice) "
            f"- (OLD.is_gold AND p.choice = OLD.gold_choice)), 0) {same_day}) "
            f"WHERE project_id = NEW.project_id AND EXISTS (SELECT 1 {same_day})",
            *_sqlite_comparison_unit("OLD", -1, "OLD.is_gold"),
            *_sqlite_comparison_unit("NEW", 1, "NEW.is_gold"),
        ],
        when="OLD.is_gold IS NOT NEW.is_gold OR OLD.gold_choice IS NOT NEW.gold_choice",
    )
    trigger(
        "project_stats_delete",
        "DELETE",
        "annotation_project",
        [f"DELETE FROM {t} WHERE project_id = OLD.id" for t in STATS_TABLES],
    )


SQLITE_TRIGGERS = [
    "preference_stats_insert",
    "preference_stats_delete",
    "preference_stats_update",
    *(f"{t}_stats_{s}" for t, *_ in CREATED for s in ("insert", "delete", "move")),
    "comparison_stats_gold",
    "project_stats_delete",
]


# Counting what is already there ----------------------------------------------------------------------


def backfill_selects(vendor: str) -> list[tuple[str, str, str]]:
    """(table, columns, SELECT) computing each table from scratch out of the rows stored now: the
    migration fills the tables with them, and the tests compare the triggers' work with them. The
    unit rows come out under annotator 0 here; the triggers spread them over annotators, so the
    tests compare their sums."""
    day, hour = (PG_DAY, PG_HOUR) if vendor == "postgresql" else (SQLITE_DAY, SQLITE_HOUR)
    terms = day_counter_terms("p", "c", case_bit)
    counts = ", ".join(
        f"SUM({case_bit(f'p.choice = {c!r}')}) AS {n}"
        for n, c in zip(CHOICE_COUNTS, ("a", "b", "tie", "both_bad"), strict=True)
    )
    per_day = " UNION ALL ".join(
        f"SELECT {project} AS project_id, {day.format('r.')} AS day, "
        + ", ".join(("1" if name == counter else "0") + f" AS {name}" for name in PROJECT_DAY)
        + f" FROM {table} r {join}"
        for table, counter, project, join in CREATED
    )
    choice_sums = ", ".join(f"SUM({case_bit(f'p.choice = {c!r}')})" for c in ("a", "b", "tie", "both_bad"))
    labelled = f"SELECT p.comparison_id, {counts} FROM annotation_preference p GROUP BY p.comparison_id"
    units = (
        f"SELECT c.project_id, 0 AS annotator_id, c.is_gold, {' + '.join(f'COALESCE(l.{n}, 0)' for n in CHOICE_COUNTS)} AS m, "
        f"COUNT(*) AS comparisons, {', '.join(f'SUM(COALESCE(l.{n}, 0)) AS {n}' for n in CHOICE_COUNTS)}, "
        f"SUM({' + '.join(f'COALESCE(l.{n}, 0) * (COALESCE(l.{n}, 0) - 1)' for n in CHOICE_COUNTS)}) AS same "
        f"FROM annotation_comparison c LEFT JOIN ({labelled}) l ON l.comparison_id = c.id GROUP BY 1, 2, 3, 4"
    )
    return [
        (
            "annotation_stats_annotator_day",
            f"project_id, annotator_id, day, {', '.join(DAY_COUNTERS)}",
            f"SELECT p.project_id, p.annotator_id, {day.format('p.')}, {', '.join(f'SUM({t})' for t in terms)} "
            "FROM annotation_preference p LEFT JOIN annotation_comparison c ON c.id = p.comparison_id GROUP BY 1, 2, 3",
        ),
        (
            "annotation_stats_annotator_hour",
            "project_id, hour, annotator_id, labels",
            f"SELECT p.project_id, {hour.format('p.')}, p.annotator_id, COUNT(*) FROM annotation_preference p "
            "GROUP BY 1, 2, 3",
        ),
        (
            "annotation_stats_project_day",
            f"project_id, day, {', '.join(PROJECT_DAY)}",
            "SELECT project_id, day, SUM(prompts) AS prompts, SUM(responses) AS responses, "
            f"SUM(comparisons) AS comparisons FROM ({per_day}) t GROUP BY 1, 2",
        ),
        (
            "annotation_stats_comparison",
            f"comparison_id, project_id, {', '.join(CHOICE_COUNTS)}",
            f"SELECT p.comparison_id, p.project_id, {choice_sums} FROM annotation_preference p GROUP BY 1, 2",
        ),
        ("annotation_stats_units", f"project_id, annotator_id, is_gold, m, {', '.join(UNIT_COUNTERS)}", units),
        (
            "annotation_stats_agreement",
            "project_id, first_annotator_id, second_annotator_id, shared, agreeing",
            f"SELECT x.project_id, x.annotator_id, y.annotator_id, COUNT(*), SUM({case_bit('x.choice = y.choice')}) "
            "FROM annotation_preference x JOIN annotation_preference y "
            "ON y.comparison_id = x.comparison_id AND y.id > x.id GROUP BY 1, 2, 3",
        ),
    ]


def forwards(apps, schema_editor):
    vendor = schema_editor.connection.vendor
    if vendor not in ("postgresql", "sqlite"):
        raise RuntimeError(f"the label aggregates are written for PostgreSQL and SQLite, not {vendor}")
    for statement in TABLES:
        schema_editor.execute(statement)
    for table, columns, select in backfill_selects(vendor):
        schema_editor.execute(f"INSERT INTO {table} ({columns}) {select}")
    if vendor == "postgresql":
        _pg_install(schema_editor)
        # Fresh statistics, so that the first console pages are planned on the real row counts.
        schema_editor.execute(f"ANALYZE {', '.join(STATS_TABLES)}")
    else:
        _sqlite_install(schema_editor)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        _pg_remove(schema_editor)
    else:
        for name in SQLITE_TRIGGERS:
            schema_editor.execute(f"DROP TRIGGER IF EXISTS {name}")
    schema_editor.execute("DROP INDEX IF EXISTS assignment_live_by_project")
    for table in STATS_TABLES:
        schema_editor.execute(f"DROP TABLE IF EXISTS {table}")


class Migration(migrations.Migration):
    dependencies = [("annotation", "0004_queue")]

    operations = [migrations.RunPython(forwards, backwards)]
