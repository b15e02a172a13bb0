"""The Django admin works for every model, and the home page shows an annotator their progress."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.urls import reverse
from django.utils import timezone

from annotation.models import Assignment
from tests.factories import UserFactory, make_comparison, make_preference
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db


@pytest.fixture
def populated(project, annotator):
    comparison = make_comparison(project=project)
    make_preference(comparison=comparison, annotator=annotator)
    now = timezone.now()
    Assignment.objects.create(
        project=project,
        comparison=comparison,
        annotator=UserFactory(),
        shown_left="b",
        leased_at=now,
        expires_at=now + timezone.timedelta(minutes=5),
    )
    run = TrainingRun.objects.create(
        project=project, kind="reward", status="succeeded", started_at=now, finished_at=now
    )
    ModelVersion.objects.create(
        project=project, kind="reward", version=1, artifact_path="/m", base="b", run=run, is_active=True
    )
    return comparison


def test_every_admin_page_of_every_model_opens_for_staff(client, staff, populated):
    client.force_login(staff)
    for model, model_admin in admin.site._registry.items():
        meta = model._meta
        if meta.app_label not in {"annotation", "training"}:
            continue
        changelist = reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist")
        assert client.get(changelist).status_code == 200, changelist
        assert client.get(changelist, {"q": "a"}).status_code == 200, changelist
        for list_filter in model_admin.list_filter:
            if isinstance(list_filter, str) and "__" not in list_filter:
                assert client.get(changelist, {f"{list_filter}__isnull": "False"}).status_code in (200, 302)
        assert client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_add")).status_code == 200
        obj = model.objects.first()
        assert obj is not None, f"no {meta.model_name} in the fixture"
        change = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])
        assert client.get(change).status_code == 200, change


def test_staff_delete_a_project_with_its_data_in_the_admin(client, staff, project, populated):
    from annotation.models import Comparison, Preference, Project

    client.force_login(staff)
    url = reverse("admin:annotation_project_delete", args=[project.pk])
    assert client.get(url).status_code == 200
    assert client.post(url, {"post": "yes"}).status_code == 302
    assert not Project.objects.filter(pk=project.pk).exists()
    assert not Comparison.objects.filter(project_id=project.pk).exists()
    assert not Preference.objects.filter(project_id=project.pk).exists()
    assert not ModelVersion.objects.filter(project_id=project.pk).exists()


def test_the_admin_is_closed_to_annotators(client, annotator):
    client.force_login(annotator)
    response = client.get(reverse("admin:annotation_preference_changelist"))
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_the_home_page_shows_an_annotator_their_progress(client, project, annotator):
    done = make_comparison(project=project)
    make_preference(comparison=done, annotator=annotator)
    make_comparison(project=project)
    make_comparison(project=project)
    client.force_login(annotator)
    page = client.get("/").content.decode()
    assert project.name in page
    assert "<td>1</td><td>1</td><td>2</td>" in page.replace("\n", "").replace(" ", "")


def test_the_home_page_asks_a_visitor_to_log_in(client):
    response = client.get("/")
    assert response.status_code == 302 and response["Location"].startswith("/accounts/login/")


def test_health_check_answers(client):
    assert client.get("/healthz").content == b"ok\n"
