"""The usual cast for API tests: one project with an annotator, a second annotator and an admin,
an annotator of another project, a staff user; each can get a token-authenticated client."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from django.core.cache import cache
from rest_framework.test import APIClient

from annotation.api.services import api_token_create
from annotation.models import Role
from annotation.services import comparisons_recount
from tests.factories import (
    MembershipFactory,
    ProjectFactory,
    PromptFactory,
    ResponseFactory,
    UserFactory,
    make_preference,
)
from training.models import ModelVersion, RunKind, TrainingRun

ROLES = ("anonymous", "annotator", "outsider", "admin", "staff")


@pytest.fixture(autouse=True)
def _fresh_throttle_counts():
    # Throttle counters live in the local-memory cache, which outlives a test; without this,
    # anonymous requests from earlier tests would count against later ones.
    cache.clear()
    yield
    cache.clear()


def client_for(user) -> APIClient:
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {api_token_create(user=user, name='tests').key}")
    return client


@dataclass
class World:
    project: object
    other_project: object
    users: dict = field(default_factory=dict)
    prompt: object = None
    responses: list = field(default_factory=list)
    comparisons: list = field(default_factory=list)
    others_preference: object = None
    run: object = None
    versions: list = field(default_factory=list)

    def client(self, role: str) -> APIClient:
        return client_for(self.users.get(role))


@pytest.fixture
def world(db) -> World:
    project = ProjectFactory(slug="main")
    other_project = ProjectFactory(slug="elsewhere")
    users = {
        "annotator": UserFactory(username="annotator"),
        "other": UserFactory(username="other-annotator"),
        "outsider": UserFactory(username="outsider"),
        "admin": UserFactory(username="project-admin"),
        "staff": UserFactory(username="staff", is_staff=True),
    }
    MembershipFactory(project=project, user=users["annotator"], role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=users["other"], role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=users["admin"], role=Role.ADMIN)
    MembershipFactory(project=other_project, user=users["outsider"], role=Role.ANNOTATOR)
    w = World(project=project, other_project=other_project, users=users)
    w.prompt = PromptFactory(project=project, text="Which is kinder?")
    w.responses = [ResponseFactory(prompt=w.prompt, text=t) for t in ("Kind words.", "Rude words.", "No words.")]
    from annotation.models import Comparison

    r1, r2, r3 = w.responses
    w.comparisons = [
        Comparison.objects.create(project=project, prompt=w.prompt, response_a=r1, response_b=r2),
        Comparison.objects.create(project=project, prompt=w.prompt, response_a=r1, response_b=r3),
        Comparison.objects.create(project=project, prompt=w.prompt, response_a=r2, response_b=r3),
    ]
    w.others_preference = make_preference(comparison=w.comparisons[0], annotator=users["other"], choice="a")
    comparisons_recount(comparison_ids=[w.comparisons[0].pk])
    w.run = TrainingRun.objects.create(project=project, kind=RunKind.REWARD)
    w.versions = [
        ModelVersion.objects.create(project=project, kind="reward", version=1, artifact_path="/a/1", base="b"),
        ModelVersion.objects.create(
            project=project, kind="reward", version=2, artifact_path="/a/2", base="b", is_active=True
        ),
    ]
    return w
