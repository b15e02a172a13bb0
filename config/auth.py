"""The login page, with a brake on password guessing.

Failed attempts are counted per (username, client address) in the "shared" cache, which all web
processes see. After LOGIN_FAILURE_LIMIT failures within LOGIN_FAILURE_WINDOW_SECONDS the pair is
locked out: the form answers 429 without checking the password, so a guesser learns nothing more,
even when a guess is right. Keying on the pair (not the username alone) means an attacker cannot
lock a colleague out from elsewhere by failing on purpose; a successful login clears the count.
"""

from __future__ import annotations

import functools
import hashlib
import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.core.cache import caches
from django.core.exceptions import PermissionDenied
from django.shortcuts import render

from config import prepared

log = logging.getLogger(__name__)


def _key(username: str, address: str) -> str:
    # Hashed: usernames are user input and cache keys have a restricted alphabet (memcached).
    raw = f"{username.strip().lower()}\0{address}".encode("utf-8", "surrogatepass")
    return "login-failures:" + hashlib.sha256(raw).hexdigest()


def client_address(request) -> str:
    # REMOTE_ADDR only: X-Forwarded-For is whatever the client says unless a proxy we trust
    # rewrites it, and gunicorn behind the compose proxy already sees the proxy's peer address.
    return request.META.get("REMOTE_ADDR") or "unknown"


def _failures(key: str) -> int:
    try:
        return int(caches["shared"].get(key) or 0)
    except Exception:  # the shared cache (Redis) is down: fail open rather than lock everyone out
        log.warning("login throttle: the shared cache is unavailable; not counting", exc_info=True)
        return 0


def _record_failure(key: str) -> None:
    cache = caches["shared"]
    window = settings.LOGIN_FAILURE_WINDOW_SECONDS
    try:
        # add() starts the window on the first failure; incr() keeps its expiry, so the lockout
        # ends a window after the first failure, not after the latest one.
        if not cache.add(key, 1, timeout=window):
            cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.add(key, 1, timeout=window)
    except Exception:
        log.warning("login throttle: the shared cache is unavailable; not counting", exc_info=True)


def _clear(key: str) -> None:
    try:
        caches["shared"].delete(key)
    except Exception:
        log.warning("login throttle: the shared cache is unavailable", exc_info=True)


def throttle_login(view):
    """Wraps a login view (ours, and the admin's, which is a second login form)."""

    @functools.wraps(view)
    def wrapped(request, *args, **kwargs):
        if request.method != "POST":
            return view(request, *args, **kwargs)
        username = request.POST.get("username", "")
        key = _key(username, client_address(request))
        if _failures(key) >= settings.LOGIN_FAILURE_LIMIT:
            log.warning("login throttle: %r from %s is locked out", username[:150], client_address(request))
            minutes = max(1, settings.LOGIN_FAILURE_WINDOW_SECONDS // 60)
            message = f"Too many failed attempts. Try again in {minutes} minutes or ask an admin."
            response = render(request, "registration/login.html", {"locked_out": message}, status=429)
            response.headers["Retry-After"] = str(settings.LOGIN_FAILURE_WINDOW_SECONDS)
            return response
        response = view(request, *args, **kwargs)
        if request.user.is_authenticated and response.status_code in (301, 302, 303):
            _clear(key)
        elif not request.user.is_authenticated:
            _record_failure(key)
        return response

    return wrapped


login_view = throttle_login(auth_views.LoginView.as_view())


class Backend(ModelBackend):
    """Django's ModelBackend, with the user look-up that every request makes as a prepared
    statement (config.prepared; the ORM's query building cost as much as the look-up).

    settings.AUTHENTICATION_BACKENDS lists this class and, after it, Django's ModelBackend: a
    session remembers the backend that logged it in and is served only while that backend is
    listed, so the second entry keeps sessions from before this class was configured logged in.
    A login that fails here ends the search (PermissionDenied), rather than checking the same
    password a second time against the same table in the second entry."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            raise PermissionDenied
        return user

    def get_user(self, user_id):
        model = get_user_model()
        sql = f"SELECT * FROM {model._meta.db_table} WHERE {model._meta.pk.column} = %s"
        user = next(iter(model._default_manager.raw(*prepared.statement("rlhf_user_load", sql, [user_id]))), None)
        return user if user is not None and self.user_can_authenticate(user) else None
