"""No space left while a model is written: the run fails with a message that says so, nothing is
registered, the active model stays active, and no model folder (whole or partial) is left behind.

The disk is not really filled: the folder the worker writes models into is a 1 MB tmpfs mounted
for the test, which runs out of space part-way through the model file.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from django.conf import settings

from tests.training.test_reward_task import FAST, queue_run, wait_for
from training.models import ModelVersion

pytestmark = pytest.mark.slow


@pytest.fixture
def tiny_model_disk(labelled_project):
    folder = Path(settings.ARTIFACT_ROOT) / "models" / str(labelled_project.pk) / "reward"
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root; run the suite as root (CI's container does)")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(folder)], capture_output=True)
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_model_write_that_runs_out_of_space_fails_the_run_and_registers_nothing(
    start_worker,
    labelled_project,
    tiny_model_disk,
):
    active = ModelVersion.objects.create(
        project=labelled_project, kind="reward", version=1, artifact_path="/models/v1", base="b", is_active=True
    )
    start_worker("gpu", name="gpu-diskfull")
    run = wait_for(queue_run(labelled_project, {**FAST, "promotion": "always"}), {"succeeded", "failed"})

    assert run.status == "failed"
    assert "No space left on device" in run.error, run.error[-2000:]
    assert not ModelVersion.objects.filter(run=run).exists()
    assert list(ModelVersion.objects.filter(project=labelled_project)) == [active]
    active.refresh_from_db()
    assert active.is_active
    # Neither the model folder nor the temporary folder it was being written to is left.
    assert list(tiny_model_disk.iterdir()) == []
    df = os.statvfs(tiny_model_disk)
    assert df.f_bfree == df.f_blocks  # the space the partial write took was given back
