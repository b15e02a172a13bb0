"""Reads for the admin console: the project dashboard, the training page and the policy table.

The dashboard reads counters, not labels: database triggers keep per-annotator day and hour
counts, per-comparison choice counts, comparisons grouped by their number of labels, and
per-annotator-pair agreement counts up to date with every write (annotation migration 0005, which
documents the tables). So a page costs a fixed number of small queries whatever the size of the
project: no figure scans a project's labels or comparisons, and the one query on the label rows
themselves reads at most an hour of them (see `_rolling_window`). Every figure is exact and
current; nothing is cached.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from fractions import Fraction
from functools import cached_property
from pathlib import Path

from django.contrib.auth import get_user_model
from django.db import connection
from django.utils import timezone

from annotation.models import Assignment, AssignmentStatus, Project
from training.models import ModelKind, ModelVersion, TrainingRun
from training.runner import run_dir

CATEGORIES = ("a", "b", "tie", "both_bad")
DAYS_SHOWN = 30
# An annotator is listed as low quality below these, once there is enough evidence to say so.
LOW_GOLD_ACCURACY = 0.7
MIN_GOLD_LABELS = 5
LOW_AGREEMENT = 0.5
MIN_OVERLAP_LABELS = 10
LOG_TAIL_BYTES = 8_000
# progress.jsonl is one line per reported step; a long run can write many, the chart needs few.
MAX_PROGRESS_BYTES = 4_000_000
MAX_CHART_POINTS = 400
MAX_SCORE_LINES = 200_000
DISAGREEMENTS_SHOWN = 50
RUNS_SHOWN = 20


def _rows(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _as_date(value) -> date:
    # PostgreSQL returns a date; SQLite (the embedded default) its ISO text.
    return value if isinstance(value, date) else date.fromisoformat(value)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


# Counts per day and the queue -----------------------------------------------------------------------

_PER_DAY_SQL = """
    SELECT day, SUM(prompts), SUM(responses), SUM(comparisons), SUM(preferences) FROM (
        SELECT day, prompts, responses, comparisons, 0 AS preferences
          FROM annotation_stats_project_day WHERE project_id = %s AND day >= %s
        UNION ALL
        SELECT day, 0, 0, 0, labels FROM annotation_stats_annotator_day WHERE project_id = %s AND day >= %s
    ) t GROUP BY day
"""


def counts_per_day(*, project: Project, days: int = DAYS_SHOWN) -> list[dict]:
    """Prompts, responses, comparisons and preferences created per UTC day over the last `days`
    days, oldest first, days with nothing included. One query over the day counters."""
    first = timezone.now().astimezone(UTC).date() - timedelta(days=days - 1)
    table = {
        _as_date(day): (int(p), int(r), int(c), int(n))
        for day, p, r, c, n in _rows(_PER_DAY_SQL, [project.pk, first, project.pk, first])
    }
    result = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        prompts, responses, comparisons, preferences = table.get(day, (0, 0, 0, 0))
        result.append(
            {
                "day": day,
                "prompts": prompts,
                "responses": responses,
                "comparisons": comparisons,
                "preferences": preferences,
            }
        )
    return result


# Comparisons by gold flag and number of labels m, with the sums alpha needs: the unit rows are
# spread over annotators (see migration annotation 0005), so they are summed here.
_UNITS_SQL = """
    SELECT is_gold, m, SUM(comparisons), SUM(n_a), SUM(n_b), SUM(n_tie), SUM(n_both_bad), SUM(same)
      FROM annotation_stats_units WHERE project_id = %s
  GROUP BY is_gold, m
"""


@dataclass(frozen=True)
class Units:
    """Comparisons with the same gold flag and number of labels m: how many, their labels of each
    category, and the sum over them of sum_c n_c (n_c - 1)."""

    is_gold: bool
    m: int
    comparisons: int
    margins: tuple[int, int, int, int]
    same: int


def unit_groups(*, project: Project) -> list[Units]:
    """One query over the unit counters; groups that are back to nothing are left out."""
    groups = []
    for is_gold, m, count, n_a, n_b, n_tie, n_bb, same in _rows(_UNITS_SQL, [project.pk]):
        if count:
            groups.append(
                Units(bool(is_gold), int(m), int(count), (int(n_a), int(n_b), int(n_tie), int(n_bb)), int(same))
            )
    return groups


def queue_depth(*, project: Project, units: list[Units] | None = None) -> dict:
    """Comparisons still short of the overlap, the labels they miss, and the live leases. Two
    queries: the unit counters, and the leases through the partial index
    assignment_live_by_project (migration annotation 0005)."""
    if units is None:
        units = unit_groups(project=project)
    open_units = [u for u in units if not u.is_gold and u.m < project.overlap]
    leases = Assignment.objects.filter(
        project=project, status=AssignmentStatus.LEASED, expires_at__gt=timezone.now()
    ).count()
    return {
        "comparisons": sum(u.comparisons for u in units),
        "open": sum(u.comparisons for u in open_units),
        "labelled": sum(u.comparisons for u in units if u.m >= 1),
        "gold": sum(u.comparisons for u in units if u.is_gold),
        "labels_missing": sum(u.comparisons * (project.overlap - u.m) for u in open_units),
        "live_leases": leases,
    }


# Annotators --------------------------------------------------------------------------------------


@dataclass
class AnnotatorStats:
    annotator_id: int
    username: str
    total: int
    last_day: int
    last_week: int
    mean_seconds: float | None
    left: int
    sided: int
    ties: int
    both_bad: int
    gold_correct: int = 0
    gold_total: int = 0
    agreement: float | None = None
    agreement_pairs: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_total if self.gold_total else None

    @property
    def left_share(self) -> float | None:
        return self.left / self.sided if self.sided else None

    @property
    def tie_rate(self) -> float:
        return self.ties / self.total if self.total else 0.0

    @property
    def both_bad_rate(self) -> float:
        return self.both_bad / self.total if self.total else 0.0


@dataclass(frozen=True)
class Window:
    """How to count exactly the labels created from `start` on, out of counters: the day counters
    from `first_day` on, plus `hour_sign` times the hour counters of [hour_from, hour_to), plus
    `raw_sign` times the label rows created in [raw_from, raw_to)."""

    first_day: date
    hour_from: datetime
    hour_to: datetime
    hour_sign: int
    raw_from: datetime
    raw_to: datetime
    raw_sign: int


def _rolling_window(start: datetime) -> Window:
    """At each level the unaligned `start` is moved to the nearer boundary and the part between is
    corrected for: to a midnight, the partial day (at most 12 hours) from the hour counters; to an
    hour, the partial hour (at most 30 minutes) from the rows."""
    start = start.astimezone(UTC)
    midnight = _day_start(start.date())
    next_midnight = midnight + timedelta(days=1)
    hour = start.replace(minute=0, second=0, microsecond=0)
    nearer_hour = hour if start - hour <= hour + timedelta(hours=1) - start else hour + timedelta(hours=1)
    # The raw part [nearer_hour, start) or [start, nearer_hour), and whether the hours over-count it.
    raw_from, raw_to = min(start, nearer_hour), max(start, nearer_hour)
    if next_midnight - start <= start - midnight:
        # Whole days from tomorrow on, plus the labels of [start, next midnight).
        first_day, hour_sign = start.date() + timedelta(days=1), 1
        hour_from, hour_to = nearer_hour, next_midnight
        raw_sign = 1 if nearer_hour > start else -1
    else:
        # Whole days from start's day on, minus the labels of [midnight, start).
        first_day, hour_sign = start.date(), -1
        hour_from, hour_to = midnight, nearer_hour
        raw_sign = 1 if nearer_hour < start else -1
    return Window(first_day, hour_from, hour_to, hour_sign, raw_from, raw_to, hour_sign * raw_sign)


_ANNOTATOR_SQL = """
    SELECT annotator_id, SUM(labels),
           SUM(labels) FILTER (WHERE day >= %s), SUM(labels) FILTER (WHERE day >= %s),
           SUM(n_tie), SUM(n_both_bad), SUM(n_left), SUM(n_sided), SUM(time_ms), SUM(n_timed),
           SUM(gold_labels), SUM(gold_correct)
      FROM annotation_stats_annotator_day WHERE project_id = %s
  GROUP BY annotator_id
"""
# The partial days at the start of the two rolling windows: hour counters (at most 12 hours each),
# and label rows (index preference_project_created, at most 30 minutes each).
_PARTIAL_SQL = """
    SELECT annotator_id, SUM(hours_day), SUM(hours_week), SUM(rows_day), SUM(rows_week) FROM (
        SELECT annotator_id,
               CASE WHEN hour >= %s AND hour < %s THEN labels ELSE 0 END AS hours_day,
               CASE WHEN hour >= %s AND hour < %s THEN labels ELSE 0 END AS hours_week,
               0 AS rows_day, 0 AS rows_week
          FROM annotation_stats_annotator_hour
         WHERE project_id = %s AND ((hour >= %s AND hour < %s) OR (hour >= %s AND hour < %s))
        UNION ALL
        SELECT annotator_id, 0, 0,
               CASE WHEN created_at >= %s AND created_at < %s THEN 1 ELSE 0 END,
               CASE WHEN created_at >= %s AND created_at < %s THEN 1 ELSE 0 END
          FROM annotation_preference
         WHERE project_id = %s AND ((created_at >= %s AND created_at < %s) OR (created_at >= %s AND created_at < %s))
    ) t GROUP BY annotator_id
"""


def _hour_key(moment: datetime) -> str:
    # The hour counters hold naive UTC hours (a timestamp in PostgreSQL, text in SQLite).
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:00:00")


def annotator_stats(*, project: Project, agree: dict[int, tuple[int, int]] | None = None) -> list[AnnotatorStats]:
    """Per annotator: throughput, time per label, position bias, tie and both-bad rates, gold
    accuracy and agreement with the others. Four queries (day counters, the partial days of the
    rolling windows, names, agreement)."""
    now = timezone.now()
    day, week = _rolling_window(now - timedelta(days=1)), _rolling_window(now - timedelta(days=7))
    rows = _rows(_ANNOTATOR_SQL, [day.first_day, week.first_day, project.pk])
    hours = [_hour_key(t) for t in (day.hour_from, day.hour_to, week.hour_from, week.hour_to)]
    # As the ORM would write them: SQLite compares datetimes as text.
    raw = [connection.ops.adapt_datetimefield_value(t) for t in (day.raw_from, day.raw_to, week.raw_from, week.raw_to)]
    partial = {
        annotator: (
            int(hd) * day.hour_sign + int(rd) * day.raw_sign,
            int(hw) * week.hour_sign + int(rw) * week.raw_sign,
        )
        for annotator, hd, hw, rd, rw in _rows(_PARTIAL_SQL, [*hours, project.pk, *hours, *raw, project.pk, *raw])
    }
    names = dict(get_user_model().objects.filter(pk__in=[r[0] for r in rows]).values_list("pk", "username"))
    if agree is None:
        agree = agreement_figures(project=project)[1]
    result = []
    for annotator, total, last_day, last_week, ties, both_bad, left, sided, time_ms, timed, gold, correct in rows:
        partial_day, partial_week = partial.get(annotator, (0, 0))
        timed = int(timed or 0)
        stats = AnnotatorStats(
            annotator_id=annotator,
            username=names.get(annotator, "?"),
            total=int(total),
            last_day=int(last_day or 0) + partial_day,
            last_week=int(last_week or 0) + partial_week,
            mean_seconds=(int(time_ms) / timed / 1000) if timed else None,
            left=int(left),
            sided=int(sided),
            ties=int(ties),
            both_bad=int(both_bad),
            gold_correct=int(correct),
            gold_total=int(gold),
        )
        matches, pairs = agree.get(annotator, (0, 0))
        stats.agreement, stats.agreement_pairs = (matches / pairs if pairs else None), pairs
        if stats.gold_total >= MIN_GOLD_LABELS and stats.gold_accuracy < LOW_GOLD_ACCURACY:
            stats.reasons.append(f"gold accuracy {stats.gold_accuracy:.0%} on {stats.gold_total} gold labels")
        if stats.agreement_pairs >= MIN_OVERLAP_LABELS and stats.agreement < LOW_AGREEMENT:
            stats.reasons.append(f"agrees with others {stats.agreement:.0%} of the time")
        result.append(stats)
    result.sort(key=lambda s: (-s.total, s.username))
    return result


def position_bias(*, stats: list[AnnotatorStats]) -> dict:
    """Overall share of left choices among A/B labels whose side is known, and the tie and
    both-bad rates, summed from the per-annotator counts (no query of its own)."""
    sided = sum(s.sided for s in stats)
    left = sum(s.left for s in stats)
    total = sum(s.total for s in stats)
    ties = sum(s.ties for s in stats)
    both_bad = sum(s.both_bad for s in stats)
    return {
        "left_share": left / sided if sided else None,
        "sided": sided,
        "total": total,
        "tie_rate": ties / total if total else None,
        "both_bad_rate": both_bad / total if total else None,
    }


# Agreement ---------------------------------------------------------------------------------------

# Per annotator: comparisons shared with another annotator, and those where both chose the same,
# from the pair counters, where the annotator may have given the earlier or the later label.
_PAIRS_SQL = """
    SELECT annotator_id, SUM(shared), SUM(agreeing) FROM (
        SELECT first_annotator_id AS annotator_id, shared, agreeing
          FROM annotation_stats_agreement WHERE project_id = %s
        UNION ALL
        SELECT second_annotator_id, shared, agreeing FROM annotation_stats_agreement WHERE project_id = %s
    ) t GROUP BY annotator_id
"""


def agreement_figures(*, project: Project, units: list[Units] | None = None) -> tuple[dict, dict[int, tuple[int, int]]]:
    """Krippendorff's alpha (nominal) and pairwise percent agreement over comparisons with two or
    more labels, categories a, b, tie and both_bad; and per annotator id, (labels of others that
    agree with theirs, labels of others) over the comparisons they share. Two queries (the unit
    counters, unless given, and the pair counters).

    With n_uc the labels of category c on comparison u and m_u = sum_c n_uc, the coincidence matrix
    has diagonal o_cc = sum_u n_uc (n_uc - 1) / (m_u - 1) and margins n_c = sum_u n_uc, so
        alpha = 1 - (n - 1) (n - sum_c o_cc) / (n^2 - sum_c n_c^2),   n = sum_c n_c,
    and percent agreement = sum_u sum_c n_uc (n_uc - 1) / sum_u m_u (m_u - 1): the share of ordered
    pairs of labels on the same comparison that agree. Comparisons with the same m share the
    divisor, so the counters hold integer sums per m and the divisions here are exact fractions."""
    if units is None:
        units = unit_groups(project=project)
    counted, margins = 0, [0, 0, 0, 0]
    o_diag, agreeing, pairs = Fraction(0), 0, 0
    for u in units:
        if u.m < 2:
            continue
        counted += u.comparisons
        margins = [total + n for total, n in zip(margins, u.margins, strict=True)]
        o_diag += Fraction(u.same, u.m - 1)
        agreeing += u.same
        pairs += u.comparisons * u.m * (u.m - 1)
    per_annotator = {
        annotator: (int(agree), int(shared)) for annotator, shared, agree in _rows(_PAIRS_SQL, [project.pk, project.pk])
    }
    overall = agreement_from_sums(
        units=counted, n=sum(margins), margins=margins, o_diag=o_diag, agreeing_pairs=agreeing, pairs=pairs
    )
    return overall, per_annotator


def agreement(*, project: Project) -> dict:
    return agreement_figures(project=project)[0]


def agreement_from_sums(
    *, units: int, n: int, margins: list[int], o_diag: Fraction, agreeing_pairs: int, pairs: int
) -> dict:
    expected = n * n - sum(c * c for c in margins)
    alpha = None
    if n > 1 and expected > 0:
        alpha = float(1 - (n - 1) * (n - o_diag) / expected)
    elif n > 1:
        alpha = 1.0 if o_diag == n else None  # one category only: nothing to disagree about
    return {
        "units": units,
        "labels": n,
        "alpha": alpha,
        "percent": agreeing_pairs / pairs if pairs else None,
        "margins": dict(zip(CATEGORIES, margins, strict=True)),
    }


def dashboard(*, project: Project) -> dict:
    """Everything the dashboard shows, in 7 queries."""
    units = unit_groups(project=project)
    overall, per_annotator = agreement_figures(project=project, units=units)
    stats = annotator_stats(project=project, agree=per_annotator)
    return {
        "days": counts_per_day(project=project),
        "queue": queue_depth(project=project, units=units),
        "annotators": stats,
        "bias": position_bias(stats=stats),
        "agreement": overall,
        "low_quality": [s for s in stats if s.reasons],
        "computed_at": timezone.now(),
    }


# Policy versions -----------------------------------------------------------------------------------


def wilson_interval(successes: float, n: float, z: float = 1.96) -> tuple[float, float] | None:
    """The Wilson score interval of a proportion (95% by default); None without observations."""
    if n <= 0:
        return None
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def _metric(metrics: dict, *names: str) -> float | None:
    for name in names:
        value = (metrics or {}).get(name)
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


# A policy version's evaluation on the project's fixed eval prompts (the PPO run stores it in
# ModelVersion.metrics) is preferred to the PPO run's own training figures, which are measured on
# whatever prompts the last rollouts drew.
EVAL_REWARD, EVAL_CI_LOW, EVAL_CI_HIGH = "eval/reward/mean", "eval/reward/ci_low", "eval/reward/ci_high"
EVAL_KL, EVAL_PROMPTS = "eval/kl", "eval/prompts"
RUN_REWARD, RUN_KL = ("reward/mean", "ppo/rlhf_reward"), ("ppo/kl", "kl")


def policy_scores(metrics: dict) -> dict:
    """A policy's mean reward-model score (with its 95% interval when the eval set gave one), KL
    to the reference and the number of eval prompts, each with where it comes from: "eval set" or
    "PPO run" (None when neither has it)."""
    result: dict = {"reward_interval": None, "eval_prompts": None}
    for key, eval_name, run_names in (("reward", EVAL_REWARD, RUN_REWARD), ("kl", EVAL_KL, RUN_KL)):
        value, source = _metric(metrics, eval_name), "eval set"
        if value is None:
            value, source = _metric(metrics, *run_names), "PPO run"
        result[key], result[f"{key}_source"] = value, source if value is not None else None
    if result["reward_source"] == "eval set":
        low, high = _metric(metrics, EVAL_CI_LOW), _metric(metrics, EVAL_CI_HIGH)
        if low is not None and high is not None and low <= result["reward"] <= high:
            result["reward_interval"] = (low, high)
        prompts = _metric(metrics, EVAL_PROMPTS)
        result["eval_prompts"] = int(prompts) if prompts is not None else None
    return result


# Labels of comparisons between responses of two different policy versions, by (version of
# response A, version of response B), from the per-comparison choice counts.
_POLICY_PAIRS_SQL = """
    SELECT ra.policy_version_id, rb.policy_version_id, SUM(s.n_a), SUM(s.n_b), SUM(s.n_tie)
      FROM annotation_stats_comparison s
      JOIN annotation_comparison c ON c.id = s.comparison_id
      JOIN annotation_response ra ON ra.id = c.response_a_id
      JOIN annotation_response rb ON rb.id = c.response_b_id
     WHERE s.project_id = %s AND c.policy_rank > 0
       AND ra.policy_version_id IS NOT NULL AND rb.policy_version_id IS NOT NULL
       AND ra.policy_version_id <> rb.policy_version_id
  GROUP BY 1, 2
"""


def policy_versions(*, project: Project) -> list[dict]:
    """Each policy version, newest first: mean reward-model score (with a 95% interval) and KL,
    from its evaluation on the fixed eval prompts when it has one and from its PPO run's metrics
    otherwise (see `policy_scores`), and the human win rate against the version before it (wins +
    half the ties over the a/b/tie labels of comparisons between a response of each), with a 95%
    Wilson interval. Two queries."""
    versions = list(
        ModelVersion.objects.filter(project=project, kind=ModelKind.POLICY).select_related("run").order_by("version")
    )
    pair_counts: dict[tuple[int, int], tuple[int, int, int]] = {}
    if len(versions) > 1:
        for va, vb, wins_a, wins_b, ties in _rows(_POLICY_PAIRS_SQL, [project.pk]):
            pair_counts[(va, vb)] = (int(wins_a), int(wins_b), int(ties))
    rows = []
    previous = None
    for version in versions:
        metrics = {**((version.run.metrics if version.run else None) or {}), **(version.metrics or {})}
        row = {
            "version": version,
            "previous": previous,
            **policy_scores(metrics),
            "wins": None,
            "labels": 0,
            "win_rate": None,
            "interval": None,
        }
        if previous is not None:
            ab = pair_counts.get((version.pk, previous.pk), (0, 0, 0))
            ba = pair_counts.get((previous.pk, version.pk), (0, 0, 0))
            wins = ab[0] + ba[1] + 0.5 * (ab[2] + ba[2])
            labels = sum(ab) + sum(ba)
            row.update(wins=wins, labels=labels)
            if labels:
                row["win_rate"] = wins / labels
                row["interval"] = wilson_interval(wins, labels)
        rows.append(row)
        previous = version
    rows.reverse()
    return rows


# Training ----------------------------------------------------------------------------------------


def recent_runs(*, project: Project, limit: int = RUNS_SHOWN) -> list[TrainingRun]:
    return list(
        TrainingRun.objects.filter(project=project)
        .select_related("model_version", "created_by")
        .order_by("-created_at", "-id")[:limit]
    )


def model_versions(*, project: Project) -> list[ModelVersion]:
    return list(ModelVersion.objects.filter(project=project).order_by("kind", "-version"))


def run_status(*, run: TrainingRun) -> dict:
    """The small JSON the training page polls."""
    version = ModelVersion.objects.filter(run=run).values("kind", "version", "is_active").first()
    return {
        "id": run.pk,
        "kind": run.kind,
        "status": run.status,
        "progress": run.progress,
        "step": run.step,
        "total_steps": run.total_steps,
        "eta_seconds": run.eta_seconds,
        "error": run.error[-2000:],
        "finished": run.finished_at is not None,
        "model_version": f"{version['kind']}-v{version['version']}" if version else None,
    }


def log_tail(*, run: TrainingRun, max_bytes: int = LOG_TAIL_BYTES) -> str:
    path = run_dir(run) / "log.txt"
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    if size > max_bytes:
        text = text.split("\n", 1)[-1]
    return text


def progress_series(*, run: TrainingRun) -> dict[str, list[tuple[float, float]]]:
    """Curves from the run's progress.jsonl: loss (and accuracy, reward, KL when a trainer writes
    them) against the step, thinned to at most MAX_CHART_POINTS points each."""
    path = run_dir(run) / "progress.jsonl"
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - MAX_PROGRESS_BYTES))
            data = f.read()
    except OSError:
        return {}
    series: dict[str, dict[float, float]] = {}
    for line in data.splitlines():
        try:
            point = json.loads(line)
        except ValueError:
            continue
        if not isinstance(point, dict) or point.get("phase") not in (None, "train"):
            continue
        step = point.get("step")
        if not isinstance(step, int | float):
            continue
        for key in ("loss", "accuracy", "reward", "kl"):
            value = point.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
                series.setdefault(key, {})[float(step)] = float(value)
    result = {}
    for key, points in series.items():
        ordered = sorted(points.items())
        stride = max(1, math.ceil(len(ordered) / MAX_CHART_POINTS))
        result[key] = ordered[::stride]
    return result


def version_series(*, versions: list[ModelVersion]) -> dict[str, list[tuple[float, float]]]:
    """Per version number: reward models' held-out accuracy, policies' mean reward and KL (from the
    eval set when they have one, see `policy_scores`)."""
    series: dict[str, list[tuple[float, float]]] = {"accuracy": [], "reward": [], "kl": []}
    for v in sorted(versions, key=lambda v: v.version):
        metrics = v.metrics or {}
        if v.kind == ModelKind.REWARD:
            value = _metric(metrics, "reward/accuracy")
            if value is not None:
                series["accuracy"].append((float(v.version), value))
        else:
            scores = policy_scores(metrics)
            for key in ("reward", "kl"):
                if scores[key] is not None:
                    series[key].append((float(v.version), scores[key]))
    return {k: v for k, v in series.items() if v}


# Disagreements -----------------------------------------------------------------------------------


# The parsed scores of the last few models, keyed by file and checked against its size and mtime:
# a model's scores.jsonl is written once, and parsing tens of thousands of lines on every view of
# the page would cost more than everything else on it.
_SCORES_CACHE: dict[str, tuple[tuple[int, int], ModelScores]] = {}
_SCORES_CACHED_FILES = 4


@dataclass
class ModelScores:
    """A reward model's probability that A is preferred, per comparison id."""

    probabilities: dict[int, float]

    @cached_property
    def as_sql_param(self) -> list[str]:
        """The scores as the parameters of `_SCORED_SQL`'s relation: built once per file, since a
        list of 100,000 numbers costs tens of milliseconds to format."""
        if connection.vendor == "postgresql":
            return [",".join(map(str, self.probabilities)), ",".join(map(repr, self.probabilities.values()))]
        return [json.dumps(list(self.probabilities.items()))]


def read_scores(path: Path) -> ModelScores:
    """The scores of a scores.jsonl (its format: README, "The admin console"). Lines that are not
    valid are skipped. Raises OSError when the file cannot be read."""
    stat = os.stat(path)
    key = (stat.st_mtime_ns, stat.st_size)
    cached = _SCORES_CACHE.get(str(path))
    if cached is not None and cached[0] == key:
        return cached[1]
    probabilities: dict[int, float] = {}
    with path.open("rb") as f:
        for number, line in enumerate(f):
            if number >= MAX_SCORE_LINES:
                break
            try:
                item = json.loads(line)
                cid, sa, sb = int(item["comparison_id"]), float(item["score_a"]), float(item["score_b"])
            except (ValueError, KeyError, TypeError):
                continue
            if math.isfinite(sa) and math.isfinite(sb):
                # Bradley-Terry: the model's probability that A is preferred.
                probabilities[cid] = 1 / (1 + math.exp(max(-50.0, min(50.0, sb - sa))))
    scores = ModelScores(probabilities)
    while len(_SCORES_CACHE) >= _SCORES_CACHED_FILES:
        _SCORES_CACHE.pop(next(iter(_SCORES_CACHE)))
    _SCORES_CACHE[str(path)] = (key, scores)
    return scores


def _scored_sql() -> str:
    """The comparisons with A/B labels that the model scored, ranked by the gap between the model's
    probability that A is preferred and the share of A among the labels, in the database: only the
    rows shown come back. The scores travel as one or two text parameters."""
    if connection.vendor == "postgresql":
        scores = "unnest(string_to_array(%s, ',')::bigint[], string_to_array(%s, ',')::float8[]) AS s(cid, p)"
    else:
        scores = "(SELECT json_extract(value, '$[0]') AS cid, json_extract(value, '$[1]') AS p FROM json_each(%s)) s"
    return f"""
        SELECT cid, p, n_a, n_b, gap FROM (
            SELECT s.cid, s.p, c.n_a, c.n_b,
                   ABS(s.p - CAST(c.n_a AS DOUBLE PRECISION) / (c.n_a + c.n_b)) AS gap
              FROM {scores} JOIN annotation_stats_comparison c ON c.comparison_id = s.cid
             WHERE c.project_id = %s AND c.n_a + c.n_b > 0
        ) ranked ORDER BY gap DESC, cid LIMIT %s
    """


def disagreements(*, project: Project, limit: int = DISAGREEMENTS_SHOWN) -> dict:
    """Comparisons where the active reward model disagrees most with the annotators' majority.

    The web process does not load models, so the scores come from `scores.jsonl` in the active
    reward model's folder, written by the reward run that trained it: one line per comparison,
    {"comparison_id", "score_a", "score_b"}. The labels' side is read from the per-comparison
    choice counts as they are now. Without that file the list is empty and `reason` says why.
    Two queries."""
    active = ModelVersion.objects.filter(project=project, kind=ModelKind.REWARD, is_active=True).first()
    if active is None:
        return {"model": None, "rows": [], "reason": "There is no active reward model."}
    try:
        scores = read_scores(Path(active.artifact_path) / "scores.jsonl")
    except OSError:
        return {
            "model": active,
            "rows": [],
            "reason": f"{active.label} has no scores.jsonl with per-comparison scores in its folder, "
            "so there is nothing to compare the labels with.",
        }
    if not scores.probabilities:
        return {"model": active, "rows": [], "reason": f"{active.label}'s scores.jsonl holds no usable scores."}
    rows = [
        {
            "comparison_id": int(cid),
            "human_a": n_a / (n_a + n_b),
            "model_a": float(p),
            "labels": n_a + n_b,
            "gap": float(gap),
        }
        for cid, p, n_a, n_b, gap in _rows(_scored_sql(), [*scores.as_sql_param, project.pk, limit])
    ]
    return {"model": active, "rows": rows, "reason": "" if rows else "No scored comparison has A/B labels."}
