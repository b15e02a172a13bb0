"""The annotator's pages: home, and the labelling page with its JSON endpoints.

The labelling page's endpoints (next, submit, skip) live under the page's own URL, use the session
and Django's CSRF check, and answer JSON: 200 with the result, or an error object
{"code", "message", "errors": {field: [message]}} with 400 (bad input), 409 (the queue refused:
not_leased, already_labelled, lease_expired), 403 or 404. A visitor who is not logged in is sent
to the login page, like on every page.
"""

from __future__ import annotations

import json

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import connection
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.template.loader import render_to_string
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET, require_POST

from annotation import queue, selectors
from annotation.markdown import render_markdown
from annotation.models import Assignment, Project
from annotation.queue import QueueError

# The page sends small JSON bodies; anything bigger is a mistake or an attack and is refused
# before it is read.
MAX_BODY_BYTES = 64 * 1024
# A prefetching page excludes the comparison on screen and those whose submit is in flight.
MAX_EXCLUDED = 10
STATUS_FOR_CODE = {
    queue.INVALID: 400,
    queue.NOT_LEASED: 409,
    queue.ALREADY_LABELLED: 409,
    queue.LEASE_EXPIRED: 409,
}


@login_required
def home(request: HttpRequest) -> HttpResponse:
    projects = selectors.project_progress_for_user(user=request.user)
    labelling = queue.labelling_project_ids(user=request.user)
    return render(request, "annotation/home.html", {"projects": projects, "labelling": labelling})


def healthz(request: HttpRequest) -> HttpResponse:
    """For load balancers and the compose healthcheck: 200 when the database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return HttpResponse("database unavailable\n", status=503, content_type="text/plain")
    return HttpResponse("ok\n", content_type="text/plain")


# The labelling page ---------------------------------------------------------------------------------


def _project_to_label(request: HttpRequest, slug: str) -> Project:
    """The project, if the user labels in it. Others learn nothing about it (404), except staff,
    who can see it exists and are told why they cannot label it (403)."""
    project = queue.project_to_label(user=request.user, slug=slug)
    if project is not None:
        return project
    if request.user.is_staff and Project.objects.filter(slug=slug).exists():
        raise PermissionDenied("You are not a member of this project; add yourself in the admin to label it.")
    raise Http404("No such project.")


def _start_of_today():
    return timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)


def _fragment(request: HttpRequest, assignment: Assignment | None) -> str:
    if assignment is None:
        return render_to_string("annotation/_queue_empty.html", request=request)
    display = queue.assignment_display(assignment=assignment)
    return render_to_string("annotation/_comparison.html", {"item": display}, request=request)


@login_required
@require_GET
@never_cache
def label(request: HttpRequest, slug: str) -> HttpResponse:
    project = _project_to_label(request, slug)
    assignment = queue.assignment_next(project=project, annotator=request.user)
    if assignment is not None:
        queue.assignment_mark_shown(assignment=assignment)
    context = {
        "project": project,
        "guidelines_html": render_markdown(project.guidelines),
        "fragment": _fragment(request, assignment),
        "labelled_today": queue.labelled_since(project=project, annotator=request.user, since=_start_of_today()),
    }
    return render(request, "annotation/label.html", context)


class BadRequest(Exception):
    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


def _error(code: str, message: str, status: int, field: str | None = None) -> JsonResponse:
    body = {"code": code, "message": message, "errors": {field: [message]} if field else {}}
    return JsonResponse(body, status=status)


def _json_body(request: HttpRequest) -> dict:
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > MAX_BODY_BYTES:
        raise BadRequest(f"The request body is larger than {MAX_BODY_BYTES // 1024} KB.")
    try:
        body = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    return body


def _int(body: dict, field: str, *, required: bool = True) -> int | None:
    value = body.get(field)
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{field} must be a whole number.", field)
    return value


def _str(body: dict, field: str, *, default: str | None = None) -> str | None:
    value = body.get(field, default)
    if value is None or isinstance(value, str):
        return value
    raise BadRequest(f"{field} must be text.", field)


def _json_view(view):
    """Login redirect, POST only, the project check, and errors as JSON."""

    @login_required
    @require_POST
    def wrapped(request: HttpRequest, slug: str) -> JsonResponse:
        try:
            project = _project_to_label(request, slug)
        except PermissionDenied as exc:
            return _error("forbidden", str(exc), 403)
        except Http404:
            return _error("not_found", "No such project, or you do not label in it.", 404)
        try:
            return view(request, project, _json_body(request))
        except BadRequest as exc:
            return _error(queue.INVALID, exc.message, 400, exc.field)
        except QueueError as exc:
            return _error(exc.code, exc.message, STATUS_FOR_CODE.get(exc.code, 400), exc.field)

    wrapped.__name__ = view.__name__
    wrapped.__doc__ = view.__doc__
    return wrapped


@_json_view
def label_next(request: HttpRequest, project: Project, body: dict) -> JsonResponse:
    """Leases (or returns the held lease of) the next comparison, skipping those in `exclude`,
    and records that the comparison in `shown` is now on screen."""
    exclude = body.get("exclude", [])
    if not isinstance(exclude, list) or len(exclude) > MAX_EXCLUDED:
        raise BadRequest(f"exclude must be a list of at most {MAX_EXCLUDED} comparison ids.", "exclude")
    if any(isinstance(cid, bool) or not isinstance(cid, int) for cid in exclude):
        raise BadRequest("exclude must hold comparison ids (whole numbers).", "exclude")
    shown = _int(body, "shown", required=False)
    if shown is not None:
        queue.lease_mark_shown(project=project, annotator=request.user, comparison_id=shown)
    assignment = queue.assignment_next(project=project, annotator=request.user, exclude_ids=exclude)
    payload = None
    if assignment is not None:
        payload = {"comparison_id": assignment.comparison_id, "shown_left": assignment.shown_left}
    return JsonResponse({"assignment": payload, "html": _fragment(request, assignment)})


@_json_view
def label_submit(request: HttpRequest, project: Project, body: dict) -> JsonResponse:
    """Stores a label. `choice` is a, b, tie or both_bad in terms of the comparison's responses;
    a retried identical submit answers 200 with created: false."""
    preference, created = queue.preference_submit(
        project=project,
        annotator=request.user,
        comparison_id=_int(body, "comparison_id"),
        choice=_str(body, "choice", default=""),
        strength=_int(body, "strength", required=False),
        rationale=_str(body, "rationale", default="") or "",
        time_spent_ms=_int(body, "time_spent_ms", required=False),
        shown_left=_str(body, "shown_left"),
    )
    return JsonResponse({"saved": True, "created": created, "comparison_id": preference.comparison_id})


@_json_view
def label_skip(request: HttpRequest, project: Project, body: dict) -> JsonResponse:
    """Gives a leased comparison back with a reason."""
    assignment = queue.assignment_skip(
        project=project,
        annotator=request.user,
        comparison_id=_int(body, "comparison_id"),
        reason=_str(body, "reason", default="") or "",
    )
    return JsonResponse({"skipped": True, "comparison_id": assignment.comparison_id})
