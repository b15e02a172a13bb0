"""The admin console: a project's dashboard, training page, policy versions, disagreements and data.

Only the project's admins and staff get in: a visitor who is not logged in is sent to the login
page, anyone else gets 403 on every page and every action. Actions are plain POST forms with
Django's CSRF token; each calls the same service as the REST API and redirects back, or answers
400 (bad input) or 409 (a conflict, such as a second reward run) with a page that says what was
wrong and where, having changed nothing. The training page polls one small JSON endpoint for the
run it shows; every chart is an SVG drawn here, so the console needs no chart library.
"""

from __future__ import annotations

import json
from urllib.parse import urlencode

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.safestring import SafeString, mark_safe
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST
from django_celery_beat.models import IntervalSchedule, PeriodicTask

from annotation import selectors as annotation_selectors
from annotation import services as annotation_services
from annotation.exports import FORMATS
from annotation.jsonl import ImportFileError, bounded_lines, read_records
from annotation.models import Project, Role
from training import selectors, services
from training.models import ModelKind, ModelVersion, RunKind, TrainingRun
from training.services import TrainingError

LOOP_TASK_NAME = "training loop"
MAX_CONFIG_CHARS = 10_000
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
MIN_INTERVAL_SECONDS = 10
MAX_INTERVAL_SECONDS = 7 * 24 * 3600


class BadInput(Exception):
    def __init__(self, message: str, field: str = "", status: int = 400, lines: list | None = None) -> None:
        super().__init__(message)
        self.message, self.field, self.status, self.lines = message, field, status, lines or []


def _admin_project(request: HttpRequest, slug: str) -> Project:
    project = get_object_or_404(Project, slug=slug)
    if not annotation_selectors.user_is_project_admin(user=request.user, project=project):
        raise PermissionDenied("Only this project's admins can use its console.")
    return project


def console_view(view):
    """Login, the admin check, and bad input answered as a 400/409 page that changes nothing."""

    @login_required
    @never_cache
    def wrapped(request: HttpRequest, slug: str, **kwargs) -> HttpResponse:
        project = _admin_project(request, slug)
        try:
            return view(request, project, **kwargs)
        except (BadInput, TrainingError) as exc:
            if isinstance(exc, TrainingError):
                exc = BadInput(exc.message, status=409 if exc.code == "conflict" else 400)
            back = request.META.get("HTTP_REFERER", "")
            if not url_has_allowed_host_and_scheme(back, allowed_hosts={request.get_host()}):
                back = reverse("console-dashboard", kwargs={"slug": project.slug})
            context = {"project": project, "error": exc, "back": back}
            return render(request, "console/error.html", context, status=exc.status)

    wrapped.__name__, wrapped.__doc__ = view.__name__, view.__doc__
    return wrapped


# Pages -------------------------------------------------------------------------------------------


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    if request.user.is_staff:
        projects = list(Project.objects.order_by("name"))
    else:
        projects = list(
            Project.objects.filter(memberships__user=request.user, memberships__role=Role.ADMIN).order_by("name")
        )
    if not projects:
        raise PermissionDenied("The console is for project admins.")
    return render(request, "console/index.html", {"projects": projects})


@console_view
@require_GET
def dashboard(request: HttpRequest, project: Project) -> HttpResponse:
    data = selectors.dashboard(project=project)
    days = data["days"]
    chart = line_chart(
        {name: [(i, row[name]) for i, row in enumerate(days)] for name in ("preferences", "comparisons", "prompts")},
        title="Created per day, last 30 days",
        x_label=f"{days[0]['day']:%b %d} – {days[-1]['day']:%b %d}",
    )
    context = {"project": project, "tab": "dashboard", "chart": chart}
    return render(request, "console/dashboard.html", {**context, **data})


@console_view
@require_GET
def training(request: HttpRequest, project: Project) -> HttpResponse:
    runs = selectors.recent_runs(project=project)
    shown = None
    wanted = request.GET.get("run")
    if wanted:
        if not wanted.isdigit():
            raise BadInput("run must be a run id (a whole number).", "run")
        shown = get_object_or_404(TrainingRun, pk=int(wanted), project=project)
    elif runs:
        shown = runs[0]
    versions = selectors.model_versions(project=project)
    task = PeriodicTask.objects.filter(name=LOOP_TASK_NAME).select_related("interval").first()
    context = {
        "project": project,
        "tab": "training",
        "runs": runs,
        "shown": shown,
        "panel": run_panel(request, shown) if shown else "",
        "status": selectors.run_status(run=shown) if shown else None,
        "versions": versions,
        "version_chart": line_chart(
            selectors.version_series(versions=versions), title="Metrics per model version", x_label="version"
        ),
        "kinds": RunKind.choices,
        "model_kinds": ModelKind.choices,
        "task": task,
        "interval_seconds": _interval_seconds(task),
    }
    return render(request, "console/training.html", context)


@console_view
@require_GET
def run_status(request: HttpRequest, project: Project, pk: int) -> JsonResponse:
    """Polled every 2 s by the training page: progress, and the chart and log panel as HTML."""
    run = get_object_or_404(TrainingRun, pk=pk, project=project)
    return JsonResponse({**selectors.run_status(run=run), "panel": run_panel(request, run)})


def run_panel(request: HttpRequest, run: TrainingRun) -> str:
    series = selectors.progress_series(run=run)
    charts = [line_chart({key: points}, title=key, x_label="step") for key, points in sorted(series.items())]
    context = {"run": run, "charts": charts, "log": selectors.log_tail(run=run)}
    return render_to_string("console/_run_panel.html", context, request=request)


@console_view
@require_GET
def policies(request: HttpRequest, project: Project) -> HttpResponse:
    rows = list(reversed(selectors.policy_versions(project=project)))  # oldest first, as the charts read
    scored = [r for r in rows if r["reward"] is not None]
    judged = [r for r in rows if r["win_rate"] is not None]
    charts = [
        line_chart(
            {"mean score": [(r["version"].version, r["reward"]) for r in scored]},
            title="Mean reward-model score, 95% interval",
            x_label="version",
            intervals={
                "mean score": [(r["version"].version, *r["reward_interval"]) for r in scored if r["reward_interval"]]
            },
        ),
        line_chart(
            {"KL": [(r["version"].version, r["kl"]) for r in rows if r["kl"] is not None]},
            title="KL to the reference model",
            x_label="version",
        ),
        line_chart(
            {"win rate": [(r["version"].version, r["win_rate"]) for r in judged]},
            title="Human win rate against the previous version, 95% Wilson interval",
            x_label="version",
            intervals={"win rate": [(r["version"].version, *r["interval"]) for r in judged]},
        ),
    ]
    context = {"project": project, "tab": "policies", "rows": rows[::-1], "charts": charts}
    return render(request, "console/policies.html", context)


@console_view
@require_GET
def disagreements(request: HttpRequest, project: Project) -> HttpResponse:
    data = selectors.disagreements(project=project)
    return render(request, "console/disagreements.html", {"project": project, "tab": "disagreements", **data})


@console_view
def data(request: HttpRequest, project: Project) -> HttpResponse:
    """Import a JSONL file (all or nothing) and links to every export format."""
    context = {"project": project, "tab": "data", "formats": list(FORMATS), "summary": None}
    context["export_url"] = reverse("api-export", kwargs={"slug": project.slug})
    if request.method == "POST":
        upload = request.FILES.get("file")
        if upload is None:
            raise BadInput("Choose a JSONL file to upload.", "file")
        if upload.size > MAX_UPLOAD_BYTES:
            raise BadInput(f"The file is larger than {MAX_UPLOAD_BYTES // (1024 * 1024)} MB.", "file")
        try:
            records = read_records(bounded_lines(upload.file))
            context["summary"] = annotation_services.preferences_import(project=project, records=records)
        except ImportFileError as exc:
            raise BadInput("The file was not imported; nothing was written.", "file", lines=exc.errors[:50]) from None
        except ValueError as exc:
            raise BadInput(f"The file was not imported; nothing was written: {exc}", "file") from None
    elif request.method != "GET":
        return HttpResponse(status=405)
    return render(request, "console/data.html", context)


# Actions -----------------------------------------------------------------------------------------


def _back_to_training(project: Project, run: TrainingRun | None = None):
    url = reverse("console-training", kwargs={"slug": project.slug})
    return redirect(f"{url}?{urlencode({'run': run.pk})}" if run else url)


@console_view
@require_POST
def run_start(request: HttpRequest, project: Project) -> HttpResponse:
    kind = request.POST.get("kind", "")
    if kind not in RunKind.values:
        raise BadInput(f"kind must be one of {', '.join(RunKind.values)}.", "kind")
    raw = request.POST.get("config", "").strip()
    config: dict = {}
    if raw:
        if len(raw) > MAX_CONFIG_CHARS:
            raise BadInput(f"config is longer than {MAX_CONFIG_CHARS} characters.", "config")
        try:
            config = json.loads(raw)
        except ValueError as exc:
            raise BadInput(f"config is not valid JSON: {exc}", "config") from None
        if not isinstance(config, dict):
            raise BadInput("config must be a JSON object.", "config")
    parent = None
    if kind in (RunKind.PPO, RunKind.GENERATE):
        parent = ModelVersion.objects.filter(project=project, kind=ModelKind.POLICY, is_active=True).first()
    with transaction.atomic():
        run = services.training_run_create(
            project=project, kind=kind, config=config, created_by=request.user, parent_model=parent
        )
    messages.success(request, f"Queued {run.get_kind_display().lower()} run {run.pk}.")
    return _back_to_training(project, run)


@console_view
@require_POST
def run_cancel(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    run = get_object_or_404(TrainingRun, pk=pk, project=project)
    services.training_run_cancel(run=run)
    messages.success(request, f"Cancelled run {run.pk}.")
    return _back_to_training(project, run)


@console_view
@require_POST
def model_promote(request: HttpRequest, project: Project, pk: int) -> HttpResponse:
    version = get_object_or_404(ModelVersion, pk=pk, project=project)
    services.model_version_promote(version=version)
    messages.success(request, f"{version.label} is now active.")
    return _back_to_training(project)


@console_view
@require_POST
def model_rollback(request: HttpRequest, project: Project) -> HttpResponse:
    kind = request.POST.get("kind", "")
    if kind not in ModelKind.values:
        raise BadInput(f"kind must be one of {', '.join(ModelKind.values)}.", "kind")
    version = services.model_version_rollback(project=project, kind=kind)
    messages.success(request, f"Rolled back: {version.label} is active again.")
    return _back_to_training(project)


def _interval_seconds(task: PeriodicTask | None) -> int | None:
    if task is None or task.interval is None:
        return None
    per = {"microseconds": 1e-6, "seconds": 1, "minutes": 60, "hours": 3600, "days": 86400}
    return int(task.interval.every * per.get(task.interval.period, 1))


def _int_field(request: HttpRequest, name: str, low: int, high: int) -> int:
    raw = request.POST.get(name, "").strip()
    if not raw.isdigit() or not low <= int(raw) <= high:
        raise BadInput(f"{name} must be a whole number from {low} to {high}.", name)
    return int(raw)


@console_view
@require_POST
def loop_settings(request: HttpRequest, project: Project) -> HttpResponse:
    """The project's thresholds, and the schedule of the loop. The schedule is one periodic task
    for every project, so only staff may change it; project admins change their own thresholds."""
    threshold = _int_field(request, "retrain_threshold", 1, 10_000_000)
    auto = request.POST.get("auto_training") == "on"
    schedule = None
    if "interval_seconds" in request.POST:
        if not request.user.is_staff:
            raise PermissionDenied("The loop's schedule is shared by every project; only staff can change it.")
        schedule = (
            _int_field(request, "interval_seconds", MIN_INTERVAL_SECONDS, MAX_INTERVAL_SECONDS),
            request.POST.get("enabled") == "on",
        )
    with transaction.atomic():
        annotation_services.project_update(project=project, retrain_threshold=threshold, auto_training=auto)
        if schedule is not None:
            every, enabled = schedule
            interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=IntervalSchedule.SECONDS)
            task, _ = PeriodicTask.objects.get_or_create(
                name=LOOP_TASK_NAME, defaults={"task": "training.tasks.loop_tick", "interval": interval}
            )
            task.interval, task.enabled = interval, enabled
            task.save()
    messages.success(request, "Loop settings saved.")
    return _back_to_training(project)


# Charts ------------------------------------------------------------------------------------------

CHART_W, CHART_H, PAD_L, PAD_R, PAD_T, PAD_B = 560, 200, 52, 12, 26, 30
SERIES_CLASSES = ["s0", "s1", "s2", "s3"]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2g}"
    return f"{value:.3g}"


def line_chart(
    series: dict[str, list[tuple[float, float]]],
    *,
    title: str,
    x_label: str = "",
    intervals: dict[str, list[tuple[float, float, float]]] | None = None,
) -> SafeString:
    """An SVG line chart of one or more series of (x, y) points, with its min/max on the axes and
    a legend; `intervals` adds error bars (x, low, high) to a series. Names and labels are escaped;
    numbers are formatted here."""
    series = {name: points for name, points in series.items() if points}
    if not series:
        return format_html('<p class="muted chart-empty">{}: no data yet.</p>', title)
    intervals = {name: bars for name, bars in (intervals or {}).items() if name in series and bars}
    xs = [x for points in series.values() for x, _ in points]
    ys = [y for points in series.values() for _, y in points]
    ys += [bound for bars in intervals.values() for _, low, high in bars for bound in (low, high)]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y0, y1 = y0 - 1 if y0 else 0, y1 + 1
    plot_w, plot_h = CHART_W - PAD_L - PAD_R, CHART_H - PAD_T - PAD_B

    def sx(x):
        return PAD_L + (x - x0) / (x1 - x0) * plot_w

    def sy(y):
        return PAD_T + (1 - (y - y0) / (y1 - y0)) * plot_h

    lines = []
    for i, (name, points) in enumerate(series.items()):
        cls = SERIES_CLASSES[i % len(SERIES_CLASSES)]
        for x, low, high in intervals.get(name, []):
            # A vertical bar with short caps at both ends.
            cx, top, bottom = sx(x), sy(high), sy(low)
            lines.append(
                format_html(
                    '<path class="interval {}" d="M{},{}V{}M{},{}H{}M{},{}H{}"></path>',
                    cls,
                    f"{cx:.1f}",
                    f"{top:.1f}",
                    f"{bottom:.1f}",
                    f"{cx - 3:.1f}",
                    f"{top:.1f}",
                    f"{cx + 3:.1f}",
                    f"{cx - 3:.1f}",
                    f"{bottom:.1f}",
                    f"{cx + 3:.1f}",
                )
            )
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
        if len(points) == 1:
            x, y = points[0]
            lines.append(
                format_html('<circle class="{}" cx="{}" cy="{}" r="3"></circle>', cls, f"{sx(x):.1f}", f"{sy(y):.1f}")
            )
        else:
            lines.append(format_html('<polyline class="{}" points="{}"></polyline>', cls, coords))
    legend = format_html_join(
        "",
        '<span class="legend-item {}">{}</span>',
        ((SERIES_CLASSES[i % len(SERIES_CLASSES)], name) for i, name in enumerate(series)),
    )
    svg = format_html(
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{title}">'
        '<text class="chart-title" x="{pl}" y="16">{title}</text>'
        '<line class="axis" x1="{pl}" y1="{bottom}" x2="{right}" y2="{bottom}"></line>'
        '<line class="axis" x1="{pl}" y1="{pt}" x2="{pl}" y2="{bottom}"></line>'
        '<text class="tick" x="{tx}" y="{ty1}" text-anchor="end">{y1}</text>'
        '<text class="tick" x="{tx}" y="{bottom}" text-anchor="end">{y0}</text>'
        '<text class="tick" x="{pl}" y="{xl}">{x0}</text>'
        '<text class="tick" x="{right}" y="{xl}" text-anchor="end">{x1}</text>'
        '<text class="tick" x="{mid}" y="{xl}" text-anchor="middle">{x_label}</text>'
        "{lines}</svg>",
        w=CHART_W,
        h=CHART_H,
        title=title,
        pl=PAD_L,
        pt=PAD_T,
        right=CHART_W - PAD_R,
        bottom=CHART_H - PAD_B,
        tx=PAD_L - 4,
        ty1=PAD_T + 4,
        y0=_fmt(y0),
        y1=_fmt(y1),
        x0=_fmt(x0),
        x1=_fmt(x1),
        xl=CHART_H - 10,
        mid=f"{PAD_L + plot_w / 2:.0f}",
        x_label=x_label,
        lines=mark_safe("".join(lines)),  # noqa: S308 - each part was built by format_html above
    )
    return format_html('<figure class="chart-box">{}<figcaption class="legend">{}</figcaption></figure>', svg, legend)
