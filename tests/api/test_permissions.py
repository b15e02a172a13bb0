"""Who may call what: every endpoint and method of the API against every role.

Roles: anonymous; an annotator of the project; an annotator of another project ("outsider");
the project's admin; staff. A project you are not in answers 404, as if it did not exist; a
member asking for an admin-only operation gets 403. The last test walks the URL resolver and
fails when an endpoint has no row here, so a new endpoint cannot ship without deciding this.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from django.urls import reverse

from annotation import queue
from annotation.api import urls as api_urls
from annotation.api.services import api_token_create
from tests.api.conftest import ROLES, World

A, N, O, D, S = ROLES  # noqa: E741 - anonymous, aNnotator, Outsider, aDmin, Staff


@dataclass(frozen=True)
class Row:
    name: str
    method: str
    expected: dict[str, int]
    kwargs: Callable[[World], dict] = lambda w: {}
    body: Callable[[World, object], object] = lambda w, user: None
    query: str = ""


def everyone(status: int) -> dict[str, int]:
    return dict.fromkeys(ROLES, status)


def signed_in(status: int) -> dict[str, int]:
    return {A: 401, N: status, O: status, D: status, S: status}


def members(status: int) -> dict[str, int]:
    return {A: 401, N: status, O: 404, D: status, S: status}


def admins(status: int) -> dict[str, int]:
    return {A: 401, N: 403, O: 404, D: status, S: status}


def slug(w: World) -> dict:
    return {"slug": w.project.slug}


def leased(w: World, user) -> dict:
    """A comparison the caller holds a lease on (when the caller can hold one)."""
    if user is None or user.username == "outsider":
        return {"comparison_id": w.comparisons[1].pk, "choice": "a"}
    assignment = queue.assignment_next(project=w.project, annotator=user)
    return {"comparison_id": assignment.comparison_id, "choice": "a", "strength": 2}


TABLE = [
    Row("api-schema", "get", everyone(200)),
    Row("api-docs", "get", everyone(200)),
    Row("api-me", "get", signed_in(200)),
    Row("api-tokens", "get", signed_in(200)),
    Row("api-tokens", "post", signed_in(201), body=lambda w, u: {"name": "laptop"}),
    Row(
        "api-token-revoke",
        "delete",
        {A: 401, N: 204, O: 404, D: 404, S: 204},
        kwargs=lambda w: {"pk": api_token_create(user=w.users["annotator"], name="victim").token.pk},
    ),
    Row("api-projects", "get", signed_in(200)),
    Row("api-projects", "post", {A: 401, N: 403, O: 403, D: 403, S: 201}, body=lambda w, u: {"name": "P", "slug": "p"}),
    Row("api-project", "get", members(200), kwargs=slug),
    Row("api-project", "patch", admins(200), kwargs=slug, body=lambda w, u: {"overlap": 2}),
    Row("api-members", "get", admins(200), kwargs=slug),
    Row(
        "api-members", "put", admins(200), kwargs=slug, body=lambda w, u: {"username": "outsider", "role": "annotator"}
    ),
    Row(
        "api-member-remove",
        "delete",
        admins(204),
        kwargs=lambda w: {"slug": w.project.slug, "user_id": w.users["other"].pk},
    ),
    Row(
        "api-import",
        "post",
        admins(201),
        kwargs=slug,
        body=lambda w, u: {"records": [{"prompt": "New?", "chosen": "yes", "rejected": "no"}]},
    ),
    Row("api-prompts", "get", admins(200), kwargs=slug),
    Row("api-prompt", "get", admins(200), kwargs=lambda w: {"slug": w.project.slug, "pk": w.prompt.pk}),
    Row(
        "api-prompt-pair",
        "post",
        admins(201),
        kwargs=lambda w: {"slug": w.project.slug, "pk": w.prompt.pk},
        body=lambda w, u: {},
    ),
    Row("api-comparisons", "get", admins(200), kwargs=slug),
    Row("api-comparison", "get", admins(200), kwargs=lambda w: {"slug": w.project.slug, "pk": w.comparisons[0].pk}),
    Row("api-queue-next", "post", members(200), kwargs=slug),
    Row("api-queue-submit", "post", members(201), kwargs=slug, body=leased),
    Row(
        "api-queue-skip",
        "post",
        members(200),
        kwargs=slug,
        body=lambda w, u: {**leased(w, u), "reason": "unclear"},
    ),
    Row("api-assignments", "get", members(200), kwargs=slug),
    Row("api-preferences", "get", members(200), kwargs=slug),
    # Another annotator's label: hidden from annotators, visible to admins.
    Row(
        "api-preference",
        "get",
        {A: 401, N: 404, O: 404, D: 200, S: 200},
        kwargs=lambda w: {"slug": w.project.slug, "pk": w.others_preference.pk},
    ),
    Row("api-export", "get", admins(200), kwargs=slug),
    Row("api-export", "get", admins(200), kwargs=slug, query="format=parquet&mode=aggregated"),
    Row("api-training-runs", "get", admins(200), kwargs=slug),
    Row("api-training-runs", "post", admins(201), kwargs=slug, body=lambda w, u: {"kind": "ppo"}),
    Row("api-training-run", "get", admins(200), kwargs=lambda w: {"slug": w.project.slug, "pk": w.run.pk}),
    Row("api-training-cancel", "post", admins(200), kwargs=lambda w: {"slug": w.project.slug, "pk": w.run.pk}),
    Row("api-model-versions", "get", admins(200), kwargs=slug),
    Row(
        "api-model-promote",
        "post",
        admins(200),
        kwargs=lambda w: {"slug": w.project.slug, "pk": w.versions[0].pk},
    ),
    Row("api-model-rollback", "post", admins(200), kwargs=slug, body=lambda w, u: {"kind": "reward"}),
]

CASES = [
    pytest.param(row, role, id=f"{row.method.upper()} {row.name}{'?' + row.query if row.query else ''} as {role}")
    for row in TABLE
    for role in ROLES
]


@pytest.mark.django_db
@pytest.mark.parametrize(("row", "role"), CASES)
def test_each_endpoint_answers_each_role_as_the_table_says(world, row, role):
    user = world.users.get(role)
    client = world.client(role)
    url = reverse(row.name, kwargs=row.kwargs(world))
    if row.query:
        url += "?" + row.query
    body = row.body(world, user)
    response = getattr(client, row.method)(url, body, format="json") if body is not None else None
    if response is None:
        response = getattr(client, row.method)(url)
    assert response.status_code == row.expected[role], (response.status_code, getattr(response, "data", None))
    if response.status_code >= 400:
        assert set(response.json()) == {"message", "errors"}


def _routes() -> set[tuple[str, str]]:
    routes = set()
    for pattern in api_urls.urlpatterns:
        view = pattern.callback
        cls = getattr(view, "cls", None) or getattr(view, "view_class", None)
        if cls is None:
            assert pattern.name == "api-not-found", f"{pattern.pattern} is a function view; give it a row"
            continue
        for method in ("get", "post", "put", "patch", "delete"):
            if hasattr(cls, method):
                routes.add((pattern.name, method))
    return routes


def test_every_endpoint_and_method_has_a_row_in_the_table():
    covered = {(row.name, row.method) for row in TABLE}
    missing = sorted(_routes() - covered)
    assert not missing, f"endpoints without a permission row: {missing}"
    assert not covered - _routes(), "the table names endpoints that no longer exist"
    assert all(set(row.expected) == set(ROLES) for row in TABLE)
