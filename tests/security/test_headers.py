"""Every response carries the security headers; production settings add HSTS and secure cookies.

The CSP forbids inline scripts, so every page must work with script files only: the pages are
checked for inline <script> blocks and inline event handlers as well as for the header itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser

import pytest
from django.test import Client

from annotation.models import Role
from tests.conftest import ROOT, subprocess_env
from tests.factories import MembershipFactory, UserFactory, make_comparison, make_preference

pytestmark = pytest.mark.django_db


def csp_directives(response) -> dict[str, str]:
    header = response.headers.get("Content-Security-Policy", "")
    out = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition(" ")
        if name:
            out[name] = value.strip()
    return out


class InlineCode(HTMLParser):
    """Collects the inline code a CSP without 'unsafe-inline' would block: script bodies, script
    tags without src, on* attributes and javascript: URLs."""

    def __init__(self):
        super().__init__()
        self.problems: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self._in_script = True
            if not attrs.get("src"):
                self.problems.append("a <script> without src")
        for name, value in attrs.items():
            if name.startswith("on"):
                self.problems.append(f"{tag} {name}=")
            if name in ("href", "src", "action", "formaction") and (value or "").strip().lower().startswith(
                "javascript:"
            ):
                self.problems.append(f"{tag} {name}={value}")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and data.strip():
            self.problems.append(f"inline script: {data.strip()[:60]}")


def assert_headers(response, label: str) -> None:
    csp = csp_directives(response)
    assert csp, f"{label}: no Content-Security-Policy"
    assert csp["script-src"] == "'self'", f"{label}: {csp['script-src']}"
    assert (
        "unsafe-inline" not in csp.get("default-src", "")
        and "unsafe-eval" not in response.headers["Content-Security-Policy"]
    )
    assert csp["object-src"] == "'none'"
    assert csp["base-uri"] == "'self'"
    assert csp["frame-ancestors"] == "'none'"
    assert csp["form-action"] == "'self'"
    assert response.headers["X-Frame-Options"] == "DENY", label
    assert response.headers["X-Content-Type-Options"] == "nosniff", label
    assert "camera=()" in response.headers["Permissions-Policy"], label
    assert response.headers["Referrer-Policy"] == "same-origin", label


@pytest.fixture
def staff_member(project):
    user = UserFactory(username="root", is_staff=True, is_superuser=True)
    MembershipFactory(project=project, user=user, role=Role.ADMIN)
    return user


def page_urls(project, comparison, preference) -> list[str]:
    return [
        "/",
        f"/p/{project.slug}/",
        "/admin/",
        "/admin/annotation/response/",
        f"/admin/annotation/response/{comparison.response_a_id}/change/",
        f"/admin/annotation/prompt/{comparison.prompt_id}/change/",
        f"/admin/annotation/comparison/{comparison.pk}/change/",
        f"/admin/annotation/preference/{preference.pk}/change/",
        "/admin/training/trainingrun/",
        "/api/v1/docs/",
    ] + (["/console/"] if console_is_built() else [])


def console_is_built() -> bool:
    # The admin console is built beside this suite; once its page exists it is checked like the rest.
    from django.template import TemplateDoesNotExist
    from django.template.loader import get_template

    try:
        get_template("console/index.html")
    except TemplateDoesNotExist:
        return False
    return True


def test_every_page_has_the_security_headers_and_no_inline_script(client, project, staff_member):
    comparison = make_comparison(project=project)
    preference = make_preference(comparison=make_comparison(project=project), annotator=staff_member)
    anonymous = Client()
    for url in ["/accounts/login/", "/admin/login/", "/", "/api/v1/me/", "/no/such/page/"]:
        assert_headers(anonymous.get(url), f"anonymous {url}")
    client.force_login(staff_member)
    checked = 0
    for url in page_urls(project, comparison, preference):
        response = client.get(url, follow=True)
        assert response.status_code == 200, (url, response.status_code)
        assert_headers(response, url)
        parser = InlineCode()
        parser.feed(response.content.decode())
        assert not parser.problems, f"{url}: {parser.problems}"
        checked += 1
    assert checked >= 10
    # The docs' start-up script is a same-origin file, which script-src 'self' allows.
    script = client.get("/api/v1/docs/?script=")
    assert script.status_code == 200 and "SwaggerUIBundle" in script.content.decode()
    # JSON answers carry the headers too (an API answer opened in a tab is a page like any other).
    assert_headers(client.get("/api/v1/me/"), "/api/v1/me/")
    assert_headers(client.post(f"/p/{project.slug}/next", "{}", content_type="application/json"), "next")


PRODUCTION_PROBE = r"""
import json
from django.conf import settings
from django.test import Client
r = Client().get("/accounts/login/", secure=True)
print(json.dumps({
    "hsts": r.headers.get("Strict-Transport-Security"),
    "csrf_cookie_secure": bool(r.cookies["csrftoken"]["secure"]),
    "session_cookie_secure": settings.SESSION_COOKIE_SECURE,
    "session_cookie_httponly": settings.SESSION_COOKIE_HTTPONLY,
    "plain_http": Client().get("/accounts/login/").status_code,
}))
"""


def production_env(**extra) -> dict[str, str]:
    env = subprocess_env()
    env.update(
        DEBUG="0",
        SECRET_KEY="k" * 20 + "-production-probe-" + "x" * 40,
        ALLOWED_HOSTS="rlhf.example.com,testserver",
        **extra,
    )
    for name in ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_HSTS_SECONDS", "SECURE_SSL_REDIRECT"):
        env.pop(name, None)
    return env


def manage(env, *args) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


def test_production_settings_pass_djangos_deploy_check_with_hsts_and_secure_cookies():
    https = manage(production_env(HTTPS="1", BEHIND_TLS_PROXY="1"), "check", "--deploy")
    assert https.returncode == 0, https.stderr
    # Preloading is a one-way decision for the operator (SECURE_HSTS_PRELOAD=1), not a default.
    warnings = [line for line in https.stderr.splitlines() if "(security." in line]
    assert [w.split(")")[0] for w in warnings] == ["?: (security.W021"], warnings

    probe = manage(production_env(HTTPS="1"), "shell", "-c", PRODUCTION_PROBE)
    assert probe.returncode == 0, probe.stderr
    facts = json.loads(probe.stdout.strip().splitlines()[-1])
    assert facts["hsts"] == "max-age=31536000; includeSubDomains"
    assert facts["csrf_cookie_secure"] and facts["session_cookie_secure"] and facts["session_cookie_httponly"]
    assert facts["plain_http"] == 301  # plain HTTP is redirected to HTTPS

    # And the check does notice when HTTPS is off: the test above could fail.
    plain = manage(production_env(HTTPS="0"), "check", "--deploy")
    assert "security.W012" in plain.stderr and "security.W016" in plain.stderr
