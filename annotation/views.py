from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from annotation import selectors


@login_required
def home(request: HttpRequest) -> HttpResponse:
    projects = selectors.project_progress_for_user(user=request.user)
    return render(request, "annotation/home.html", {"projects": projects})


def healthz(request: HttpRequest) -> HttpResponse:
    """For load balancers and the compose healthcheck: 200 when the database answers."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return HttpResponse("database unavailable\n", status=503, content_type="text/plain")
    return HttpResponse("ok\n", content_type="text/plain")
