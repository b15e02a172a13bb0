"""The console in real Chromium against the live server, with a real Celery worker on the gpu
queue: an admin starts a reward run from the training page, watches it reach 100% without
reloading, sees its loss curve and the new model version, and rolls back to the one before."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from annotation.models import Role
from tests.factories import MembershipFactory, UserFactory
from training.models import ModelVersion

pytestmark = pytest.mark.slow

PASSWORD = "pw-for-tests-1"
CONFIG = (
    '{"promotion": "always", "trainer": {"batch_size": 8, "epochs": 3, "lr": 0.001, "max_length": 64, "log_every": 1}}'
)


@pytest.fixture
def artifacts():
    from tests.browser.conftest import ARTIFACTS

    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def test_an_admin_trains_a_reward_model_watches_it_finish_and_rolls_back(
    live_server,
    start_worker,
    labelled_project,
    page,
    artifacts,
):
    project = labelled_project
    admin = UserFactory(username="console-admin")
    MembershipFactory(project=project, user=admin, role=Role.ADMIN)
    previous = ModelVersion.objects.create(
        project=project, kind="reward", version=1, artifact_path="/models/previous", base="b", is_active=True
    )
    start_worker("gpu", name="gpu-console")

    dashboard = f"{live_server.url}/console/{project.slug}/"
    page.goto(dashboard)
    page.fill("#id_username", admin.username)
    page.fill("#id_password", PASSWORD)
    page.press("#id_password", "Enter")
    page.wait_for_url(dashboard)
    expect(page.locator("#fig-comparisons")).to_have_text("60")
    page.screenshot(path=str(artifacts / "console-dashboard.png"), full_page=True)

    page.click("text=Training")
    page.select_option("#start-kind", "reward")
    page.fill("#start-config", CONFIG)
    page.click("#start-button")
    expect(page.locator("#run-status")).to_have_text(re.compile("queued|running"))
    # Mark this document: the progress must reach 100% in it, by polling, before any reload.
    page.evaluate("window.__sameDocument = true")
    page.wait_for_function(
        "() => window.__sameDocument === true && document.getElementById('run-status').textContent === 'succeeded'"
        " && document.getElementById('run-percent').textContent === '100%'",
        timeout=150_000,
    )
    expect(page.locator("#run-model")).to_have_text("model reward-v2")
    # The page reloads itself once to refresh the tables; then the chart and the new version show.
    expect(page.locator("#versions tr[data-version='reward-v2'] .active-cell")).to_have_text("active", timeout=10_000)
    expect(page.locator("#run-panel svg.chart")).to_have_count(1)
    expect(page.locator("#run-panel svg.chart")).to_contain_text("loss")
    expect(page.locator("#run-log")).not_to_be_empty()
    page.screenshot(path=str(artifacts / "console-training.png"), full_page=True)

    page.click("#rollback-reward")
    expect(page.locator(".flash")).to_contain_text("reward-v1 is active again")
    expect(page.locator("#versions tr[data-version='reward-v1'] .active-cell")).to_have_text("active")
    previous.refresh_from_db()
    assert previous.is_active
    assert not page.problems, page.problems
