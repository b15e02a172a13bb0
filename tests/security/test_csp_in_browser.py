"""The CSP in a real browser: the pages that run scripts (the labelling page, the API docs' Swagger
UI) work under it with no violation, and an inline script slipped into a page does not run."""

from __future__ import annotations

import pytest

from tests.browser.conftest import browser, page  # noqa: F401 - fixtures
from tests.factories import MembershipFactory, UserFactory, make_comparison

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def test_swagger_ui_and_the_label_page_run_under_the_csp_and_inline_scripts_do_not(page, live_server, project):  # noqa: F811
    violations = []
    page.on("console", lambda m: "Content Security Policy" in m.text and violations.append(m.text))

    page.goto(live_server.url + "/api/v1/docs/")
    page.wait_for_selector(".opblock-summary", timeout=20_000)  # Swagger UI drew the operations
    assert page.locator(".opblock").count() > 10
    assert not violations, violations

    user = UserFactory(username="csp-annotator")
    user.set_password("a long enough password 1")
    user.save()
    MembershipFactory(project=project, user=user)
    make_comparison(project=project)
    page.goto(live_server.url + "/accounts/login/")
    page.fill("#id_username", "csp-annotator")
    page.fill("#id_password", "a long enough password 1")
    page.click("button[type=submit]")
    page.wait_for_url(live_server.url + "/")
    page.goto(live_server.url + f"/p/{project.slug}/")
    page.wait_for_selector("article.comparison")
    assert not violations, violations
    assert not page.problems, page.problems

    # What an injected <script> would do if the escaping ever failed: the browser refuses it.
    page.evaluate(
        """() => { const s = document.createElement('script'); s.textContent = 'window.pwned = 1';
                  document.body.appendChild(s); }"""
    )
    page.wait_for_timeout(200)
    assert page.evaluate("() => window.pwned") is None
    assert any("Content Security Policy" in v for v in violations)
