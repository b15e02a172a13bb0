"""The session store (config.sessions) and the auth backend (config.auth.Backend) that make the
per-request look-ups prepared statements: they must accept exactly what Django's own accept, keep
sessions made before them, and refuse what Django refuses."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth import SESSION_KEY, user_logged_in, user_login_failed
from django.contrib.auth.backends import ModelBackend
from django.contrib.sessions.backends.db import SessionStore as DjangoSessionStore
from django.contrib.sessions.models import Session
from django.test import Client
from django.utils import timezone

from annotation.models import Role
from config.sessions import SessionStore
from tests.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


def _home_shows(client: Client, user) -> bool:
    response = client.get("/")
    return response.status_code == 200 and user.username in response.content.decode()


@pytest.fixture
def member(project):
    user = UserFactory(username="bea")
    user.set_password("a long enough passphrase")
    user.save()
    MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
    return user


def test_the_app_uses_the_prepared_store_and_backend():
    assert settings.SESSION_ENGINE == "config.sessions"
    assert settings.AUTHENTICATION_BACKENDS[0] == "config.auth.Backend"


def test_a_session_written_by_djangos_own_store_loads_in_ours():
    # The signing salt names the class: ours keeps Django's name, so nobody is logged out.
    old = DjangoSessionStore()
    old["answer"] = 42
    old.create()
    assert SessionStore(session_key=old.session_key)["answer"] == 42


def test_an_expired_or_unknown_session_loads_empty_and_drops_its_key():
    store = SessionStore()
    store["x"] = 1
    store.create()
    Session.objects.filter(session_key=store.session_key).update(expire_date=timezone.now() - timedelta(seconds=1))
    expired = SessionStore(session_key=store.session_key)
    assert expired.load() == {}
    assert expired.session_key is None
    unknown = SessionStore(session_key="x" * 32)
    assert unknown.load() == {}
    assert unknown.session_key is None


def test_a_login_through_the_form_is_served_by_the_new_backend(member):
    client = Client()
    response = client.post("/accounts/login/", {"username": "bea", "password": "a long enough passphrase"})
    assert response.status_code == 302
    assert client.session["_auth_user_backend"] == "config.auth.Backend"
    assert _home_shows(client, member)


def test_a_session_logged_in_by_djangos_backend_stays_logged_in(member):
    client = Client()
    client.force_login(member, backend="django.contrib.auth.backends.ModelBackend")
    assert _home_shows(client, member)


def test_a_deactivated_user_is_logged_out_on_the_next_request(member):
    client = Client()
    client.force_login(member, backend="config.auth.Backend")
    assert _home_shows(client, member)
    member.is_active = False
    member.save()
    response = client.get("/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_a_changed_password_ends_other_sessions(member):
    client = Client()
    client.force_login(member, backend="config.auth.Backend")
    member.set_password("another long passphrase")
    member.save()
    response = client.get("/")
    assert response.status_code == 302
    assert SESSION_KEY not in client.session


def test_a_session_naming_a_deleted_user_is_anonymous(member):
    client = Client()
    client.force_login(member, backend="config.auth.Backend")
    member.preferences.all().delete()
    member.delete()
    assert client.get("/").status_code == 302


def test_a_wrong_password_is_checked_once_not_again_by_the_second_backend(member, monkeypatch):
    calls = []
    original = ModelBackend.authenticate

    def counting(self, *args, **kwargs):
        calls.append(type(self).__module__ + "." + type(self).__name__)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ModelBackend, "authenticate", counting)
    failed, logged_in = [], []
    user_login_failed.connect(lambda **kw: failed.append(kw), weak=False, dispatch_uid="t-failed")
    user_logged_in.connect(lambda **kw: logged_in.append(kw), weak=False, dispatch_uid="t-in")
    try:
        client = Client()
        response = client.post("/accounts/login/", {"username": "bea", "password": "wrong"})
        assert response.status_code == 200
        assert SESSION_KEY not in client.session
        assert calls == ["config.auth.Backend"]
        assert len(failed) == 1 and not logged_in
        calls.clear()
        response = client.post("/accounts/login/", {"username": "bea", "password": "a long enough passphrase"})
        assert response.status_code == 302 and calls == ["config.auth.Backend"] and len(logged_in) == 1
    finally:
        user_login_failed.disconnect(dispatch_uid="t-failed")
        user_logged_in.disconnect(dispatch_uid="t-in")
