"""Every way in has a size limit, and going over it is a clear 413 (or 400) that writes nothing."""

from __future__ import annotations

import io
import json

import pytest
from django.test import Client

from annotation.models import Prompt, Role
from tests.api.conftest import client_for
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db

RECORD = json.dumps({"prompt": "What is two and two?", "chosen": "Four.", "rejected": "Five."}) + "\n"


@pytest.fixture
def admin_client(project):
    user = UserFactory(username="importer")
    MembershipFactory(project=project, user=user, role=Role.ADMIN)
    return client_for(user)


@pytest.fixture
def small_import_limit(monkeypatch):
    # The limit is 512 MB in production; a test cannot send that, so it is lowered to 4 KB.
    import importlib

    # views.data first: it loads DRF's settings, which import errors (importing errors first is a cycle).
    data = importlib.import_module("annotation.api.views.data")
    errors = importlib.import_module("annotation.api.errors")

    monkeypatch.setattr(errors, "MAX_IMPORT_FILE_BYTES", 4096)
    monkeypatch.setattr(data, "MAX_IMPORT_FILE_BYTES", 4096)


def test_an_oversize_jsonl_upload_is_a_413_and_imports_nothing(admin_client, project, small_import_limit):
    big = io.BytesIO((RECORD * 200).encode())
    big.name = "pairs.jsonl"
    response = admin_client.post(f"/api/v1/projects/{project.slug}/import/", {"file": big}, format="multipart")
    assert response.status_code == 413, response.content[:300]
    assert "4,096 bytes" in response.json()["message"]
    assert not Prompt.objects.exists()


def test_an_oversize_raw_jsonl_body_is_a_413_and_imports_nothing(admin_client, project, small_import_limit):
    url = f"/api/v1/projects/{project.slug}/import/"
    response = admin_client.generic("POST", url, RECORD * 200, content_type="application/jsonl")
    assert response.status_code == 413
    assert not Prompt.objects.exists()
    # Under the limit the same kind of body goes through: the limit, not the format, refused it.
    assert admin_client.generic("POST", url, RECORD * 10, content_type="application/jsonl").status_code == 201


def test_an_oversize_json_body_is_a_413(admin_client, project, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    records = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(200)]
    response = admin_client.post(f"/api/v1/projects/{project.slug}/import/", {"records": records}, format="json")
    assert response.status_code == 413 and "2,048 bytes" in response.json()["message"]
    assert not Prompt.objects.exists()


def test_an_oversize_login_form_is_refused_before_any_password_check(settings, db):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2048
    response = Client().post("/accounts/login/", {"username": "x", "password": "p" * 10_000})
    assert response.status_code == 400


def test_an_oversize_labelling_body_is_a_400_naming_the_limit(project, annotator):
    client = Client()
    client.force_login(annotator)
    body = json.dumps({"comparison_id": 1, "choice": "a", "rationale": "x" * 70_000})
    response = client.post(f"/p/{project.slug}/submit", body, content_type="application/json")
    assert response.status_code == 400 and "64 KB" in response.json()["message"]


def test_a_multipart_body_declared_over_the_limit_is_refused_unread(admin_client, project, small_import_limit):
    # The declared length alone decides: the body here is tiny, so only the header can have refused it.
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n\r\n' + RECORD.encode()
    body += b"\r\n--b--\r\n"
    response = admin_client.generic(
        "POST",
        f"/api/v1/projects/{project.slug}/import/",
        body,
        content_type="multipart/form-data; boundary=b",
        CONTENT_LENGTH="5000",
    )
    assert response.status_code == 413
    assert not Prompt.objects.exists()
