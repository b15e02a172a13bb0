"""Who may use the console, and what each of its forms does with good and bad input."""

from __future__ import annotations

import io
import json

import pytest
from django.urls import reverse
from django_celery_beat.models import PeriodicTask

from annotation.models import Comparison, Preference, Prompt
from tests.factories import UserFactory
from training.models import ModelVersion, TrainingRun

pytestmark = pytest.mark.django_db

PAGES = [
    ("console-dashboard", {}),
    ("console-training", {}),
    ("console-policies", {}),
    ("console-disagreements", {}),
    ("console-data", {}),
    ("console-run-status", {"pk": "run"}),
]
ACTIONS = [
    ("console-run-start", {}, {"kind": "reward"}),
    ("console-run-cancel", {"pk": "run"}, {}),
    ("console-model-promote", {"pk": "version"}, {}),
    ("console-model-rollback", {}, {"kind": "reward"}),
    ("console-loop", {}, {"retrain_threshold": "5"}),
    ("console-data", {}, {}),
]


@pytest.fixture
def things(project):
    run = TrainingRun.objects.create(project=project, kind="ppo")
    old = ModelVersion.objects.create(project=project, kind="reward", version=1, artifact_path="/m1", base="b")
    new = ModelVersion.objects.create(
        project=project, kind="reward", version=2, artifact_path="/m2", base="b", is_active=True
    )
    return {"run": run.pk, "version": old.pk, "old": old, "new": new, "run_obj": run}


def url_for(name, kwargs, things, project):
    return reverse(name, kwargs={"slug": project.slug, **{k: things[v] for k, v in kwargs.items()}})


def unchanged(things) -> bool:
    things["run_obj"].refresh_from_db()
    return (
        things["run_obj"].status == "queued"
        and TrainingRun.objects.count() == 1
        and ModelVersion.objects.get(is_active=True) == things["new"]
    )


@pytest.mark.parametrize(("name", "kwargs"), PAGES)
def test_every_console_page_sends_visitors_to_login_refuses_annotators_and_serves_admins(
    client, project, annotator, project_admin, staff, things, name, kwargs
):
    url = url_for(name, kwargs, things, project)
    response = client.get(url)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    client.force_login(annotator)
    assert client.get(url).status_code == 403
    client.force_login(UserFactory())  # a member of nothing
    assert client.get(url).status_code == 403
    for admin in (project_admin, staff):
        client.force_login(admin)
        assert client.get(url).status_code == 200


@pytest.mark.parametrize(("name", "kwargs", "data"), ACTIONS)
def test_every_console_action_refuses_visitors_and_annotators_and_changes_nothing(
    client, project, annotator, things, name, kwargs, data
):
    url = url_for(name, kwargs, things, project)
    response = client.post(url, data)
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    client.force_login(annotator)
    assert client.post(url, data).status_code == 403
    assert unchanged(things)
    project.refresh_from_db()
    assert project.retrain_threshold == 200


def test_the_console_index_lists_admins_projects_and_refuses_annotators(client, project, annotator, project_admin):
    client.force_login(annotator)
    assert client.get(reverse("console")).status_code == 403
    assert b"Console</a>" not in client.get(reverse("home")).content
    client.force_login(project_admin)
    response = client.get(reverse("console"))
    assert response.status_code == 200 and project.name.encode() in response.content
    assert b"Console</a>" in client.get(reverse("home")).content


def test_forms_need_the_csrf_token(project, project_admin):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(project_admin)
    response = client.post(reverse("console-run-start", kwargs={"slug": project.slug}), {"kind": "reward"})
    assert response.status_code == 403
    assert not TrainingRun.objects.exists()


def test_starting_a_run_queues_it_and_bad_input_is_refused_with_a_reason(client, project, project_admin):
    client.force_login(project_admin)
    url = reverse("console-run-start", kwargs={"slug": project.slug})
    for data, words in [
        ({"kind": "nonsense"}, b"kind must be one of"),
        ({"kind": "reward", "config": "{not json"}, b"config is not valid JSON"),
        ({"kind": "reward", "config": "[1]"}, b"config must be a JSON object"),
    ]:
        response = client.post(url, data)
        assert response.status_code == 400 and words in response.content
    assert not TrainingRun.objects.exists()
    response = client.post(url, {"kind": "reward", "config": '{"trainer": {"epochs": 1}}'})
    run = TrainingRun.objects.get()
    assert response.status_code == 302 and response["Location"].endswith(f"?run={run.pk}")
    assert run.config == {"trainer": {"epochs": 1}} and run.created_by == project_admin
    # One active run of a kind per project: the second is a conflict, and nothing is added.
    response = client.post(url, {"kind": "reward"})
    assert response.status_code == 409 and b"already queued or running" in response.content
    assert TrainingRun.objects.count() == 1


def test_cancel_promote_and_rollback_call_the_services(client, project, project_admin, things):
    client.force_login(project_admin)
    slug = project.slug
    assert client.post(reverse("console-run-cancel", kwargs={"slug": slug, "pk": things["run"]})).status_code == 302
    things["run_obj"].refresh_from_db()
    assert things["run_obj"].status == "cancelled"
    response = client.post(reverse("console-run-cancel", kwargs={"slug": slug, "pk": things["run"]}))
    assert response.status_code == 409
    response = client.post(reverse("console-model-rollback", kwargs={"slug": slug}), {"kind": "reward"})
    assert response.status_code == 302
    assert ModelVersion.objects.get(is_active=True) == things["old"]
    response = client.post(reverse("console-model-promote", kwargs={"slug": slug, "pk": things["new"].pk}))
    assert response.status_code == 302 and ModelVersion.objects.get(is_active=True) == things["new"]
    response = client.post(reverse("console-model-rollback", kwargs={"slug": slug}), {"kind": "policy"})
    assert response.status_code == 409 and b"no active policy model" in response.content


def test_the_loop_form_sets_thresholds_and_only_staff_change_the_shared_schedule(client, project, project_admin, staff):
    url = reverse("console-loop", kwargs={"slug": project.slug})
    client.force_login(project_admin)
    response = client.post(url, {"retrain_threshold": "0"})
    assert response.status_code == 400 and b"retrain_threshold" in response.content
    assert client.post(url, {"retrain_threshold": "50", "auto_training": "on"}).status_code == 302
    project.refresh_from_db()
    assert project.retrain_threshold == 50 and project.auto_training
    response = client.post(url, {"retrain_threshold": "50", "interval_seconds": "300", "enabled": "on"})
    assert response.status_code == 403
    client.force_login(staff)
    assert client.post(url, {"retrain_threshold": "60", "interval_seconds": "300"}).status_code == 302
    task = PeriodicTask.objects.get(name="training loop")
    assert task.interval.every == 300 and task.interval.period == "seconds" and not task.enabled
    project.refresh_from_db()
    assert project.retrain_threshold == 60 and not project.auto_training
    response = client.post(url, {"retrain_threshold": "60", "interval_seconds": "1"})
    assert response.status_code == 400
    assert PeriodicTask.objects.get(name="training loop").interval.every == 300


def test_import_writes_a_good_file_and_refuses_a_bad_one_line_by_line_writing_nothing(client, project, project_admin):
    client.force_login(project_admin)
    url = reverse("console-data", kwargs={"slug": project.slug})
    bad = b'{"prompt": "p1", "chosen": "x", "rejected": "y"}\nnot json\n{"prompt": "p2"}\n'
    response = client.post(url, {"file": io.BytesIO(bad)})
    assert response.status_code == 400
    assert b"line 2" in response.content and b"line 3" in response.content
    assert not Prompt.objects.exists()
    good = "\n".join(
        json.dumps({"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"}) for i in range(3)
    ).encode()
    response = client.post(url, {"file": io.BytesIO(good)})
    assert response.status_code == 200 and b"3 prompts" in response.content
    assert Comparison.objects.count() == 3 and Preference.objects.count() == 3
    assert client.post(url, {}).status_code == 400
    page = client.get(url).content.decode()
    assert f"/api/v1/projects/{project.slug}/export/?format=trl&amp;mode=raw" in page


def test_model_text_and_run_errors_are_escaped_on_the_console(client, project, project_admin, settings, tmp_path):
    settings.ARTIFACT_ROOT = tmp_path
    run = TrainingRun.objects.create(project=project, kind="reward", error="<script>alert(1)</script>")
    client.force_login(project_admin)
    page = client.get(reverse("console-training", kwargs={"slug": project.slug})).content.decode()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    status = client.get(reverse("console-run-status", kwargs={"slug": project.slug, "pk": run.pk})).json()
    assert "<script>alert" not in status["panel"] and status["status"] == "queued" and status["finished"] is False
    user = UserFactory(username="<img src=x onerror=alert(1)>")
    from tests.console.conftest import label
    from tests.factories import make_comparison

    label(make_comparison(project=project), user, "a")
    page = client.get(reverse("console-dashboard", kwargs={"slug": project.slug})).content.decode()
    assert "<img src=x" not in page and "&lt;img src=x" in page
