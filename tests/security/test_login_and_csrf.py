"""Password guessing is throttled on both login forms, and no form or session write works
without its CSRF token."""

from __future__ import annotations

import json

import pytest
from django.core.cache import caches
from django.test import Client

from annotation.api.models import ApiToken
from annotation.api.services import api_token_create
from annotation.models import Preference, Project
from tests.factories import UserFactory, make_comparison

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_counters():
    caches["shared"].clear()
    caches["default"].clear()
    yield
    caches["shared"].clear()


@pytest.fixture
def alice(db):
    user = UserFactory(username="alice")
    user.set_password("correct horse battery staple")
    user.save()
    return user


def attempt(client: Client, password: str, username: str = "alice", url: str = "/accounts/login/"):
    return client.post(url, {"username": username, "password": password})


def test_five_wrong_passwords_lock_the_name_out_even_for_the_right_one(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 5
    client = Client()
    for _ in range(5):
        assert attempt(client, "wrong").status_code == 200
    locked = attempt(client, "correct horse battery staple")
    assert locked.status_code == 429
    assert locked.headers["Retry-After"] == str(settings.LOGIN_FAILURE_WINDOW_SECONDS)
    assert "Too many failed attempts" in locked.content.decode()
    assert "_auth_user_id" not in client.session


def test_the_lockout_is_per_address_so_nobody_can_lock_a_colleague_out_from_elsewhere(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    attacker = Client(REMOTE_ADDR="203.0.113.9")
    for _ in range(3):
        attempt(attacker, "guess")
    assert attempt(attacker, "guess").status_code == 429
    colleague = Client(REMOTE_ADDR="198.51.100.7")
    assert attempt(colleague, "correct horse battery staple").status_code == 302


def test_a_successful_login_clears_the_count(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 3
    client = Client()
    attempt(client, "typo")
    attempt(client, "typo")
    assert attempt(client, "correct horse battery staple").status_code == 302
    client.logout()
    attempt(client, "typo")
    attempt(client, "typo")
    assert attempt(client, "correct horse battery staple").status_code == 302


def test_the_username_is_counted_whatever_its_case(alice, settings):
    settings.LOGIN_FAILURE_LIMIT = 2
    client = Client()
    attempt(client, "x", username="alice")
    attempt(client, "x", username="ALICE ")
    assert attempt(client, "correct horse battery staple").status_code == 429


def test_the_admin_login_form_is_throttled_too(alice, settings):
    alice.is_staff = True
    alice.save()
    settings.LOGIN_FAILURE_LIMIT = 2
    client = Client()
    for _ in range(2):
        assert attempt(client, "nope", url="/admin/login/").status_code == 200
    assert attempt(client, "correct horse battery staple", url="/admin/login/").status_code == 429
    # The two forms share the count: the main form is locked as well.
    assert attempt(client, "correct horse battery staple").status_code == 429


# CSRF ------------------------------------------------------------------------------------------------


def test_every_page_form_carries_a_csrf_token(alice, project):
    client = Client(enforce_csrf_checks=True)
    login_page = client.get("/accounts/login/").content.decode()
    assert 'name="csrfmiddlewaretoken"' in login_page
    client.force_login(alice)
    home = client.get("/").content.decode()
    # The log-out form in the top bar.
    assert home.count("<form") == home.count('name="csrfmiddlewaretoken"') >= 1


@pytest.mark.parametrize(
    "url,data",
    [
        ("/accounts/login/", {"username": "alice", "password": "correct horse battery staple"}),
        ("/admin/login/", {"username": "alice", "password": "correct horse battery staple"}),
    ],
)
def test_a_login_without_the_csrf_token_is_refused(alice, url, data):
    client = Client(enforce_csrf_checks=True)
    response = client.post(url, data)
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_log_out_and_admin_writes_without_the_token_are_refused(alice, project):
    alice.is_staff = alice.is_superuser = True
    alice.save()
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    assert client.post("/accounts/logout/").status_code == 403
    assert "_auth_user_id" in client.session
    before = Project.objects.count()
    response = client.post("/admin/annotation/project/add/", {"name": "Sneaky", "slug": "sneaky", "overlap": 1})
    assert response.status_code == 403 and Project.objects.count() == before
    response = client.post(f"/admin/annotation/project/{project.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403 and Project.objects.filter(pk=project.pk).exists()


def test_labelling_and_session_api_writes_need_the_token(alice, project):
    from annotation.models import Membership, Role

    Membership.objects.create(project=project, user=alice, role=Role.ADMIN)
    comparison = make_comparison(project=project)
    client = Client(enforce_csrf_checks=True)
    client.force_login(alice)
    page = client.get(f"/p/{project.slug}/")
    assert page.status_code == 200
    body = json.dumps({"comparison_id": comparison.pk, "choice": "a", "strength": 2, "shown_left": "a"})
    for url in (f"/p/{project.slug}/next", f"/p/{project.slug}/submit", f"/p/{project.slug}/skip"):
        assert client.post(url, body, content_type="application/json").status_code == 403, url
    api_writes = [
        ("post", f"/api/v1/projects/{project.slug}/queue/submit/", {"comparison_id": comparison.pk, "choice": "a"}),
        ("post", "/api/v1/tokens/", {"name": "stolen"}),
        ("patch", f"/api/v1/projects/{project.slug}/", {"name": "renamed"}),
        ("post", f"/api/v1/projects/{project.slug}/training-runs/", {"kind": "reward"}),
    ]
    for method, url, data in api_writes:
        response = getattr(client, method)(url, json.dumps(data), content_type="application/json")
        assert response.status_code == 403, (url, response.status_code)
        assert "CSRF" in response.json()["message"], url
    assert not Preference.objects.exists() and not ApiToken.objects.exists()
    project.refresh_from_db()
    assert project.name != "renamed"
    # With the token from the cookie the same session write goes through.
    token = client.cookies["csrftoken"].value
    ok = client.post(
        "/api/v1/tokens/", json.dumps({"name": "mine"}), content_type="application/json", HTTP_X_CSRFTOKEN=token
    )
    assert ok.status_code == 201


def test_a_revoked_token_is_refused_and_no_key_is_stored_in_plain_text(alice):
    from django.db import connection

    issued = api_token_create(user=alice, name="laptop")
    client = Client()
    auth = {"HTTP_AUTHORIZATION": f"Token {issued.key}"}
    assert client.get("/api/v1/me/", **auth).status_code == 200
    with connection.cursor() as cursor:
        cursor.execute("SELECT * FROM " + ApiToken._meta.db_table)
        rows = cursor.fetchall()
    assert rows
    assert not any(issued.key in str(value) or issued.key[5:] in str(value) for row in rows for value in row)
    client.force_login(alice)
    token = client.get("/api/v1/tokens/").json()
    token_id = (token["results"] if isinstance(token, dict) else token)[0]["id"]
    client.logout()
    admin_client = Client()
    admin_client.force_login(alice)
    assert admin_client.delete(f"/api/v1/tokens/{token_id}/").status_code in (200, 204)
    refused = Client().get("/api/v1/me/", **auth)
    assert refused.status_code == 401
