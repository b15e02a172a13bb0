"""Tokens (hashed, shown once, revocable), session auth with CSRF, and the one error shape that
every failure has — including input malformed in ways a serializer never sees."""

from __future__ import annotations

import json

import pytest
from django.middleware.csrf import _get_new_csrf_string, _mask_cipher_secret
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from annotation.api.models import ApiToken, key_digest
from annotation.models import Prompt
from tests.api.conftest import client_for

pytestmark = pytest.mark.django_db


def assert_error_shape(response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.content[:500])
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"message", "errors"}
    assert isinstance(body["message"], str) and body["message"]
    assert all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in body["errors"].values())
    return body


def test_a_new_token_is_shown_once_and_stored_only_as_its_digest(world):
    client = world.client("annotator")
    created = client.post("/api/v1/tokens/", {"name": "laptop"}, format="json")
    assert created.status_code == 201
    key = created.json()["key"]
    token = ApiToken.objects.get(pk=created.json()["id"])
    assert token.digest == key_digest(key) and key not in (token.digest, token.prefix)
    assert key.startswith(token.prefix)
    listed = client.get("/api/v1/tokens/").json()["results"]
    assert all("key" not in row for row in listed)
    me = APIClient()
    me.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert me.get("/api/v1/me/").json()["username"] == "annotator"


def test_a_revoked_token_is_refused_at_once(world):
    client = world.client("annotator")
    key = client.post("/api/v1/tokens/", {"name": "ci"}, format="json").json()["key"]
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert other.get("/api/v1/me/").status_code == 200
    token_id = ApiToken.objects.get(digest=key_digest(key)).pk
    assert client.delete(f"/api/v1/tokens/{token_id}/").status_code == 204
    body = assert_error_shape(other.get("/api/v1/me/"), 401)
    assert "revoked" in body["message"]


def test_staff_can_make_a_token_for_another_user_and_annotators_cannot(world):
    target = world.users["annotator"].pk
    made = world.client("staff").post("/api/v1/tokens/", {"name": "for ann", "user": target}, format="json")
    assert made.status_code == 201 and made.json()["user"] == "annotator"
    refused = world.client("other").post("/api/v1/tokens/", {"name": "x", "user": target}, format="json")
    assert_error_shape(refused, 403)
    assert_error_shape(world.client("other").get(f"/api/v1/tokens/?user={target}"), 403)


def test_an_inactive_user_s_token_stops_working(world):
    client = world.client("annotator")
    user = world.users["annotator"]
    user.is_active = False
    user.save()
    assert_error_shape(client.get("/api/v1/me/"), 401)


@pytest.mark.parametrize(
    "header",
    [
        "Token",
        "Token a b",
        "Token not-a-key",
        "Token " + "x" * 5000,
        "Token caf\xe9",
        "Bearer abc",
        "Basic Zm9vOmJhcg==",
    ],
)
def test_a_malformed_authorization_header_is_a_401_not_a_crash(world, header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get("/api/v1/me/")
    assert_error_shape(response, 401)


def test_session_auth_works_for_the_pages_and_enforces_csrf(world):
    client = Client(enforce_csrf_checks=True)
    client.force_login(world.users["admin"])
    assert client.get("/api/v1/projects/main/").status_code == 200
    refused = client.patch("/api/v1/projects/main/", json.dumps({"overlap": 3}), content_type="application/json")
    assert "CSRF" in assert_error_shape(refused, 403)["message"]
    # What a page does: send the cookie's token back in the X-CSRFToken header.
    secret = _get_new_csrf_string()
    client.cookies["csrftoken"] = secret
    accepted = client.patch(
        "/api/v1/projects/main/",
        json.dumps({"overlap": 3}),
        content_type="application/json",
        HTTP_X_CSRFTOKEN=_mask_cipher_secret(secret),
    )
    assert accepted.status_code == 200 and accepted.json()["overlap"] == 3


def test_anonymous_requests_get_401_with_a_www_authenticate_header(world):
    response = APIClient().get("/api/v1/projects/")
    assert_error_shape(response, 401)
    assert response["WWW-Authenticate"] == "Token"


def test_field_errors_name_the_field(world):
    response = world.client("admin").patch("/api/v1/projects/main/", {"overlap": 0, "gold_rate": 7}, format="json")
    body = assert_error_shape(response, 400)
    assert set(body["errors"]) == {"overlap", "gold_rate"}


@pytest.mark.parametrize(
    ("content_type", "payload"),
    [
        ("application/json", b'{"records": '),  # truncated JSON
        ("application/json", b"\xff\xfe\x00{"),  # not UTF-8
        ("application/json", b'{"records": [], "max_pairs_per_prompt": NaN}'),  # not JSON (NaN)
        ("application/json", b'{"records": [{"prompt": "\\u0000", "chosen": "a", "rejected": "b"}]}'),  # NUL
        ("application/json", b'{"records": [{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}]}'),  # surrogate
        ("application/json", b'{"records": [{"prompt": "p", "chosen": "\\udfff", "rejected": "b"}]}'),
        ("application/json", b'{"records": [{"prompt": "p", "chosen": "a", "rejected": "b"}], "source": "\\u0000"}'),
        ("application/json", b"[" * 100_000),  # deep nesting
        ("application/json", b'{"max_pairs_per_prompt": 1' + b"0" * 5000 + b"}"),  # an integer too long to parse
        ("application/json", b'{"records": [{}], "max_pairs_per_prompt": 99999999999999999999}'),
        ("application/json", b'"just a string"'),
        ("application/json", b"null"),
        ("application/json", b"[1, 2, 3]"),
        ("application/jsonl", b'{"prompt": "p", "chosen": "a", "rejected": "\\u0000"}\n'),
        ("application/jsonl", b"\xff\n{}\n"),
        ("application/jsonl", b""),
        ("text/plain", b"overlap=2"),
        ("multipart/form-data; boundary=x", b"--x\r\nbroken"),
        ("multipart/form-data", b"no boundary"),
    ],
)
def test_malformed_bodies_are_400_or_415_never_500(world, content_type, payload):
    client = world.client("admin")
    before = Prompt.objects.count()
    response = client.generic("POST", "/api/v1/projects/main/import/", payload, content_type=content_type)
    assert response.status_code in (400, 415), response.content[:300]
    assert_error_shape(response, response.status_code)
    assert Prompt.objects.count() == before


def test_a_body_over_the_limit_is_a_413(world, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1000
    client = world.client("admin")
    payload = json.dumps({"records": [{"prompt": "p" * 2000, "chosen": "a", "rejected": "b"}]})
    response = client.generic("POST", "/api/v1/projects/main/import/", payload, content_type="application/json")
    assert_error_shape(response, 413)
    assert not Prompt.objects.filter(text__startswith="ppp").exists()


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/nowhere/",
        "/api/v1/projects/main/prompts/99999999999999999999999999/",
        "/api/v1/projects/main/preferences/0/",
        "/api/v1/projects/%ff%fe/",
        "/api/v1/projects/main/prompts/?cursor=garbage",
        "/api/v1/projects/main/preferences/?since=yesterday&comparison=-1",
        "/api/v1/projects/main/preferences/?comparison=1%00",
        "/api/v1/projects/main/export/?format=xml&mode=weird&min_agreement=2",
        "/api/v1/projects/main/export/?since=2030-01-01T00:00:00Z&until=2020-01-01T00:00:00Z",
        "/api/v1/projects/main/export/?annotator=%00",
        "/api/v1/projects/main/export/?policy_version=99999999999999999",
    ],
)
def test_odd_urls_and_query_strings_answer_json_errors(world, path):
    response = world.client("admin").get(path)
    assert response.status_code in (400, 404), (response.status_code, response.content[:300])
    assert_error_shape(response, response.status_code)


def test_an_unsupported_method_is_a_json_405(world):
    assert_error_shape(world.client("admin").put("/api/v1/projects/main/export/"), 405)


def test_a_token_for_a_user_works_through_client_for(world):
    # client_for is what the other tests use; it must really authenticate (not force_authenticate).
    assert client_for(world.users["staff"]).get("/api/v1/me/").json()["is_staff"] is True
    assert reverse("api-me") == "/api/v1/me/"


def test_an_admin_creates_a_token_in_the_admin_site_and_sees_the_key_once(world):
    staff = world.users["staff"]
    staff.is_superuser = True
    staff.save()
    client = Client()
    client.force_login(staff)
    target = world.users["annotator"]
    response = client.post("/admin/api/apitoken/add/", {"user": target.pk, "name": "from admin"}, follow=True)
    assert response.status_code == 200
    token = ApiToken.objects.get(name="from admin")
    shown = [str(m) for m in response.context["messages"] if str(m).startswith("Token for")]
    assert len(shown) == 1
    key = shown[0].split("Token for annotator: ")[1].split(" ")[0]
    assert token.user == target and token.digest == key_digest(key) and token.created_by == staff
    assert key not in client.get(f"/admin/api/apitoken/{token.pk}/change/").content.decode()
    api = APIClient()
    api.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert api.get("/api/v1/me/").json()["username"] == "annotator"
    client.post("/admin/api/apitoken/", {"action": "revoke", "_selected_action": [token.pk]})
    assert api.get("/api/v1/me/").status_code == 401
