"""Model output is untrusted: a corpus of hostile strings, stored as prompts, responses, a
rationale, a project name and guidelines, is shown by every page that shows such text, and no page
turns any of it into live markup."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
from django.test import Client

from annotation.models import Comparison, Role
from tests.factories import (
    MembershipFactory,
    ProjectFactory,
    PromptFactory,
    ResponseFactory,
    UserFactory,
    make_preference,
)

pytestmark = pytest.mark.django_db

HOSTILE = {
    "script": "<script>alert('pwned')</script>",
    "onerror": '<img src=x onerror="alert(1)">',
    "svg": "<svg onload=alert(1)><a xlink:href=javascript:alert(1)>x</a></svg>",
    "md-js-link": "[click me](javascript:alert(1))",
    "raw-js-link": '<a href="JaVaScRiPt:alert(1)">raw link</a>',
    "attr-break": '"><script>alert(1)</script><p class="',
    "iframe": '<iframe src="https://evil.example/"></iframe>',
    "style": "<style>body{display:none}</style>",
    "template-syntax": "{{ request.user.password }} {% csrf_token %}",
    "rtl-zero-width": "safe\u202etxt.exe\u200b\u200d\ufeff <b>bold?</b>",
    "huge": ("<script>alert(1)</script> " + "lorem ipsum " * 20) * 600,  # ~200 KB
}


class Live(HTMLParser):
    """What a browser would make live: script elements, on* handlers, javascript: URLs, frames."""

    def __init__(self):
        super().__init__()
        self.problems: list[str] = []

    def handle_starttag(self, tag, attrs):
        values = dict(attrs)
        # The site's own scripts are same-origin files; anything else is not ours.
        if tag == "script" and not (values.get("src") or "").startswith("/"):
            self.problems.append(f"<script {attrs}>")
        if (
            tag in ("iframe", "object", "embed", "style", "base", "meta")
            and tag != "meta"
            or (tag == "meta" and "http-equiv" in values)
        ):
            self.problems.append(f"<{tag} {attrs}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}={value}>")
            if (value or "").strip().lower().startswith(("javascript:", "vbscript:", "data:text/html")):
                self.problems.append(f"<{tag} {name}={value}>")
            if name in ("src", "href", "action", "data", "srcdoc") and "evil.example" in (value or ""):
                self.problems.append(f"<{tag} {name}={value}>")


def assert_inert(html: str, where: str) -> None:
    parser = Live()
    parser.feed(html)
    assert not parser.problems, f"{where}: {parser.problems[:5]}"
    assert "alert('pwned')</script>" not in html.replace("&lt;script&gt;", ""), where


@pytest.fixture
def staff(db):
    return UserFactory(username="root", is_staff=True, is_superuser=True)


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_text_is_shown_as_text_on_the_label_page_home_and_admin(name, staff):
    text = HOSTILE[name]
    project = ProjectFactory(name=text[:100], guidelines=text)
    annotator = UserFactory(username="ann")
    MembershipFactory(project=project, user=annotator, role=Role.ANNOTATOR)
    MembershipFactory(project=project, user=staff, role=Role.ADMIN)
    prompt = PromptFactory(project=project, text=f"Prompt: {text}")
    a = ResponseFactory(prompt=prompt, text=f"A: {text}")
    b = ResponseFactory(prompt=prompt, text=f"B: {text}")
    comparison = Comparison.objects.create(project=project, prompt=prompt, response_a=a, response_b=b)
    other = Comparison.objects.create(
        project=project, prompt=prompt, response_a=a, response_b=ResponseFactory(prompt=prompt, text=text[::-1])
    )
    preference = make_preference(comparison=other, annotator=staff)
    preference.rationale = text
    preference.save()

    client = Client()
    client.force_login(annotator)
    page = client.get(f"/p/{project.slug}/")
    assert page.status_code == 200
    html = page.content.decode()
    assert_inert(html, "label page")
    # The text is there, as text: the annotator must be able to judge it.
    if name == "script":
        assert "&lt;script&gt;alert(&#x27;pwned&#x27;)&lt;/script&gt;" in html
    if name == "rtl-zero-width":
        assert "\u202e" in html and "\u200b" in html and "<b>bold?</b>" not in html
    # The next comparison comes as an HTML fragment inside JSON: it is just as inert.
    fragment = client.post(
        f"/p/{project.slug}/next", {"exclude": [comparison.pk]}, content_type="application/json"
    ).json()["html"]
    assert_inert(fragment, "next fragment")
    assert_inert(client.get("/").content.decode(), "home")

    client.force_login(staff)
    admin_pages = [
        "/admin/annotation/project/",
        f"/admin/annotation/project/{project.pk}/change/",
        "/admin/annotation/prompt/",
        f"/admin/annotation/prompt/{prompt.pk}/change/",
        "/admin/annotation/response/",
        f"/admin/annotation/response/{a.pk}/change/",
        "/admin/annotation/comparison/",
        f"/admin/annotation/comparison/{comparison.pk}/change/",
        "/admin/annotation/preference/",
        f"/admin/annotation/preference/{preference.pk}/change/",
    ]
    for url in admin_pages:
        response = client.get(url)
        assert response.status_code == 200, url
        assert_inert(response.content.decode(), url)


def test_the_checker_would_catch_live_markup():
    # The assertions above are only worth something if the parser sees what a browser would run.
    for html in ['<img src=x onerror="alert(1)">', "<script>alert('pwned')</script>", '<a href=" javascript:x">']:
        parser = Live()
        parser.feed(html)
        assert parser.problems, html
