"""Model output shown on the labelling page is markdown rendered to HTML that cannot run anything."""

from __future__ import annotations

import time
from html.parser import HTMLParser

import pytest

from annotation.markdown import MARKDOWN_MAX_CHARS, render_markdown

HOSTILE = [
    "<script>window.pwned = 1</script>",
    '<img src=x onerror="window.pwned = 1">',
    "<svg onload=alert(1)><a xlink:href=javascript:alert(1)>x</a></svg>",
    "[click me](javascript:alert(1))",
    "[click me](JaVaScRiPt:alert(1))",
    "[click me](  javascript:alert(1))",
    "[data](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
    "[vb](vbscript:msgbox(1))",
    '<a href="javascript:alert(1)">raw link</a>',
    '<iframe src="https://example.com"></iframe>',
    '<div style="position:fixed;inset:0" onclick="alert(1)">cover</div>',
    "![x](javascript:alert(1))",
    '![x" onerror="alert(1)](https://example.com/a.png)',
    "<style>body{display:none}</style>",
    "<!-- <script>alert(1)</script> -->",
    "```html\n<script>alert(1)</script>\n```",
    "`<img src=x onerror=alert(1)>`",
    "&lt;script&gt;alert(1)&lt;/script&gt;",
    "&#60;script&#62;alert(1)&#60;/script&#62;",
]


class Elements(HTMLParser):
    """The elements and attributes a browser would build from the HTML."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.found: list[tuple[str, dict[str, str]]] = []
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        self.found.append((tag, {name: value or "" for name, value in attrs}))


SAFE_TAGS = {"p", "br", "a", "code", "pre", "span", "em", "strong"}


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_renders_without_any_live_markup(text):
    for tag, attrs in Elements(render_markdown(text)).found:
        assert tag in SAFE_TAGS, tag
        assert not [name for name in attrs if name.startswith("on") or name in ("style", "src")], attrs
        href = attrs.get("href", "").strip().lower()
        assert not href or href.startswith(("http:", "https:", "mailto:")), href


def test_raw_html_is_shown_as_text():
    assert render_markdown("a <b>bold</b> claim").strip() == "<p>a &lt;b&gt;bold&lt;/b&gt; claim</p>"


def test_markdown_renders_code_lists_tables_and_links():
    html = render_markdown(
        "# Title\n\n- **one**\n- *two*\n\n```python\nprint('<hi>')\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |\n\n"
        "[docs](https://docs.python.org)"
    )
    assert "<h1>Title</h1>" in html and "<strong>one</strong>" in html and "<em>two</em>" in html
    assert "<pre><code>print('&lt;hi&gt;')\n</code></pre>" in html
    assert "<table>" in html and "<td>1</td>" in html
    assert '<a href="https://docs.python.org" target="_blank" rel="noopener noreferrer nofollow">docs</a>' in html


def test_images_are_links_not_loaded():
    html = render_markdown("![a chart](https://tracker.example/pixel.png)")
    assert "<img" not in html
    assert 'href="https://tracker.example/pixel.png"' in html and "[image: a chart]" in html


def test_single_newlines_are_kept_as_line_breaks():
    assert render_markdown("line one\nline two").strip() == "<p>line one<br>\nline two</p>"


def test_very_long_text_is_shown_as_escaped_plain_text_quickly():
    text = "[a](" * (MARKDOWN_MAX_CHARS // 4 + 10) + "<script>alert(1)</script>"
    started = time.perf_counter()
    html = render_markdown(text)
    assert time.perf_counter() - started < 1
    assert html.startswith('<pre class="md-plain">') and "&lt;script&gt;" in html and "<script>" not in html


def test_right_to_left_and_zero_width_characters_pass_through_as_text():
    text = "\u202eevil\u202c \u200bzero\u200dwidth \u05e9\u05dc\u05d5\u05dd"
    assert text in render_markdown(text)
