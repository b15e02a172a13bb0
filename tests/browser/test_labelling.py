"""An annotator labels in real Chromium with the keyboard alone, and hostile model output shown on
the page runs nothing."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from annotation.models import Assignment, Comparison, Preference, Prompt, Response, content_hash
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

pytestmark = pytest.mark.django_db(transaction=True)

PASSWORD = "pw-for-tests-1"  # what UserFactory sets
STAGE_ITEM = "#stage [data-comparison-id]"


def add_comparison(project, prompt, first: str, second: str) -> Comparison:
    if isinstance(prompt, list):
        prompt_row = Prompt.objects.create(project=project, messages=prompt, content_hash=content_hash(prompt))
    else:
        prompt_row = Prompt.objects.create(project=project, text=prompt, content_hash=content_hash(prompt))
    a, b = (
        Response.objects.create(prompt=prompt_row, text=text, content_hash=content_hash(text), source="model")
        for text in (first, second)
    )
    return Comparison.objects.create(project=project, prompt=prompt_row, response_a=a, response_b=b)


def log_in(page, live_server, username: str, path: str) -> None:
    """With the keyboard: the login form focuses the username field itself."""
    page.goto(live_server.url + path)
    expect(page.locator("#id_username")).to_be_focused()
    page.keyboard.type(username)
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_url(live_server.url + path)
    page.wait_for_load_state("load")


def on_screen(page) -> int:
    return int(page.locator(STAGE_ITEM).get_attribute("data-comparison-id"))


def wait_until_replaced(page, comparison_id: int) -> None:
    page.wait_for_function(
        "id => { const el = document.querySelector('#stage [data-comparison-id]');"
        " return !el || el.dataset.comparisonId !== String(id); }",
        arg=comparison_id,
    )


@pytest.fixture
def labelling_project():
    project = ProjectFactory(
        name="Support answers", overlap=1, gold_rate=0, guidelines="Prefer the **correct** answer."
    )
    user = UserFactory(username="kbd-annotator")
    MembershipFactory(project=project, user=user)
    return project, user


def test_an_annotator_labels_five_comparisons_with_the_keyboard_only(page, live_server, labelling_project, artifacts):
    project, user = labelling_project
    add_comparison(
        project,
        [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "How do I undo `git add`?"}],
        "Run `git restore --staged <file>`.",
        "Delete the repository and clone it again.",
    )
    add_comparison(
        project,
        "\n\nHuman: What is the capital of Australia?\n\nAssistant: Sydney?\n\nHuman: Are you sure?\n\nAssistant:",
        "No, it is **Canberra**.",
        "Yes, Sydney.",
    )
    for n in range(5):
        add_comparison(
            project,
            f"Write a Python one-liner that sums the numbers 1 to {n + 10}.",
            f"```python\nprint(sum(range(1, {n + 11})))\n```",
            f"```python\nprint(sum(range({n + 10})))\n```\nThis prints the sum.",
        )

    log_in(page, live_server, "kbd-annotator", f"/p/{project.slug}/")
    status = page.locator("#status")
    done: dict[int, str] = {}

    # 1. Left is better, clearly. Enter pressed twice, like a double click: one label only.
    first = on_screen(page)
    page.keyboard.press("1")
    page.keyboard.press("w")
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")
    wait_until_replaced(page, first)
    expect(status).to_have_text(f"Saved comparison {first}.")
    done[first] = "left-2"

    # 2. Right is better, much: the arrow key and E.
    second = on_screen(page)
    page.keyboard.press("ArrowRight")
    page.keyboard.press("e")
    page.keyboard.press("Enter")
    wait_until_replaced(page, second)
    expect(status).to_have_text(f"Saved comparison {second}.")
    done[second] = "right-3"

    # 3. A tie: no strength goes with it; Q is refused with a message.
    third = on_screen(page)
    page.keyboard.press("3")
    page.keyboard.press("q")
    expect(page.locator("#alert")).to_contain_text("A strength goes with A or B")
    page.keyboard.press("Enter")
    wait_until_replaced(page, third)
    expect(status).to_have_text(f"Saved comparison {third}.")
    done[third] = "tie"

    # 4. Skip, choosing the second reason in the dialog by its number.
    fourth = on_screen(page)
    page.keyboard.press("s")
    expect(page.locator("#skip-dialog")).to_be_visible()
    page.keyboard.press("2")
    page.keyboard.press("Enter")
    wait_until_replaced(page, fourth)
    expect(status).to_have_text(f"Skipped comparison {fourth}.")

    # 5. Both bad, with a reason typed after R; Escape leaves the box, Enter submits.
    fifth = on_screen(page)
    page.keyboard.press("Enter")  # nothing chosen yet: refused with a message, nothing sent
    expect(page.locator("#alert")).to_contain_text("Choose first")
    # ... which leaves the word on the one before standing (a double Enter's second press lands here).
    expect(status).to_have_text(f"Skipped comparison {fourth}.")
    page.keyboard.press("4")
    page.keyboard.press("r")
    expect(page.locator("#rationale")).to_be_focused()
    page.keyboard.type("Neither answers the question.")
    page.keyboard.press("Escape")
    page.keyboard.press("Enter")
    wait_until_replaced(page, fifth)
    expect(status).to_have_text(f"Saved comparison {fifth}.")
    done[fifth] = "both_bad"

    expect(page.locator("#today-count")).to_have_text("4")
    page.keyboard.press("?")
    expect(page.locator("#help-dialog")).to_be_visible()
    page.keyboard.press("Escape")
    expect(page.locator("#help-dialog")).to_be_hidden()
    page.screenshot(path=str(artifacts / "labelling.png"))

    preferences = {p.comparison_id: p for p in Preference.objects.filter(annotator=user)}
    assert set(preferences) == {first, second, third, fifth}
    leases = {a.comparison_id: a for a in Assignment.objects.filter(annotator=user)}
    for comparison_id, answer in done.items():
        preference, shown_left = preferences[comparison_id], leases[comparison_id].shown_left
        right = "b" if shown_left == "a" else "a"
        expected = {
            "left-2": (shown_left, 2),
            "right-3": (right, 3),
            "tie": ("tie", None),
            "both_bad": ("both_bad", None),
        }[answer]
        assert (preference.choice, preference.strength) == expected, answer
        assert preference.shown_left == shown_left and leases[comparison_id].status == "submitted"
        assert 0 < preference.time_spent_ms < 60_000
    assert preferences[fifth].rationale == "Neither answers the question."
    assert leases[fourth].status == "skipped"
    assert leases[fourth].skip_reason == "The prompt or a response is broken"
    assert dict(Comparison.objects.filter(pk__in=done).values_list("pk", "label_count")) == {pk: 1 for pk in done}
    # The comparison on screen now and the one prefetched behind it are leased to the annotator.
    assert Assignment.objects.filter(annotator=user, status="leased").count() == 2
    assert page.problems == []


HOSTILE_RESPONSE = """Here you go:

<script>window.__pwned = "script"</script>
<img src=x onerror="window.__pwned = 'onerror'">
<svg onload="window.__pwned = 'svg'"></svg>
<iframe srcdoc="<script>parent.__pwned = 'iframe'</script>"></iframe>
[a link](javascript:window.__pwned='link') and [another](JAVASCRIPT:alert(1))
<a href="javascript:window.__pwned='raw'">raw</a>
![img](x" onerror="window.__pwned='alt')

\u202eThis line is reversed by an override\u202c and \u200bzero\u200dwidth\u200c joiners
\u05e9\u05dc\u05d5\u05dd \u0645\u0631\u062d\u0628\u0627 (Hebrew and Arabic)
<style>body { display: none }</style>
"""


def test_hostile_model_output_runs_nothing_and_the_page_stays_usable(page, live_server, labelling_project, artifacts):
    project, user = labelling_project
    huge = ("All work and no play makes a long response. " * 40 + "\n\n") * 116  # about 200 KB
    assert len(huge.encode()) > 195_000
    comparison = add_comparison(project, "<script>window.__pwned = 'prompt'</script> Say hi.", HOSTILE_RESPONSE, huge)
    log_in(page, live_server, "kbd-annotator", f"/p/{project.slug}/")

    assert page.evaluate("window.__pwned") is None
    stage = page.locator("#stage")
    expect(stage).to_contain_text('<script>window.__pwned = "script"</script>')
    expect(stage).to_contain_text("All work and no play")
    # Nothing in the shown content can run: no scripts, frames, handlers or javascript: links.
    live = page.evaluate(
        """() => {
            const root = document.getElementById('stage');
            const handlers = [...root.querySelectorAll('*')].flatMap(
                el => [...el.attributes].map(a => a.name).filter(n => n.startsWith('on') || n === 'style'));
            return {
                scripts: root.querySelectorAll('script, iframe, img, svg, style, object, embed').length,
                handlers,
                badLinks: [...root.querySelectorAll('a')].filter(a => !/^(https?:|mailto:)/i.test(a.href)).length,
            };
        }"""
    )
    assert live == {"scripts": 0, "handlers": [], "badLinks": 0}
    # Right-to-left and zero-width characters arrive as text, isolated in their own box.
    assert (
        "\u202e" in page.locator(".response-body").first.inner_text() + page.locator(".response-body").last.inner_text()
    )
    # The 200 KB response scrolls inside its panel; the answer bar stays on screen.
    scrolls = page.evaluate(
        "() => [...document.querySelectorAll('.response-body')].some(el => el.scrollHeight > el.clientHeight * 5)"
    )
    assert scrolls
    expect(page.locator("#submit-button")).to_be_in_viewport()
    page.screenshot(path=str(artifacts / "labelling-hostile.png"))

    page.keyboard.press("2")
    page.keyboard.press("q")
    page.keyboard.press("Enter")
    wait_until_replaced(page, comparison.pk)
    expect(page.locator("#status")).to_have_text(f"Saved comparison {comparison.pk}.")
    expect(page.locator("#stage")).to_contain_text("Nothing left for you here")
    page.screenshot(path=str(artifacts / "labelling-done.png"))
    assert Preference.objects.get(annotator=user).strength == 1
    assert page.evaluate("window.__pwned") is None
    assert page.problems == []


def test_on_a_narrow_screen_the_responses_stack(page, live_server, labelling_project, artifacts):
    project, _ = labelling_project
    add_comparison(project, "Hi?", "Hello! How can I help you today?", "Hi.")
    page.set_viewport_size({"width": 420, "height": 860})
    log_in(page, live_server, "kbd-annotator", f"/p/{project.slug}/")
    left, right = (box.bounding_box() for box in page.locator(".response").all())
    assert right["y"] >= left["y"] + left["height"] and abs(right["x"] - left["x"]) < 1
    page.screenshot(path=str(artifacts / "labelling-narrow.png"), full_page=True)
