"""Markdown to HTML that is safe to put in a page, for text nobody here wrote: model output, prompts.

Two layers, so that a mistake in one is caught by the other:

1. markdown-it-py in CommonMark mode with raw HTML switched off: `<script>` or `<b>` in the text is
   shown as text, never parsed as markup, and links whose scheme is not plainly safe
   (`javascript:`, `vbscript:`, `data:`...) are not turned into links at all.
2. nh3 (the ammonia sanitiser) then keeps only the tags and attributes that markdown produces and
   only http(s)/mailto URLs; every link opens in a new tab with rel="noopener noreferrer nofollow".

Images are not loaded: a model's image link would fetch from any host on the annotator's screen (a
tracking pixel at best), so it is shown as a link with its alt text instead.

CommonMark parsing is linear for ordinary text but can go quadratic on adversarial runs of
brackets, and model output does degenerate into such runs. Text longer than MARKDOWN_MAX_CHARS is
therefore shown as escaped plain text (whitespace kept), which is fast and still readable.
"""

from __future__ import annotations

import functools
import html

import nh3
from markdown_it import MarkdownIt

MARKDOWN_MAX_CHARS = 32_000

ALLOWED_TAGS = {
    "a",
    "p",
    "br",
    "hr",
    "strong",
    "em",
    "s",
    "del",
    "code",
    "pre",
    "blockquote",
    "ul",
    "ol",
    "li",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "table",
    "thead",
    "tbody",
    "tr",
    "th",
    "td",
    "span",
}
ALLOWED_ATTRIBUTES = {
    "a": {"href", "title"},
    "ol": {"start"},
    "th": {"align"},
    "td": {"align"},
}
URL_SCHEMES = {"http", "https", "mailto"}
LINK_REL = "noopener noreferrer nofollow"


def _image_as_link(self, tokens, idx, options, env) -> str:
    token = tokens[idx]
    alt = self.renderInlineAsText(token.children or [], options, env)
    label = html.escape(f"[image: {alt}]" if alt else "[image]")
    src = token.attrGet("src") or ""
    if not src:
        return label
    return f'<a href="{html.escape(src, quote=True)}"><span class="md-image">{label}</span></a>'


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "breaks": True, "linkify": False})
    md.enable(["table", "strikethrough"])
    md.add_render_rule("image", _image_as_link)
    return md


_MD = _parser()


def _clean(fragment: str) -> str:
    return nh3.clean(
        fragment,
        tags=ALLOWED_TAGS,
        attributes=ALLOWED_ATTRIBUTES,
        url_schemes=URL_SCHEMES,
        link_rel=LINK_REL,
        set_tag_attribute_values={"a": {"target": "_blank"}},
        allowed_classes={"span": {"md-image"}},
        strip_comments=True,
    )


@functools.lru_cache(maxsize=1024)
def render_markdown(text: str) -> str:
    """Sanitised HTML for untrusted markdown. Cached: a prompt is shown with each of its pairs."""
    if not text:
        return ""
    if len(text) > MARKDOWN_MAX_CHARS:
        return f'<pre class="md-plain">{html.escape(text)}</pre>'
    return _clean(_MD.render(text))
