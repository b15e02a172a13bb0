"""Reads for the admin console: the project dashboard, the training page and the policy table.

Every figure is aggregated in the database (GROUP BY with conditional counts), so a page costs a
fixed number of queries whatever the size of the project, and no function here walks a project's
preferences in Python. The agreement figures need, per comparison, only the count of each choice;
those counts are summed in SQL too (see `agreement`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.contrib.auth import get_user_model
from django.core.cache import cache
from django.db import connection
from django.db.models import Count, Q, Sum
from django.db.models.functions import TruncDate
from django.utils import timezone

from annotation.models import Assignment, AssignmentStatus, Comparison, Preference, Project, Prompt, Response
from annotation.queue import gold_accuracy
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
DASHBOARD_MAX_AGE_SECONDS = 60


# Counts per day and the queue -----------------------------------------------------------------------


def counts_per_day(*, project: Project, days: int = DAYS_SHOWN) -> list[dict]:
    """Prompts, responses, comparisons and preferences created per day over the last `days` days,
    oldest first, days with nothing included. Four queries, each a GROUP BY over one date range."""
    since = (timezone.now() - timedelta(days=days - 1)).replace(hour=0, minute=0, second=0, microsecond=0)
    sources = {
        "prompts": Prompt.objects.filter(project=project, created_at__gte=since),
        "responses": Response.objects.filter(prompt__project=project, created_at__gte=since),
        "comparisons": Comparison.objects.filter(project=project, created_at__gte=since),
        "preferences": Preference.objects.filter(project=project, created_at__gte=since),
    }
    table: dict = {}
    for name, queryset in sources.items():
        rows = queryset.order_by().annotate(day=TruncDate("created_at")).values("day").annotate(n=Count("id"))
        for row in rows:
            table.setdefault(row["day"], {})[name] = row["n"]
    first = since.date()
    result = []
    for offset in range(days):
        day = first + timedelta(days=offset)
        row = table.get(day, {})
        result.append({"day": day, **{name: row.get(name, 0) for name in sources}})
    return result


def queue_depth(*, project: Project) -> dict:
    """Comparisons still short of the overlap, the labels they miss, and the live leases. Two queries."""
    open_q = Q(label_count__lt=project.overlap, is_gold=False)
    totals = Comparison.objects.filter(project=project).aggregate(
        comparisons=Count("id"),
        open=Count("id", filter=open_q),
        have=Sum("label_count", filter=open_q),
        labelled=Count("id", filter=Q(label_count__gte=1)),
        gold=Count("id", filter=Q(is_gold=True)),
    )
    leases = Assignment.objects.filter(
        project=project, status=AssignmentStatus.LEASED, expires_at__gt=timezone.now()
    ).count()
    missing = (totals["open"] or 0) * project.overlap - (totals["have"] or 0)
    return {
        "comparisons": totals["comparisons"],
        "open": totals["open"],
        "labelled": totals["labelled"],
        "gold": totals["gold"],
        "labels_missing": missing,
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
    left_share: float | None
    sided: int
    tie_rate: float
    both_bad_rate: float
    gold_correct: int = 0
    gold_total: int = 0
    agreement: float | None = None
    agreement_pairs: int = 0
    reasons: list[str] = field(default_factory=list)

    @property
    def gold_accuracy(self) -> float | None:
        return self.gold_correct / self.gold_total if self.gold_total else None


LEFT = Q(choice="a", shown_left="a") | Q(choice="b", shown_left="b")
SIDED = Q(choice__in=["a", "b"], shown_left__in=["a", "b"])


def annotator_stats(*, project: Project, agree: dict[int, tuple[int, int]] | None = None) -> list[AnnotatorStats]:
    """Per annotator: throughput, time per label, position bias, tie and both-bad rates, gold
    accuracy and agreement with the others. Four queries (counts, names, gold, agreement)."""
    now = timezone.now()
    rows = list(
        Preference.objects.filter(project=project)
        .order_by()
        .values("annotator_id")
        .annotate(
            total=Count("id"),
            last_day=Count("id", filter=Q(created_at__gte=now - timedelta(days=1))),
            last_week=Count("id", filter=Q(created_at__gte=now - timedelta(days=7))),
            time_sum=Sum("time_spent_ms"),
            timed=Count("time_spent_ms"),
            left=Count("id", filter=LEFT),
            sided=Count("id", filter=SIDED),
            ties=Count("id", filter=Q(choice="tie")),
            both_bad=Count("id", filter=Q(choice="both_bad")),
        )
    )
    names = dict(
        get_user_model().objects.filter(pk__in=[r["annotator_id"] for r in rows]).values_list("pk", "username")
    )
    gold = gold_accuracy(project=project)
    if agree is None:
        agree = agreement_figures(project=project)[1]
    result = []
    for r in rows:
        stats = AnnotatorStats(
            annotator_id=r["annotator_id"],
            username=names.get(r["annotator_id"], "?"),
            total=r["total"],
            last_day=r["last_day"],
            last_week=r["last_week"],
            mean_seconds=(r["time_sum"] / r["timed"] / 1000) if r["timed"] else None,
            left_share=(r["left"] / r["sided"]) if r["sided"] else None,
            sided=r["sided"],
            tie_rate=r["ties"] / r["total"],
            both_bad_rate=r["both_bad"] / r["total"],
        )
        stats.gold_correct, stats.gold_total = gold.get(r["annotator_id"], (0, 0))
        matches, pairs = agree.get(r["annotator_id"], (0, 0))
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
    left = sum(round(s.left_share * s.sided) for s in stats if s.left_share is not None)
    total = sum(s.total for s in stats)
    ties = sum(round(s.tie_rate * s.total) for s in stats)
    both_bad = sum(round(s.both_bad_rate * s.total) for s in stats)
    return {
        "left_share": left / sided if sided else None,
        "sided": sided,
        "total": total,
        "tie_rate": ties / total if total else None,
        "both_bad_rate": both_bad / total if total else None,
    }


# Agreement ---------------------------------------------------------------------------------------

# One pass over the labels of comparisons with two or more labels: per comparison the count of each
# category (units), then each label joined to its comparison's counts, so that the sums below give
# both the overall agreement (the empty grouping set) and each annotator's (grouped by annotator).
_AGREEMENT_SQL = """
    WITH units AS (
        SELECT comparison_id, COUNT(*) AS m,
               COUNT(*) FILTER (WHERE choice = 'a') AS n_a,
               COUNT(*) FILTER (WHERE choice = 'b') AS n_b,
               COUNT(*) FILTER (WHERE choice = 'tie') AS n_tie,
               COUNT(*) FILTER (WHERE choice = 'both_bad') AS n_bb
          FROM annotation_preference
         WHERE project_id = %s
      GROUP BY comparison_id
        HAVING COUNT(*) >= 2
    ), labels AS (
        SELECT p.annotator_id, p.choice, u.m,
               CASE p.choice WHEN 'a' THEN u.n_a WHEN 'b' THEN u.n_b WHEN 'tie' THEN u.n_tie ELSE u.n_bb END AS nc
          FROM units u
          JOIN annotation_preference p ON p.comparison_id = u.comparison_id AND p.project_id = %s
    )
    SELECT GROUPING(annotator_id), annotator_id, COUNT(*),
           COUNT(*) FILTER (WHERE choice = 'a'), COUNT(*) FILTER (WHERE choice = 'b'),
           COUNT(*) FILTER (WHERE choice = 'tie'), COUNT(*) FILTER (WHERE choice = 'both_bad'),
           SUM((nc - 1)::float / (m - 1)), SUM(nc - 1), SUM(m - 1), SUM(1.0 / m)
      FROM labels
  GROUP BY GROUPING SETS ((annotator_id), ())
"""


def agreement_figures(*, project: Project) -> tuple[dict, dict[int, tuple[int, int]]]:
    """Krippendorff's alpha (nominal) and pairwise percent agreement over comparisons with two or
    more labels, categories a, b, tie and both_bad; and per annotator id, (labels of others that
    agree with theirs, labels of others) over the comparisons they share. One query.

    With n_uc the labels of category c on comparison u and m_u = sum_c n_uc, the coincidence matrix
    has diagonal o_cc = sum_u n_uc (n_uc - 1) / (m_u - 1) and margins n_c = sum_u n_uc, so
        alpha = 1 - (n - 1) (n - sum_c o_cc) / (n^2 - sum_c n_c^2),   n = sum_c n_c,
    and percent agreement = sum_u sum_c n_uc (n_uc - 1) / sum_u m_u (m_u - 1): the share of ordered
    pairs of labels on the same comparison that agree. Summed label by label (each label of
    category c on u adds (n_uc - 1) / (m_u - 1) to the diagonal), which is what the SQL does."""
    overall = {"units": 0, "n": 0, "margins": [0, 0, 0, 0], "o_diag": 0.0, "agreeing_pairs": 0, "pairs": 0}
    per_annotator = {}
    with connection.cursor() as cursor:
        cursor.execute(_AGREEMENT_SQL, [project.pk, project.pk])
        for grouping, annotator_id, n, n_a, n_b, n_tie, n_bb, o_diag, agreeing, pairs, units in cursor.fetchall():
            if grouping:
                # Each of a comparison's m labels adds 1/m: the sum counts the comparisons.
                overall.update(n=n, margins=[n_a, n_b, n_tie, n_bb], o_diag=o_diag or 0.0, units=round(units or 0))
                overall.update(agreeing_pairs=agreeing or 0, pairs=pairs or 0)
            else:
                per_annotator[annotator_id] = (int(agreeing), int(pairs))
    return agreement_from_sums(**overall), per_annotator


def agreement(*, project: Project) -> dict:
    return agreement_figures(project=project)[0]


def agreement_from_sums(*, units, n: int, margins: list[int], o_diag: float, agreeing_pairs: int, pairs: int):
    n = int(n)
    expected = n * n - sum(int(c) ** 2 for c in margins)
    alpha = None
    if n > 1 and expected > 0:
        alpha = 1 - (n - 1) * (n - float(o_diag)) / expected
    elif n > 1:
        alpha = 1.0 if float(o_diag) == n else None  # one category only: nothing to disagree about
    return {
        "units": units,
        "labels": n,
        "alpha": alpha,
        "percent": int(agreeing_pairs) / int(pairs) if pairs else None,
        "margins": dict(zip(CATEGORIES, (int(c) for c in margins), strict=True)),
    }


def dashboard(*, project: Project) -> dict:
    """Everything the dashboard shows, in 12 queries."""
    overall, per_annotator = agreement_figures(project=project)
    stats = annotator_stats(project=project, agree=per_annotator)
    return {
        "days": counts_per_day(project=project),
        "queue": queue_depth(project=project),
        "annotators": stats,
        "bias": position_bias(stats=stats),
        "agreement": overall,
        "low_quality": [s for s in stats if s.reasons],
        "computed_at": timezone.now(),
    }


def dashboard_cached(*, project: Project, refresh: bool = False) -> dict:
    """The dashboard's figures, recomputed at most once per DASHBOARD_MAX_AGE_SECONDS per process.

    Every figure is a GROUP BY over all of the project's preferences; at a million labels one pass
    takes seconds on a small machine, far over the page's 300 ms budget, and the figures move
    slowly. So a page view is a cache read, and the page says when the figures were computed
    (and offers a recompute). No query when the cache is warm."""
    key = f"console:dashboard:{project.pk}"
    data = None if refresh else cache.get(key)
    if data is None:
        data = dashboard(project=project)
        cache.set(key, data, DASHBOARD_MAX_AGE_SECONDS)
    return data


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


def policy_versions(*, project: Project) -> list[dict]:
    """Each policy version, newest first: mean reward-model score and KL from its PPO run's
    metrics, and the human win rate against the version before it (wins + half the ties over the
    a/b/tie labels of comparisons between a response of each), with a 95% Wilson interval.
    Two queries."""
    versions = list(
        ModelVersion.objects.filter(project=project, kind=ModelKind.POLICY).select_related("run").order_by("version")
    )
    sql = """
        SELECT ra.policy_version_id, rb.policy_version_id,
               COUNT(*) FILTER (WHERE p.choice = 'a'), COUNT(*) FILTER (WHERE p.choice = 'b'),
               COUNT(*) FILTER (WHERE p.choice = 'tie')
          FROM annotation_comparison c
          JOIN annotation_response ra ON ra.id = c.response_a_id
          JOIN annotation_response rb ON rb.id = c.response_b_id
          JOIN annotation_preference p ON p.comparison_id = c.id
         WHERE c.project_id = %s AND c.policy_rank > 0 AND c.label_count > 0
           AND ra.policy_version_id IS NOT NULL AND rb.policy_version_id IS NOT NULL
           AND ra.policy_version_id <> rb.policy_version_id
      GROUP BY 1, 2
    """
    pair_counts: dict[tuple[int, int], tuple[int, int, int]] = {}
    if len(versions) > 1:
        with connection.cursor() as cursor:
            cursor.execute(sql, [project.pk])
            for va, vb, wins_a, wins_b, ties in cursor.fetchall():
                pair_counts[(va, vb)] = (wins_a, wins_b, ties)
    rows = []
    previous = None
    for version in versions:
        metrics = {**((version.run.metrics if version.run else None) or {}), **(version.metrics or {})}
        row = {
            "version": version,
            "previous": previous,
            "reward": _metric(metrics, "reward/mean", "ppo/rlhf_reward"),
            "kl": _metric(metrics, "ppo/kl", "kl"),
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
    """Per version number: reward models' held-out accuracy, policies' mean reward and KL."""
    series: dict[str, list[tuple[float, float]]] = {"accuracy": [], "reward": [], "kl": []}
    for v in sorted(versions, key=lambda v: v.version):
        metrics = v.metrics or {}
        if v.kind == ModelKind.REWARD:
            value = _metric(metrics, "reward/accuracy")
            if value is not None:
                series["accuracy"].append((float(v.version), value))
        else:
            for key, names in (("reward", ("reward/mean", "ppo/rlhf_reward")), ("kl", ("ppo/kl", "kl"))):
                value = _metric(metrics, *names)
                if value is not None:
                    series[key].append((float(v.version), value))
    return {k: v for k, v in series.items() if v}


# Disagreements -----------------------------------------------------------------------------------


def disagreements(*, project: Project, limit: int = DISAGREEMENTS_SHOWN) -> dict:
    """Comparisons where the active reward model disagrees most with the annotators' majority.

    The web process does not load models, so the scores come from `scores.jsonl` in the active
    reward model's folder: one line per comparison, {"comparison_id", "score_a", "score_b"}. Without
    that file the list is empty and `reason` says why. Two queries."""
    active = ModelVersion.objects.filter(project=project, kind=ModelKind.REWARD, is_active=True).first()
    if active is None:
        return {"model": None, "rows": [], "reason": "There is no active reward model."}
    path = Path(active.artifact_path) / "scores.jsonl"
    scores: dict[int, float] = {}
    try:
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
                    scores[cid] = 1 / (1 + math.exp(max(-50.0, min(50.0, sb - sa))))
    except OSError:
        return {
            "model": active,
            "rows": [],
            "reason": f"{active.label} has no scores.jsonl with per-comparison scores in its folder, "
            "so there is nothing to compare the labels with.",
        }
    if not scores:
        return {"model": active, "rows": [], "reason": f"{active.label}'s scores.jsonl holds no usable scores."}
    sql = """
        SELECT p.comparison_id, COUNT(*) FILTER (WHERE p.choice = 'a'), COUNT(*) FILTER (WHERE p.choice = 'b')
          FROM annotation_preference p
         WHERE p.project_id = %s AND p.comparison_id = ANY(%s)
      GROUP BY p.comparison_id
        HAVING COUNT(*) FILTER (WHERE p.choice IN ('a', 'b')) > 0
    """
    rows = []
    with connection.cursor() as cursor:
        cursor.execute(sql, [project.pk, list(scores)])
        for cid, n_a, n_b in cursor.fetchall():
            human = n_a / (n_a + n_b)
            model = scores[cid]
            rows.append(
                {
                    "comparison_id": cid,
                    "human_a": human,
                    "model_a": model,
                    "labels": n_a + n_b,
                    "gap": abs(model - human),
                }
            )
    rows.sort(key=lambda r: (-r["gap"], r["comparison_id"]))
    return {"model": active, "rows": rows[:limit], "reason": "" if rows else "No scored comparison has A/B labels."}
