"""A comparison or preference that points at a missing row is refused by the INSERT itself.

Migration 0006 dropped, on PostgreSQL, the single-column foreign keys of comparisons (project,
prompt, responses) and preferences (project, comparison): the composite keys of migration 0003
(NOT DEFERRABLE) are what refuses such a row now, and a referenced row cannot be deleted from
under them. These tests write raw SQL, past Django, as a psql session or a bulk COPY would."""

from __future__ import annotations

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from annotation.models import Comparison
from tests.factories import PromptFactory, ResponseFactory, UserFactory, make_comparison, make_preference

pytestmark = pytest.mark.django_db

MISSING = 2**40


def refused(sql: str, params: list) -> bool:
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql, params)
    except IntegrityError:
        return True
    return False


def test_the_single_column_keys_are_gone_and_the_composite_ones_remain():
    if connection.vendor != "postgresql":
        pytest.skip("SQLite keeps its single-column foreign keys")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conrelid::regclass::text, pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f'"
            " AND conrelid::regclass::text IN ('annotation_comparison', 'annotation_preference')"
        )
        keys = {(table, definition.split(" REFERENCES")[0]) for table, definition in cursor.fetchall()}
    assert keys == {
        ("annotation_comparison", "FOREIGN KEY (response_a_id, prompt_id)"),
        ("annotation_comparison", "FOREIGN KEY (response_b_id, prompt_id)"),
        ("annotation_comparison", "FOREIGN KEY (prompt_id, project_id)"),
        ("annotation_preference", "FOREIGN KEY (comparison_id, project_id)"),
        ("annotation_preference", "FOREIGN KEY (annotator_id)"),
    }


@pytest.mark.parametrize("column", [None, "project_id", "prompt_id", "response_a_id", "response_b_id"])
def test_a_comparison_pointing_at_a_missing_row_is_refused(project, column):
    prompt = PromptFactory(project=project)
    first, second = ResponseFactory(prompt=prompt), ResponseFactory(prompt=prompt)
    values = {"project_id": project.pk, "prompt_id": prompt.pk, "response_a_id": first.pk, "response_b_id": second.pk}
    if column is not None:
        # -1 keeps response_a below response_b, as a check constraint wants.
        values[column] = -1 if column == "response_a_id" else MISSING
    sql = (
        "INSERT INTO annotation_comparison (project_id, prompt_id, response_a_id, response_b_id, is_gold,"
        " gold_choice, label_count, created_at) VALUES (%s, %s, %s, %s, false, '', 0, %s)"
    )
    params = [values["project_id"], values["prompt_id"], values["response_a_id"], values["response_b_id"]]
    # The untouched row (column None) is accepted: what refuses the others is the missing row.
    assert refused(sql, [*params, timezone.now()]) == (column is not None)
    assert Comparison.objects.count() == (column is None)


@pytest.mark.parametrize("column", [None, "project_id", "comparison_id"])
def test_a_preference_pointing_at_a_missing_row_is_refused(project, column):
    comparison = make_comparison(project=project)
    values = {"project_id": project.pk, "comparison_id": comparison.pk}
    if column is not None:
        values[column] = MISSING
    sql = (
        "INSERT INTO annotation_preference (project_id, comparison_id, annotator_id, choice, rationale,"
        " shown_left, created_at) VALUES (%s, %s, %s, 'a', '', '', %s)"
    )
    params = [values["project_id"], values["comparison_id"], UserFactory().pk, timezone.now()]
    assert refused(sql, params) == (column is not None)


@pytest.mark.parametrize(
    "table, key",
    [
        ("annotation_response", "response_a_id"),
        ("annotation_response", "response_b_id"),
        ("annotation_prompt", "prompt_id"),
        ("annotation_comparison", "id"),
    ],
)
def test_a_referenced_row_cannot_be_deleted_from_under_its_comparison_or_label(project, table, key):
    comparison = make_comparison(project=project)
    make_preference(comparison=comparison, annotator=UserFactory(), choice="a")
    assert refused(f"DELETE FROM {table} WHERE id = %s", [getattr(comparison, key)])
    assert Comparison.objects.filter(pk=comparison.pk).exists()
