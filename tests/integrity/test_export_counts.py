"""Every label in the database is in the export, once: row counts of the API export (JSONL, CSV,
Parquet) and of the management command equal the database's counts, for a project of a few
thousand labels from several annotators, with another project's labels beside it."""

from __future__ import annotations

import csv
import io
import json
import random

import pyarrow.parquet as pq
import pytest

from annotation.models import Choice, Comparison, Preference, Prompt, Response, Role
from annotation.services import comparisons_recount
from tests.api.conftest import client_for
from tests.factories import MembershipFactory, ProjectFactory, UserFactory

COMPARISONS = 600
ANNOTATORS = 4


def fill(project, annotators, seed: int) -> None:
    rng = random.Random(seed)
    prompts = Prompt.objects.bulk_create(
        [
            Prompt(
                project=project, text=f"{project.slug} question {i} \u05e9 \u200b", content_hash=f"{project.slug}-{i}"
            )
            for i in range(COMPARISONS)
        ]
    )
    responses = Response.objects.bulk_create(
        [
            Response(
                prompt=p,
                text=f'answer {side} to {p.text}\r\n"quoted", comma',
                content_hash=f"{p.pk}-{side}",
                source="bulk",
            )
            for p in prompts
            for side in "xy"
        ]
    )
    comparisons = Comparison.objects.bulk_create(
        [
            Comparison(project=project, prompt=p, response_a=responses[2 * i], response_b=responses[2 * i + 1])
            for i, p in enumerate(prompts)
        ]
    )
    preferences = []
    for comparison in comparisons:
        for annotator in rng.sample(annotators, rng.randint(0, len(annotators))):
            choice = rng.choice([Choice.A, Choice.A, Choice.B, Choice.B, Choice.TIE, Choice.BOTH_BAD])
            strength = rng.choice([None, 1, 2, 3]) if choice in (Choice.A, Choice.B) else None
            preferences.append(
                Preference(
                    project=project, comparison=comparison, annotator=annotator, choice=choice, strength=strength
                )
            )
    Preference.objects.bulk_create(preferences)
    comparisons_recount(comparison_ids=[c.pk for c in comparisons])


@pytest.fixture
def labelled(db):
    project, other = ProjectFactory(slug="counted"), ProjectFactory(slug="beside")
    annotators = [UserFactory(username=f"counter-{i}") for i in range(ANNOTATORS)]
    for user in annotators:
        MembershipFactory(project=project, user=user, role=Role.ANNOTATOR)
        MembershipFactory(project=other, user=user, role=Role.ANNOTATOR)
    fill(project, annotators, seed=1)
    fill(other, annotators, seed=2)
    admin = UserFactory(username="counter-admin")
    MembershipFactory(project=project, user=admin, role=Role.ADMIN)
    return project, client_for(admin)


def db_counts(project) -> tuple[int, int]:
    labels = Preference.objects.filter(project=project)
    return labels.count(), labels.filter(choice__in=[Choice.A, Choice.B]).count()


def body(response) -> bytes:
    assert response.status_code == 200, response.content[:300]
    return b"".join(response.streaming_content) if response.streaming else response.content


def test_every_export_format_has_exactly_the_databases_rows(labelled):
    project, client = labelled
    everything, decided = db_counts(project)
    assert everything > 1000 and 0 < decided < everything
    url = f"/api/v1/projects/{project.slug}/export/"

    rows = [json.loads(line) for line in body(client.get(url)).decode().splitlines()]
    assert len(rows) == decided
    with_ties = [json.loads(line) for line in body(client.get(url + "?include_ties=true")).decode().splitlines()]
    assert len(with_ties) == everything
    # Once each: no label exported twice, none of the other project's.
    keys = {(r["comparison_id"], r["annotator"]) for r in with_ties}
    assert len(keys) == everything
    ours = set(Comparison.objects.filter(project=project).values_list("id", flat=True))
    assert {r["comparison_id"] for r in with_ties} <= ours

    table = list(csv.DictReader(io.StringIO(body(client.get(url + "?format=csv&include_ties=true")).decode())))
    assert len(table) == everything
    parquet = pq.read_table(io.BytesIO(body(client.get(url + "?format=parquet&include_ties=true"))))
    assert parquet.num_rows == everything
    assert parquet.num_rows == len(table) == len(with_ties)


def test_the_export_command_writes_the_databases_rows(labelled, manage, tmp_path, transactional_db):
    project, _ = labelled
    everything, decided = db_counts(project)
    out = tmp_path / "export.jsonl"
    result = manage("export_preferences", "--project", project.slug, "--output", str(out))
    assert result.returncode == 0, result.stderr.decode()
    assert len(out.read_text(encoding="utf-8").splitlines()) == decided
    result = manage("export_preferences", "--project", project.slug, "--include-ties")
    assert result.returncode == 0, result.stderr.decode()
    assert len(result.stdout.decode("utf-8").splitlines()) == everything
