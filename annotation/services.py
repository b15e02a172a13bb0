"""Writes. One function per action, keyword-only arguments, each atomic."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce

from annotation.jsonl import ImportFileError, Record
from annotation.models import Choice, Comparison, Membership, Preference, Project, Prompt, Response, Role, content_hash

IMPORTED_ANNOTATOR_PREFIX = "import:"
DEFAULT_IMPORT_SOURCE = "imported"
BATCH = 500


def _batches(items: Sequence, size: int = BATCH) -> Iterable[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@transaction.atomic
def project_create(*, name: str, slug: str, **fields) -> Project:
    project = Project(name=name, slug=slug, **fields)
    project.full_clean()
    project.save()
    return project


@transaction.atomic
def membership_set(*, project: Project, user, role: str = Role.ANNOTATOR) -> Membership:
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


def strength_from_margin(margin: float | None) -> int | None:
    """The inverse of Preference.margin: a margin of 1, 2 or 3 is that strength; others round to
    the nearest level, and 0 or no margin means the strength is unknown."""
    if not margin:
        return None
    return max(1, min(3, round(margin)))


@dataclass
class ImportSummary:
    prompts_created: int = 0
    responses_created: int = 0
    comparisons_created: int = 0
    preferences_created: int = 0
    preferences_existing: int = 0

    def __str__(self) -> str:
        return (
            f"{self.prompts_created} prompts, {self.responses_created} responses, "
            f"{self.comparisons_created} comparisons and {self.preferences_created} preferences created; "
            f"{self.preferences_existing} preferences were already there"
        )


def _prompt_fields(prompt: str | list[dict]) -> dict:
    if isinstance(prompt, str):
        return {"text": prompt, "messages": None}
    return {"text": "", "messages": prompt}


def _imported_annotators(names: set[str]) -> dict[str, int]:
    """Labels that arrive in a file were given by people who have no account here. Each gets an
    inactive user named `import:<name>`, so one annotator's labels stay one annotator's."""
    User = get_user_model()
    ids = {}
    for name in sorted(names):
        user, created = User.objects.get_or_create(
            username=f"{IMPORTED_ANNOTATOR_PREFIX}{name}"[:150], defaults={"is_active": False}
        )
        if created:
            user.set_unusable_password()
            user.save(update_fields=["password"])
        ids[name] = user.pk
    return ids


@transaction.atomic
def preferences_import(
    *,
    project: Project,
    records: list[Record],
    source: str = DEFAULT_IMPORT_SOURCE,
    annotator: str = "import",
    max_pairs_per_prompt: int | None = None,
) -> ImportSummary:
    """Writes validated records: prompts, responses, comparisons and, for labelled pairs,
    preferences. Rows that already exist are found by content and reused, so importing a file twice
    adds nothing. A label that contradicts one already stored (same annotator, same pair, another
    choice) fails the whole import, which then writes nothing."""
    summary = ImportSummary()

    # 1. Prompts, found by the digest of their text or turns.
    prompt_hash = {r.line: content_hash(r.prompt) for r in records}
    wanted_prompts = {prompt_hash[r.line]: r.prompt for r in records}
    prompt_ids = _existing_prompts(project, list(wanted_prompts))
    missing = [
        Prompt(project=project, content_hash=h, **_prompt_fields(p))
        for h, p in wanted_prompts.items()
        if h not in prompt_ids
    ]
    Prompt.objects.bulk_create(missing, batch_size=BATCH, ignore_conflicts=True)
    summary.prompts_created = len(missing)
    prompt_ids.update(_existing_prompts(project, [p.content_hash for p in missing]))

    # 2. Responses, found by (prompt, digest of text).
    wanted_responses: dict[tuple[int, str], Response] = {}
    for r in records:
        pid = prompt_ids[prompt_hash[r.line]]
        for item in r.responses:
            key = (pid, content_hash(item.text))
            if key not in wanted_responses:
                wanted_responses[key] = Response(
                    prompt_id=pid, text=item.text, content_hash=key[1], source=item.source or source
                )
    response_ids = _existing_responses(list(wanted_responses))
    missing_r = [resp for key, resp in wanted_responses.items() if key not in response_ids]
    Response.objects.bulk_create(missing_r, batch_size=BATCH, ignore_conflicts=True)
    summary.responses_created = len(missing_r)
    response_ids.update(_existing_responses([(r.prompt_id, r.content_hash) for r in missing_r]))

    # 3. Comparisons: the labelled pair itself, or every pair of a prompt's responses (up to the cap).
    pairs: dict[tuple[int, int], int] = {}
    for r in records:
        pid = prompt_ids[prompt_hash[r.line]]
        ids = [response_ids[(pid, content_hash(item.text))] for item in r.responses]
        combos = [tuple(ids)] if r.is_pair else list(itertools.combinations(ids, 2))
        if max_pairs_per_prompt is not None and not r.is_pair:
            combos = combos[:max_pairs_per_prompt]
        for x, y in combos:
            pairs.setdefault((min(x, y), max(x, y)), pid)
    comparison_ids = _existing_comparisons(list(pairs))
    missing_c = [
        Comparison(project=project, prompt_id=pid, response_a_id=a, response_b_id=b)
        for (a, b), pid in pairs.items()
        if (a, b) not in comparison_ids
    ]
    Comparison.objects.bulk_create(missing_c, batch_size=BATCH, ignore_conflicts=True)
    summary.comparisons_created = len(missing_c)
    comparison_ids.update(_existing_comparisons([(c.response_a_id, c.response_b_id) for c in missing_c]))

    # 4. Preferences for labelled pairs: one per (comparison, annotator); a repeat must agree.
    labelled = [r for r in records if r.is_pair]
    if labelled:
        annotator_ids = _imported_annotators({r.annotator or annotator for r in labelled})
        wanted: dict[tuple[int, int], tuple[Record, str, int | None]] = {}
        errors: list[tuple[int, str]] = []
        for r in labelled:
            pid = prompt_ids[prompt_hash[r.line]]
            first, second = (response_ids[(pid, content_hash(item.text))] for item in r.responses)
            a, b = min(first, second), max(first, second)
            if r.choice == "chosen":
                choice, strength = (Choice.A if first == a else Choice.B), strength_from_margin(r.margin)
            else:
                choice, strength = r.choice, None
            key = (comparison_ids[(a, b)], annotator_ids[r.annotator or annotator])
            if key in wanted and wanted[key][1] != choice:
                errors.append(
                    (r.line, f"contradicts line {wanted[key][0].line}: same pair, same annotator, another choice")
                )
            wanted.setdefault(key, (r, choice, strength))
        existing = _existing_preferences(list(wanted))
        for key, (r, choice, _) in wanted.items():
            if key in existing and existing[key] != choice:
                errors.append(
                    (
                        r.line,
                        f"contradicts the stored label of comparison {key[0]} ({existing[key]} there, {choice} here)",
                    )
                )
        if errors:
            raise ImportFileError(sorted(errors))
        new = [
            Preference(project=project, comparison_id=cid, annotator_id=uid, choice=choice, strength=strength)
            for (cid, uid), (_, choice, strength) in wanted.items()
            if (cid, uid) not in existing
        ]
        Preference.objects.bulk_create(new, batch_size=BATCH)
        summary.preferences_created = len(new)
        summary.preferences_existing = len(wanted) - len(new)
        comparisons_recount(comparison_ids=sorted({cid for cid, _ in wanted}))
    return summary


def comparisons_recount(*, comparison_ids: Sequence[int]) -> None:
    """Sets label_count from the preference rows, for writes that bypass preference_submit."""
    count = (
        Preference.objects.filter(comparison=OuterRef("pk"))
        .order_by()
        .values("comparison")
        .annotate(n=Count("id"))
        .values("n")
    )
    for batch in _batches(list(comparison_ids)):
        Comparison.objects.filter(pk__in=batch).update(label_count=Coalesce(Subquery(count), 0))


def _existing_prompts(project: Project, hashes: list[str]) -> dict[str, int]:
    found = {}
    for batch in _batches(hashes):
        found.update(Prompt.objects.filter(project=project, content_hash__in=batch).values_list("content_hash", "id"))
    return found


def _existing_responses(keys: list[tuple[int, str]]) -> dict[tuple[int, str], int]:
    found: dict[tuple[int, str], int] = {}
    for batch in _batches(keys):
        rows = Response.objects.filter(prompt_id__in={k[0] for k in batch}, content_hash__in={k[1] for k in batch})
        for rid, pid, h in rows.values_list("id", "prompt_id", "content_hash"):
            found[(pid, h)] = rid
    return found


def _existing_comparisons(pairs: list[tuple[int, int]]) -> dict[tuple[int, int], int]:
    found: dict[tuple[int, int], int] = {}
    for batch in _batches(pairs):
        rows = Comparison.objects.filter(
            response_a_id__in={p[0] for p in batch}, response_b_id__in={p[1] for p in batch}
        )
        for cid, a, b in rows.values_list("id", "response_a_id", "response_b_id"):
            found[(a, b)] = cid
    return found


def _existing_preferences(keys: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    found: dict[tuple[int, int], str] = {}
    for batch in _batches(keys):
        rows = Preference.objects.filter(
            comparison_id__in={k[0] for k in batch}, annotator_id__in={k[1] for k in batch}
        )
        for cid, uid, choice in rows.values_list("comparison_id", "annotator_id", "choice"):
            found[(cid, uid)] = choice
    return found
