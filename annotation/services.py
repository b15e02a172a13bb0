"""Writes. One function per action, keyword-only arguments, each atomic."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth import get_user_model
from django.db import connection, transaction
from django.db.models import Count, OuterRef, Subquery
from django.db.models.functions import Coalesce
from django.utils import timezone

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


PROJECT_EDITABLE_FIELDS = (
    "name",
    "guidelines",
    "overlap",
    "reward_model_base",
    "policy_base",
    "retrain_threshold",
    "gold_rate",
    "lease_seconds",
    "auto_training",
)


@transaction.atomic
def project_update(*, project: Project, **fields) -> Project:
    unknown = set(fields) - set(PROJECT_EDITABLE_FIELDS)
    if unknown:
        raise ValueError(f"not editable: {', '.join(sorted(unknown))}")
    for name, value in fields.items():
        setattr(project, name, value)
    project.full_clean()
    project.save(update_fields=list(fields) or None)
    return project


@transaction.atomic
def membership_set(*, project: Project, user, role: str = Role.ANNOTATOR) -> Membership:
    membership, _ = Membership.objects.update_or_create(project=project, user=user, defaults={"role": role})
    return membership


@transaction.atomic
def membership_remove(*, project: Project, user) -> bool:
    deleted, _ = Membership.objects.filter(project=project, user=user).delete()
    return deleted > 0


@transaction.atomic
def comparisons_create_for_prompt(*, prompt: Prompt, max_pairs: int | None = None) -> list[Comparison]:
    """Pairs a prompt's responses into comparisons: every pair, or at most `max_pairs` for the
    prompt in total (pairs that already exist count). Under a cap the pairs are a shuffle seeded
    by the prompt, so no response is favoured by its id and a repeat call adds nothing."""
    # The lock serialises two callers on one prompt, so the cap holds under concurrency.
    Prompt.objects.select_for_update().filter(pk=prompt.pk).first()
    ids = sorted(Response.objects.filter(prompt=prompt).values_list("id", flat=True))
    existing = set(Comparison.objects.filter(prompt=prompt).values_list("response_a_id", "response_b_id"))
    candidates = [pair for pair in itertools.combinations(ids, 2) if pair not in existing]
    if max_pairs is not None:
        random.Random(prompt.pk).shuffle(candidates)
        candidates = candidates[: max(0, max_pairs - len(existing))]
        candidates.sort()
    new = [
        Comparison(project_id=prompt.project_id, prompt=prompt, response_a_id=a, response_b_id=b) for a, b in candidates
    ]
    return Comparison.objects.bulk_create(new, batch_size=BATCH)


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


def _unstorable(text: str) -> str | None:
    if "\x00" in text:
        return "contains a NUL character, which the database cannot store"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone surrogate (an unpaired \\ud800-\\udfff escape), which is not valid Unicode"
    return None


def _check_storable(records: list[Record]) -> None:
    """JSON can spell strings that PostgreSQL refuses (a NUL, half a surrogate pair). They are
    reported by line with the other errors instead of failing as a database error mid-import."""
    errors = []
    for r in records:
        turns = r.prompt if isinstance(r.prompt, list) else [{"content": r.prompt}]
        texts = [t.get("content", "") for t in turns] + [t.get("role", "") for t in turns]
        texts += [item.text for item in r.responses] + [item.source or "" for item in r.responses]
        texts.append(r.annotator or "")
        for text in texts:
            reason = _unstorable(text)
            if reason:
                errors.append((r.line, reason))
                break
    if errors:
        raise ImportFileError(errors)


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
    _check_storable(records)
    summary = ImportSummary()
    # Digests are computed once per record: at 100,000 pairs hashing is a visible share of the time.
    prompt_hash = {r.line: content_hash(r.prompt) for r in records}
    response_hashes = {r.line: [content_hash(item.text) for item in r.responses] for r in records}

    # 1. Prompts, found by the digest of their text or turns.
    wanted_prompts = {prompt_hash[r.line]: r.prompt for r in records}
    prompt_ids = _existing_prompts(project, list(wanted_prompts))
    # Only prompts that were there before can have responses and comparisons already.
    old_prompts = sorted(prompt_ids.values())
    missing = [
        {"project_id": project.pk, "content_hash": h, **_prompt_fields(p)}
        for h, p in wanted_prompts.items()
        if h not in prompt_ids
    ]
    inserted = _insert_missing(Prompt, missing, returning=("content_hash", "id"))
    summary.prompts_created = len(missing)
    prompt_ids.update(inserted or [])
    if inserted is None or len(inserted) < len(missing):
        prompt_ids.update(_existing_prompts(project, [p["content_hash"] for p in missing]))

    # 2. Responses, found by (prompt, digest of text).
    wanted_responses: dict[tuple[int, str], dict] = {}
    for r in records:
        pid = prompt_ids[prompt_hash[r.line]]
        for item, digest in zip(r.responses, response_hashes[r.line], strict=True):
            if (pid, digest) not in wanted_responses:
                wanted_responses[(pid, digest)] = {
                    "prompt_id": pid,
                    "text": item.text,
                    "content_hash": digest,
                    "source": item.source or source,
                }
    response_ids = _existing_responses(old_prompts)
    missing_r = [row for key, row in wanted_responses.items() if key not in response_ids]
    inserted = _insert_missing(Response, missing_r, returning=("prompt_id", "content_hash", "id"))
    summary.responses_created = len(missing_r)
    if inserted is not None and len(inserted) == len(missing_r):
        response_ids.update(((pid, digest), rid) for pid, digest, rid in inserted)
    elif missing_r:
        response_ids = _existing_responses(sorted({pid for pid, _ in wanted_responses}))

    # 3. Comparisons: the labelled pair itself, or every pair of a prompt's responses (up to the cap).
    pairs: dict[tuple[int, int], int] = {}
    for r in records:
        pid = prompt_ids[prompt_hash[r.line]]
        ids = [response_ids[(pid, digest)] for digest in response_hashes[r.line]]
        combos = [tuple(ids)] if r.is_pair else list(itertools.combinations(ids, 2))
        if max_pairs_per_prompt is not None and not r.is_pair:
            combos = combos[:max_pairs_per_prompt]
        for x, y in combos:
            pairs.setdefault((min(x, y), max(x, y)), pid)
    comparison_ids = _existing_comparisons(old_prompts)
    # A new comparison's label count is known now: one label per annotator who labelled its pair
    # in this import. Writing it with the row saves recounting every new comparison afterwards.
    labellers: dict[tuple[int, int], set[str]] = {}
    for r in records:
        if r.is_pair:
            pid = prompt_ids[prompt_hash[r.line]]
            x, y = (response_ids[(pid, digest)] for digest in response_hashes[r.line])
            labellers.setdefault((min(x, y), max(x, y)), set()).add(r.annotator or annotator)
    missing_c = [
        {
            "project_id": project.pk,
            "prompt_id": pid,
            "response_a_id": a,
            "response_b_id": b,
            "label_count": len(labellers.get((a, b), ())),
        }
        for (a, b), pid in pairs.items()
        if (a, b) not in comparison_ids
    ]
    preexisting = set(comparison_ids.values())
    inserted = _insert_missing(Comparison, missing_c, returning=("response_a_id", "response_b_id", "id"))
    summary.comparisons_created = len(missing_c)
    if inserted is not None and len(inserted) == len(missing_c):
        comparison_ids.update(((a, b), cid) for a, b, cid in inserted)
    elif missing_c:
        comparison_ids = _existing_comparisons(sorted(set(pairs.values())))

    # 4. Preferences for labelled pairs: one per (comparison, annotator); a repeat must agree.
    labelled = [r for r in records if r.is_pair]
    if labelled:
        annotator_ids = _imported_annotators({r.annotator or annotator for r in labelled})
        wanted: dict[tuple[int, int], tuple[Record, str, int | None]] = {}
        errors: list[tuple[int, str]] = []
        for r in labelled:
            pid = prompt_ids[prompt_hash[r.line]]
            first, second = (response_ids[(pid, digest)] for digest in response_hashes[r.line])
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
            {
                "project_id": project.pk,
                "comparison_id": cid,
                "annotator_id": uid,
                "choice": choice,
                "strength": strength,
            }
            for (cid, uid), (_, choice, strength) in wanted.items()
            if (cid, uid) not in existing
        ]
        # No conflict is ignored here: a label written by someone else since the check above
        # fails the import (IntegrityError) rather than being silently kept or dropped.
        _insert_missing(Preference, new, ignore_conflicts=False)
        summary.preferences_created = len(new)
        summary.preferences_existing = len(wanted) - len(new)
        comparisons_recount(comparison_ids=sorted({cid for cid, _ in wanted if cid in preexisting}))
    return summary


def _lookup_batch() -> int:
    # PostgreSQL takes thousands of parameters a query; SQLite's limit is lower.
    return 5000 if connection.vendor == "postgresql" else BATCH


COPY_ROWS = 20_000


def _copy_escape(text: str) -> str:
    # COPY's text format: a backslash, tab, newline or carriage return inside a value is escaped.
    # Four replace() calls are several times faster than str.translate with a mapping.
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def _copy_value(value) -> str:
    if value is None:
        return "\\N"
    if isinstance(value, bool):
        return "t" if value else "f"
    if isinstance(value, str):
        return _copy_escape(value)
    if isinstance(value, (dict, list)):
        return _copy_escape(json.dumps(value, ensure_ascii=False))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def _insert_missing(
    model, rows: list[dict], *, ignore_conflicts: bool = True, returning: tuple[str, ...] = ()
) -> list[tuple] | None:
    """Inserts rows given as {attname: value}; other columns take their model defaults. Returns
    the `returning` columns of the inserted rows on PostgreSQL (rows skipped as conflicts are not
    among them), None elsewhere.

    On PostgreSQL the rows go through COPY into a temporary table and one INSERT ... SELECT from
    it (ON CONFLICT DO NOTHING unless told otherwise): several times faster than bulk_create,
    which builds and prepares a model instance per row, and than a multi-row INSERT, which the
    server must parse. Constraints and triggers apply as to any insert."""
    if not rows:
        return []
    if connection.vendor != "postgresql":
        objects = [model(**row) for row in rows]
        model.objects.bulk_create(objects, batch_size=BATCH, ignore_conflicts=ignore_conflicts)
        return None
    now = timezone.now()
    fields = [f for f in model._meta.concrete_fields if not f.primary_key]
    # Each column's COPY text: converted per row when given, rendered once when it is a default.
    getters = []
    for f in fields:
        if f.attname in rows[0]:
            getters.append(lambda row, name=f.attname: _copy_value(row[name]))
        else:
            text = _copy_value(now if getattr(f, "auto_now_add", False) else f.get_default())
            getters.append(lambda row, text=text: text)
    quote = connection.ops.quote_name
    table, staging = quote(model._meta.db_table), quote(f"import_{model._meta.db_table}")
    columns = ", ".join(quote(f.column) for f in fields)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP TABLE IF EXISTS {staging}")
        # The staging table has the target's column types and none of its constraints.
        cursor.execute(f"CREATE TEMPORARY TABLE {staging} ON COMMIT DROP AS SELECT {columns} FROM {table} WITH NO DATA")
        for batch in _batches(rows, COPY_ROWS):
            buffer = io.StringIO()
            for row in batch:
                buffer.write("\t".join([get(row) for get in getters]))
                buffer.write("\n")
            buffer.seek(0)
            cursor.cursor.copy_expert(f"COPY {staging} ({columns}) FROM STDIN", buffer)
        conflict = " ON CONFLICT DO NOTHING" if ignore_conflicts else ""
        back = ", ".join(quote(model._meta.get_field(name).column) for name in returning)
        cursor.execute(
            f"INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging}{conflict}"
            + (f" RETURNING {back}" if returning else "")
        )
        inserted = cursor.fetchall() if returning else []
        cursor.execute(f"DROP TABLE {staging}")
    return inserted


def comparisons_recount(*, comparison_ids: Sequence[int]) -> None:
    """Sets label_count from the preference rows, for writes that bypass preference_submit."""
    count = (
        Preference.objects.filter(comparison=OuterRef("pk"))
        .order_by()
        .values("comparison")
        .annotate(n=Count("id"))
        .values("n")
    )
    for batch in _batches(list(comparison_ids), _lookup_batch()):
        Comparison.objects.filter(pk__in=batch).update(label_count=Coalesce(Subquery(count), 0))


def _existing_prompts(project: Project, hashes: list[str]) -> dict[str, int]:
    found = {}
    for batch in _batches(hashes, _lookup_batch()):
        found.update(Prompt.objects.filter(project=project, content_hash__in=batch).values_list("content_hash", "id"))
    return found


def _existing_responses(prompt_ids: list[int]) -> dict[tuple[int, str], int]:
    """Every response of these prompts, by (prompt, digest). A prompt has a handful of responses,
    and the prompt_id index finds them, where a filter on both columns made PostgreSQL scan."""
    found: dict[tuple[int, str], int] = {}
    for batch in _batches(prompt_ids, _lookup_batch()):
        for rid, pid, h in Response.objects.filter(prompt_id__in=batch).values_list("id", "prompt_id", "content_hash"):
            found[(pid, h)] = rid
    return found


def _existing_comparisons(prompt_ids: list[int]) -> dict[tuple[int, int], int]:
    """Every comparison of these prompts, by its (response_a, response_b) pair."""
    found: dict[tuple[int, int], int] = {}
    for batch in _batches(prompt_ids, _lookup_batch()):
        rows = Comparison.objects.filter(prompt_id__in=batch).values_list("id", "response_a_id", "response_b_id")
        for cid, a, b in rows:
            found[(a, b)] = cid
    return found


def _existing_preferences(keys: list[tuple[int, int]]) -> dict[tuple[int, int], str]:
    wanted = set(keys)
    found: dict[tuple[int, int], str] = {}
    for batch in _batches(sorted({k[0] for k in keys}), _lookup_batch()):
        rows = Preference.objects.filter(comparison_id__in=batch).values_list("comparison_id", "annotator_id", "choice")
        for cid, uid, choice in rows:
            if (cid, uid) in wanted:
                found[(cid, uid)] = choice
    return found
