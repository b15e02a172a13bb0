"""The annotator queue: which comparison a person gets next, and what they do with it.

An annotator is given a comparison that they have not labelled or skipped and that still needs
labels: its labels plus the live leases on it are fewer than the project's overlap. Giving it to
them is a lease (an Assignment row) that lasts `project.lease_seconds`; a lease past its expiry
counts for nothing, so abandoned work goes back to the pool without a sweeper.

Serving order: with probability `project.gold_rate` a gold comparison is tried first, otherwise a
regular one (and the other kind when the first has nothing left); within a kind, the comparisons
closest to completion (label_count desc), then the newest policy's (policy_rank desc), then the
oldest id. One index (comparison_queue_order, migration 0004) holds exactly this order, so
leasing walks it and stops at the first row that passes the per-annotator checks.

Gold comparisons are exempt from the overlap: they exist to measure every annotator, so each
annotator is given each gold comparison once. Nothing sent to the page says which ones are gold.

Concurrency (PostgreSQL): the walk locks the row it picks with FOR UPDATE SKIP LOCKED, so two
requests never pick the same row at the same moment. The walk's subqueries read the
snapshot taken when its statement started, though, and a lease committed by someone else just
before we locked the row may be missing from it; so the locked row is checked again by a second
statement, whose snapshot sees every lease committed before we held the lock. Every write of a
lease or a label locks the comparison row first, which is what makes that second check final.
Skipping locked rows must not tell anyone the queue is empty while the only rows left are locked
for a moment by others (a submit in flight, say): when the skipping walk finds nothing, the walk
takes the first candidate whether locked or not and waits for that one row's lock, as long as this
transaction holds no other comparison lock (so waiting requests cannot deadlock); a row that
filled up meanwhile fails its recheck.
On SQLite, SELECT ... FOR UPDATE does not exist; there each write transaction takes the database's
write lock first, so the checks and the insert run as if alone.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db import connection, transaction
from django.db.models import Count, F, Q
from django.utils import timezone

from annotation.markdown import render_markdown
from annotation.models import (
    Assignment,
    AssignmentStatus,
    Choice,
    Membership,
    Preference,
    Project,
    Prompt,
    Side,
    Strength,
)
from config import prepared

NOT_LEASED = "not_leased"
ALREADY_LABELLED = "already_labelled"
LEASE_EXPIRED = "lease_expired"
INVALID = "invalid"

MAX_RATIONALE_CHARS = 5000
MAX_SKIP_REASON_CHARS = 1000
MAX_TIME_SPENT_MS = 24 * 3600 * 1000
# How many freshly locked rows may fail their second check before a request gives up; each
# failure means another request leased that row in the instant before we locked it.
MAX_LEASE_ATTEMPTS = 50


class QueueError(Exception):
    """A refused queue action. `code` is one of not_leased, already_labelled, lease_expired,
    invalid; `message` says what happened in words an annotator understands; `field` names the
    offending input for `invalid`."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field


# Leasing -----------------------------------------------------------------------------------------

# The leasing query. It is written out in SQL rather than built with the ORM because it runs
# twice on every "next" request and building it costs more than running it; on PostgreSQL it runs
# as a prepared statement (config.prepared), as do the other statements of every labelling
# request, because planning it cost more than running it too. Its WHERE clause is
# the queue's rules; its ORDER BY is the comparison_queue_order index, which PostgreSQL walks from
# the top, checking each row's subqueries, until a row passes and can be locked.
_CANDIDATES = """
SELECT c.id FROM annotation_comparison c
WHERE c.project_id = %(project)s AND c.is_gold = %(gold)s {regular}
  AND NOT EXISTS (
    SELECT 1 FROM annotation_preference p WHERE p.comparison_id = c.id AND p.annotator_id = %(annotator)s)
  AND NOT EXISTS (
    SELECT 1 FROM annotation_assignment mine
    WHERE mine.comparison_id = c.id AND mine.annotator_id = %(annotator)s
      AND (mine.status <> 'leased' OR mine.expires_at > %(now)s))
  {only}
"""
# Regular comparisons need room under the overlap. The annotator's own leases were ruled out just
# above (any assignment of theirs but an expired lease: they labelled, skipped or hold it), so
# every live lease counted here is someone else's.
_REGULAR = """
  AND c.label_count < %(overlap)s
  AND c.label_count + (
    SELECT count(*) FROM annotation_assignment live
    WHERE live.comparison_id = c.id AND live.status = 'leased' AND live.expires_at > %(now)s) < %(overlap)s
"""
_ORDER = " ORDER BY c.label_count DESC, c.policy_rank DESC, c.id LIMIT 1"


def _candidate_sql(*, gold: bool, only: str = "") -> str:
    return _CANDIDATES.format(regular="" if gold else _REGULAR, only=only)


def _params(*, project: Project, annotator, now: datetime, gold: bool) -> dict:
    return {
        "project": project.pk,
        "gold": gold,
        "annotator": annotator.pk,
        "now": connection.ops.adapt_datetimefield_value(now),
        "overlap": project.overlap,
    }


def _pick(
    *, project: Project, annotator, now: datetime, gold: bool, rejected: list[int], wait: bool = False
) -> int | None:
    """Locks and returns the first comparison in serving order that the annotator may be given,
    passing over rows other requests hold locked; with `wait`, the first such row whether locked
    or not, waiting for its lock (PostgreSQL)."""
    params = _params(project=project, annotator=annotator, now=now, gold=gold)
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # One text for any list of passed-over rows, so that it is prepared once.
            sql = _candidate_sql(gold=gold, only="AND c.id <> ALL(%(rejected)s)") + _ORDER
            if not wait:
                sql += " FOR UPDATE OF c SKIP LOCKED"
            name = f"rlhf_pick_{'gold' if gold else 'regular'}{'_wait' if wait else ''}"
            prepared.execute(cursor, name, sql, params | {"rejected": [int(pk) for pk in rejected]})
        else:
            only = ""
            if rejected:
                only = "AND c.id NOT IN (" + ", ".join(str(int(pk)) for pk in rejected) + ")"
            cursor.execute(_candidate_sql(gold=gold, only=only) + _ORDER, params)
        row = cursor.fetchone()
        if row and wait:
            # Waits for that one row only. A locking walk would keep the lock of every row it
            # waited for and then found full, and wait for the next while holding it: a deadlock
            # with another request doing the same.
            cursor.execute("SELECT id FROM annotation_comparison WHERE id = %s FOR UPDATE", [row[0]])
            row = cursor.fetchone()
    return row[0] if row else None


def _still_open(*, project: Project, annotator, now: datetime, gold: bool, comparison_id: int) -> bool:
    params = _params(project=project, annotator=annotator, now=now, gold=gold) | {"id": comparison_id}
    with connection.cursor() as cursor:
        name = f"rlhf_still_open_{'gold' if gold else 'regular'}"
        prepared.execute(cursor, name, _candidate_sql(gold=gold, only="AND c.id = %(id)s"), params)
        return cursor.fetchone() is not None


# Reads -------------------------------------------------------------------------------------------


_PROJECT_TO_LABEL = """
SELECT p.* FROM annotation_project p JOIN annotation_membership m ON m.project_id = p.id
WHERE p.slug = %s AND m.user_id = %s LIMIT 1
"""
_HELD_LEASE = """
SELECT * FROM annotation_assignment
WHERE project_id = %s AND annotator_id = %s AND status = 'leased' AND expires_at > %s {exclude}
ORDER BY leased_at, id LIMIT 1
"""


def held_lease(*, project: Project, annotator, now: datetime, exclude_ids=()) -> Assignment | None:
    """The annotator's oldest live lease in this project on a comparison not in `exclude_ids`
    (written out in SQL and prepared: it runs on every "next" request)."""
    params = [project.pk, annotator.pk, connection.ops.adapt_datetimefield_value(now)]
    if connection.vendor == "postgresql":
        params.append([int(pk) for pk in exclude_ids])
        sql, params = prepared.statement(
            "rlhf_held_lease", _HELD_LEASE.format(exclude="AND comparison_id <> ALL(%s)"), params
        )
    else:
        exclude = ""
        if exclude_ids:
            exclude = "AND comparison_id NOT IN (" + ", ".join(str(int(pk)) for pk in exclude_ids) + ")"
        sql = _HELD_LEASE.format(exclude=exclude)
    return next(iter(Assignment.objects.raw(sql, params)), None)


def project_to_label(*, user, slug: str) -> Project | None:
    """The project with this slug if the user labels in it, else None. Members label, whatever
    their role; staff are admins everywhere but label only where they are members, because their
    labels enter the data like anyone's."""
    if not user.is_authenticated or not user.is_active:
        return None
    # Raw SQL for the reason given at _CANDIDATES: every labelling request starts with this look-up.
    sql, params = prepared.statement("rlhf_project_to_label", _PROJECT_TO_LABEL, [slug, user.pk])
    return next(iter(Project.objects.raw(sql, params)), None)


def labelling_project_ids(*, user) -> set[int]:
    return set(Membership.objects.filter(user=user).values_list("project_id", flat=True))


def labelled_since(*, project: Project, annotator, since: datetime) -> int:
    return Preference.objects.filter(project=project, annotator=annotator, created_at__gte=since).count()


def gold_accuracy(*, project: Project) -> dict[int, tuple[int, int]]:
    """Per annotator id: (correct, total) over their labels of the project's gold comparisons."""
    rows = (
        Preference.objects.filter(project=project, comparison__is_gold=True)
        .order_by()
        .values("annotator_id")
        .annotate(total=Count("id"), correct=Count("id", filter=Q(choice=F("comparison__gold_choice"))))
    )
    return {row["annotator_id"]: (row["correct"], row["total"]) for row in rows}


# Writes ------------------------------------------------------------------------------------------


def _take_sqlite_write_lock() -> None:
    """On SQLite, takes the database's write lock now with a write that changes nothing, so the
    whole transaction runs as if alone. A read-then-write transaction would instead fail with
    "database is locked" when another writer got in between its read and its write."""
    with connection.cursor() as cursor:
        cursor.execute("UPDATE annotation_assignment SET status = status WHERE 1 = 0")


def _fits_bigint(comparison_id: int) -> bool:
    """Whether the id could be a row's at all (bigint holds them all): a bigger one would make the
    database refuse the statement instead of matching nothing."""
    return -(2**63) <= comparison_id < 2**63


def _lock_comparison(*, project: Project, comparison_id: int) -> bool:
    """Locks the project's comparison with this id (on SQLite, the database's write lock) and says
    whether there is one. Statements after it see every write committed before the lock was held."""
    if not _fits_bigint(comparison_id):
        return False
    if connection.vendor == "sqlite":
        _take_sqlite_write_lock()
    sql = "SELECT id FROM annotation_comparison WHERE id = %s AND project_id = %s"
    if connection.vendor == "postgresql":
        sql += " FOR UPDATE"
    with connection.cursor() as cursor:
        prepared.execute(cursor, "rlhf_lock_comparison", sql, [comparison_id, project.pk])
        return cursor.fetchone() is not None


def _lease_one(*, project: Project, annotator, now: datetime, gold: bool, held: list[int]) -> int | None:
    """Locks and returns the id of the first comparison of the kind that this annotator may be
    given, or None when there is none. `held` collects the rows this transaction locked and
    passed over (it keeps their locks until it ends)."""
    rejected: list[int] = []
    waited = False
    for _ in range(MAX_LEASE_ATTEMPTS):
        picked = _pick(project=project, annotator=annotator, now=now, gold=gold, rejected=rejected)
        if picked is None and not waited and not held and connection.vendor == "postgresql":
            # Nothing unlocked is left; rows locked by others may still have room once they
            # commit. Waiting is safe only while we hold no comparison lock ourselves.
            waited = True
            picked = _pick(project=project, annotator=annotator, now=now, gold=gold, rejected=rejected, wait=True)
        if picked is None:
            return None
        # The second look, with a snapshot taken after the lock was granted (see the module text).
        if _still_open(project=project, annotator=annotator, now=now, gold=gold, comparison_id=picked):
            return picked
        rejected.append(picked)
        held.append(picked)
    return None


# Assignment.objects.bulk_create([...], update_conflicts=True, ...) written out (see _CANDIDATES).
_LEASE = """
INSERT INTO annotation_assignment
  (project_id, comparison_id, annotator_id, status, shown_left, leased_at, expires_at, first_shown_at, skip_reason)
VALUES (%s, %s, %s, 'leased', %s, %s, %s, NULL, '')
ON CONFLICT (comparison_id, annotator_id) DO UPDATE SET
  status = EXCLUDED.status, shown_left = EXCLUDED.shown_left, leased_at = EXCLUDED.leased_at,
  expires_at = EXCLUDED.expires_at, first_shown_at = NULL, skip_reason = ''
RETURNING id
"""


@transaction.atomic
def assignment_next(
    *,
    project: Project,
    annotator,
    now: datetime | None = None,
    exclude_ids: list[int] | tuple[int, ...] = (),
    rng: random.Random | None = None,
) -> Assignment | None:
    """The lease the annotator holds (the oldest live one whose comparison is not in
    `exclude_ids`), or a new lease on the next comparison for them; None when nothing is left.
    The page passes the comparison it is showing in `exclude_ids` to prefetch the one after."""
    now = now or timezone.now()
    rng = rng or random
    if connection.vendor == "sqlite":
        _take_sqlite_write_lock()
    # Two requests of one annotator at the same moment (two tabs) may each lease a comparison;
    # that costs a lease that expires, never a label beyond the overlap, so it is not prevented.
    assignment = held_lease(project=project, annotator=annotator, now=now, exclude_ids=exclude_ids)
    if assignment is not None:
        return assignment

    gold_first = project.gold_rate > 0 and rng.random() < project.gold_rate
    kinds = (True, False) if gold_first else ((False, True) if project.gold_rate > 0 else (False,))
    passed_over: list[int] = []
    for gold in kinds:
        comparison_id = _lease_one(project=project, annotator=annotator, now=now, gold=gold, held=passed_over)
        if comparison_id is not None:
            break
    else:
        return None

    assignment = Assignment(
        project=project,
        comparison_id=comparison_id,
        annotator=annotator,
        status=AssignmentStatus.LEASED,
        shown_left=rng.choice((Side.A, Side.B)),
        leased_at=now,
        expires_at=now + timedelta(seconds=project.lease_seconds),
    )
    # An expired lease of theirs on the same comparison is renewed in place, in the same statement.
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        prepared.execute(
            cursor,
            "rlhf_lease",
            _LEASE,
            [project.pk, comparison_id, annotator.pk, assignment.shown_left, adapt(now), adapt(assignment.expires_at)],
        )
        assignment.pk = cursor.fetchone()[0]
    assignment._state.adding = False
    if connection.vendor == "postgresql":
        # A lease is soft state: if the server crashed in the next few milliseconds and lost it,
        # the comparison would simply be leased again. Not waiting for the WAL flush takes the
        # disk's fsync out of every "next" request. Labels (preference_submit) still wait.
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")
    return assignment


_MARK_SHOWN = """
UPDATE annotation_assignment SET first_shown_at = %s
WHERE project_id = %s AND annotator_id = %s AND comparison_id = %s
  AND status = 'leased' AND expires_at > %s AND first_shown_at IS NULL
"""


def lease_mark_shown(*, project: Project, annotator, comparison_id: int, now: datetime | None = None) -> None:
    """Records that the comparison the annotator holds a live lease on is now on their screen (the
    page says so in its next request); an unknown id, another's lease or a second call change
    nothing."""
    if not _fits_bigint(comparison_id):
        return
    now = connection.ops.adapt_datetimefield_value(now or timezone.now())
    with connection.cursor() as cursor:
        prepared.execute(cursor, "rlhf_mark_shown", _MARK_SHOWN, [now, project.pk, annotator.pk, comparison_id, now])


def assignment_mark_shown(*, assignment: Assignment, now: datetime | None = None) -> None:
    """Records when the annotator first saw the comparison; later calls change nothing."""
    now = now or timezone.now()
    Assignment.objects.filter(pk=assignment.pk, first_shown_at__isnull=True).update(first_shown_at=now)
    if assignment.first_shown_at is None:
        assignment.first_shown_at = now


def _check_answer(
    *, choice: str, strength: int | None, rationale: str, time_spent_ms: int | None, shown_left: str | None
) -> None:
    if not isinstance(choice, str) or choice not in Choice.values:
        raise QueueError(INVALID, f"choice must be one of {', '.join(Choice.values)}.", "choice")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, int) or strength not in Strength.values:
            raise QueueError(INVALID, "strength must be 1 (slightly), 2 (clearly) or 3 (much better).", "strength")
        if choice not in (Choice.A, Choice.B):
            raise QueueError(INVALID, "A strength goes with choice a or b, not with a tie or both bad.", "strength")
    if not isinstance(rationale, str):
        raise QueueError(INVALID, "rationale must be text.", "rationale")
    if len(rationale) > MAX_RATIONALE_CHARS:
        raise QueueError(INVALID, f"rationale is longer than {MAX_RATIONALE_CHARS} characters.", "rationale")
    if "\x00" in rationale:
        raise QueueError(INVALID, "rationale contains a NUL character.", "rationale")
    if time_spent_ms is not None and (
        isinstance(time_spent_ms, bool) or not isinstance(time_spent_ms, int) or not 0 <= time_spent_ms
    ):
        raise QueueError(INVALID, "time_spent_ms must be a whole number of milliseconds, 0 or more.", "time_spent_ms")
    if shown_left is not None and shown_left not in Side.values:
        raise QueueError(INVALID, "shown_left must be a or b.", "shown_left")


# What a submit needs to know about the comparison, read under its lock in one statement: whether
# it is gold, its label count, whether this annotator labelled it, and their assignment of it.
_SUBMIT_STATE = """
SELECT c.is_gold, c.label_count,
       EXISTS (SELECT 1 FROM annotation_preference p
               WHERE p.comparison_id = c.id AND p.annotator_id = %(annotator)s),
       a.id, a.status, a.shown_left, a.expires_at <= %(now)s
FROM annotation_comparison c
LEFT JOIN annotation_assignment a ON a.comparison_id = c.id AND a.annotator_id = %(annotator)s
WHERE c.id = %(id)s AND c.project_id = %(project)s
"""

_LABEL_COLUMNS = (
    "project_id",
    "comparison_id",
    "annotator_id",
    "choice",
    "strength",
    "rationale",
    "shown_left",
    "time_spent_ms",
    "created_at",
)
_INSERT_LABEL = (
    f"INSERT INTO annotation_preference ({', '.join(_LABEL_COLUMNS)}) "
    f"VALUES ({', '.join(['%s'] * len(_LABEL_COLUMNS))}) RETURNING id"
)
_COUNT_LABEL = "UPDATE annotation_comparison SET label_count = label_count + 1 WHERE id = %s"
_SUBMITTED = f"UPDATE annotation_assignment SET status = '{AssignmentStatus.SUBMITTED.value}' WHERE id = %s"


@transaction.atomic
def preference_submit(
    *,
    project: Project,
    annotator,
    comparison_id: int,
    choice: str,
    strength: int | None = None,
    rationale: str = "",
    time_spent_ms: int | None = None,
    shown_left: str | None = None,
    now: datetime | None = None,
) -> tuple[Preference, bool]:
    """Stores the annotator's label of a comparison leased to them; returns (preference, created).
    `choice` names the comparison's response_a or response_b, whichever side each was shown on.
    Sending the same answer again returns the stored label (a double click, a retried request);
    a different answer for a labelled comparison is refused."""
    now = now or timezone.now()
    _check_answer(
        choice=choice, strength=strength, rationale=rationale, time_spent_ms=time_spent_ms, shown_left=shown_left
    )
    # Very long sessions (a tab left open overnight) are capped, not refused: the label is good.
    if time_spent_ms is not None:
        time_spent_ms = min(time_spent_ms, MAX_TIME_SPENT_MS)
    # The row lock orders this against leases of the same comparison and against a second submit
    # of it, which then finds this one's label and answers as a retry. The state is read by a
    # second statement: one that waited for the lock would still read the snapshot from before.
    if not _lock_comparison(project=project, comparison_id=comparison_id):
        raise QueueError(NOT_LEASED, f"Comparison {comparison_id} is not assigned to you in this project.")
    params = {
        "id": comparison_id,
        "project": project.pk,
        "annotator": annotator.pk,
        "now": connection.ops.adapt_datetimefield_value(now),
    }
    with connection.cursor() as cursor:
        prepared.execute(cursor, "rlhf_submit_state", _SUBMIT_STATE, params)
        is_gold, label_count, labelled, assignment_id, status, leased_left, expired = cursor.fetchone()

    if labelled:
        existing = Preference.objects.get(comparison_id=comparison_id, annotator=annotator)
        if existing.choice == choice and existing.strength == strength:
            return existing, False
        raise QueueError(
            ALREADY_LABELLED,
            f"You already labelled comparison {comparison_id} ({existing.get_choice_display().lower()}); "
            "a label cannot be changed.",
        )

    if assignment_id is None or status != AssignmentStatus.LEASED:
        if status == AssignmentStatus.SKIPPED:
            message = f"You skipped comparison {comparison_id}, so it is no longer assigned to you."
        else:
            message = f"Comparison {comparison_id} is not assigned to you in this project."
        raise QueueError(NOT_LEASED, message)
    if shown_left is not None and shown_left != leased_left:
        raise QueueError(
            INVALID,
            f"shown_left is {shown_left}, but response {leased_left} was shown on the left; "
            "the page and the server disagree about the sides, so the label was not stored.",
            "shown_left",
        )
    if expired and not is_gold:
        live = Assignment.objects.filter(
            comparison_id=comparison_id, status=AssignmentStatus.LEASED, expires_at__gt=now
        ).count()
        if label_count + live >= project.overlap:
            raise QueueError(
                LEASE_EXPIRED,
                f"Your time on comparison {comparison_id} ran out and it went to someone else; "
                "the label was not stored.",
            )

    preference = Preference(
        project=project,
        comparison_id=comparison_id,
        annotator=annotator,
        choice=choice,
        strength=strength,
        rationale=rationale,
        shown_left=leased_left,
        time_spent_ms=time_spent_ms,
        created_at=timezone.now(),
    )
    # No full_clean(): _check_answer validated every field the caller sent, the checks above
    # settled the keys and the one-label rule under the lock, and the database enforces them all
    # again. full_clean() would add a query per foreign key and per check constraint. The INSERT
    # is written out (preference.save()) so that it is prepared like the rest.
    values = [getattr(preference, column) for column in _LABEL_COLUMNS]
    values[-1] = connection.ops.adapt_datetimefield_value(values[-1])  # created_at
    with connection.cursor() as cursor:
        prepared.execute(cursor, "rlhf_insert_label", _INSERT_LABEL, values)
        preference.pk = cursor.fetchone()[0]
        preference._state.adding = False
        prepared.execute(cursor, "rlhf_count_label", _COUNT_LABEL, [comparison_id])
        prepared.execute(cursor, "rlhf_assignment_submitted", _SUBMITTED, [assignment_id])
    return preference, True


@transaction.atomic
def assignment_skip(
    *, project: Project, annotator, comparison_id: int, reason: str, now: datetime | None = None
) -> Assignment:
    """Gives a leased comparison back with a reason; the annotator is not offered it again.
    Skipping twice is harmless."""
    if not isinstance(reason, str) or not reason.strip():
        raise QueueError(INVALID, "Say why you skip this comparison.", "reason")
    reason = reason.strip()
    if len(reason) > MAX_SKIP_REASON_CHARS:
        raise QueueError(INVALID, f"The reason is longer than {MAX_SKIP_REASON_CHARS} characters.", "reason")
    if "\x00" in reason:
        raise QueueError(INVALID, "The reason contains a NUL character.", "reason")
    assignment = None
    if _lock_comparison(project=project, comparison_id=comparison_id):
        assignment = Assignment.objects.filter(comparison_id=comparison_id, annotator=annotator).first()
    if assignment is None:
        raise QueueError(NOT_LEASED, f"Comparison {comparison_id} is not assigned to you in this project.")
    if assignment.status == AssignmentStatus.SKIPPED:
        return assignment
    if assignment.status == AssignmentStatus.SUBMITTED:
        raise QueueError(ALREADY_LABELLED, f"You already labelled comparison {comparison_id}; it cannot be skipped.")
    assignment.status = AssignmentStatus.SKIPPED
    assignment.skip_reason = reason
    assignment.save(update_fields=["status", "skip_reason"])
    return assignment


# What the page shows ------------------------------------------------------------------------------

ROLE_LABELS = {"user": "User", "human": "User", "assistant": "Assistant", "system": "System"}
# HH-RLHF style dialogues: "\n\nHuman: ...\n\nAssistant: ...", ending in an empty "Assistant:".
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):[ \t]?")


@dataclass(frozen=True)
class Turn:
    role: str
    label: str
    html: str


@dataclass(frozen=True)
class AssignmentDisplay:
    comparison_id: int
    shown_left: str
    turns: list[Turn]
    left_html: str
    right_html: str


def prompt_turns(prompt: Prompt) -> list[tuple[str, str]]:
    """The prompt as (role, text) turns: its chat messages, an HH-style dialogue split at its
    speaker markers, or one user turn."""
    if prompt.messages is not None:
        turns = []
        for message in prompt.messages:
            if isinstance(message, dict):
                turns.append((str(message.get("role", "user")), str(message.get("content", ""))))
            else:
                turns.append(("user", str(message)))
        return turns
    text = prompt.text
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        return [("user", text)]
    turns = [(speaker.lower(), content.strip()) for speaker, content in zip(parts[1::2], parts[2::2], strict=True)]
    if turns and turns[-1][0] == "assistant" and not turns[-1][1]:
        turns.pop()
    return [("user" if role == "human" else role, content) for role, content in turns] or [("user", text)]


_DISPLAY = """
SELECT p.text, p.messages, a.text, b.text FROM annotation_comparison c
JOIN annotation_prompt p ON p.id = c.prompt_id
JOIN annotation_response a ON a.id = c.response_a_id
JOIN annotation_response b ON b.id = c.response_b_id
WHERE c.id = %s
"""


def assignment_display(*, assignment: Assignment) -> AssignmentDisplay:
    """Everything the page needs to show a leased comparison, rendered and sanitised. Says nothing
    about gold status, response sources or which response is a or b."""
    with connection.cursor() as cursor:
        prepared.execute(cursor, "rlhf_display", _DISPLAY, [assignment.comparison_id])
        text, messages, first, second = cursor.fetchone()
    messages = Prompt._meta.get_field("messages").from_db_value(messages, None, connection)
    left, right = (first, second) if assignment.shown_left == Side.A else (second, first)
    turns = [
        Turn(role=role if role in ROLE_LABELS else "other", label=ROLE_LABELS.get(role, role), html=render_markdown(t))
        for role, t in prompt_turns(Prompt(text=text, messages=messages))
    ]
    return AssignmentDisplay(
        comparison_id=assignment.comparison_id,
        shown_left=assignment.shown_left,
        turns=turns,
        left_html=render_markdown(left),
        right_html=render_markdown(right),
    )
