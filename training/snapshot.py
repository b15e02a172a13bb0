"""The data a run trains on, frozen into files at its start.

A reward run reads the project's A/B preferences up to a watermark (the highest preference id at
snapshot time) and splits them into train and eval by comparison: every label of one comparison
lands on the same side, so the eval set never holds a pair the model trained on. The split is a
hash of the comparison id, so it is the same in every run and a new model and the active one can
be compared on the same eval pairs.

Beside them it writes comparisons.jsonl: the comparisons whose A/B labels (up to the watermark)
have a majority, eval side first, each once with both responses, for the new model to score
(scores.jsonl, read by the console's disagreements page).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from django.db.models import Max

from annotation.models import Choice, Comparison, Preference, Project

# The comparisons a reward run scores after training: the eval side first, then the train side,
# at most this many (the run also bounds the time it spends scoring).
MAX_SCORED_COMPARISONS = 20_000
LOOKUP_BATCH = 2_000


@dataclass(frozen=True)
class Snapshot:
    train_path: Path
    eval_path: Path
    train_pairs: int
    eval_pairs: int
    watermark: int
    sha256: str
    comparisons_path: Path | None = None
    comparisons: int = 0


def is_eval_comparison(comparison_id: int, eval_percent: int) -> bool:
    digest = hashlib.sha256(f"comparison:{comparison_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < eval_percent


def in_replay_sample(preference_id: int, replay_percent: int) -> bool:
    digest = hashlib.sha256(f"replay:{preference_id}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < replay_percent


def write_reward_snapshot(
    *,
    project: Project,
    folder: Path,
    eval_percent: int = 20,
    new_since: int | None = None,
    replay_percent: int = 100,
    max_scored: int = MAX_SCORED_COMPARISONS,
) -> Snapshot:
    """Writes train.jsonl and eval.jsonl (prompt, chosen, rejected, margin) into `folder`.

    For a warm start, `new_since` is the previous run's watermark: the train file then holds every
    preference after it plus a `replay_percent` sample of the older ones, so the model keeps what it
    learned without paying for a full pass. The eval file always holds the whole eval side."""
    folder.mkdir(parents=True, exist_ok=True)
    labels = Preference.objects.filter(project=project, choice__in=[Choice.A, Choice.B])
    watermark = labels.aggregate(m=Max("id"))["m"] or 0
    rows = (
        labels.filter(id__lte=watermark)
        .order_by("id")
        .values_list(
            "id",
            "comparison_id",
            "choice",
            "strength",
            "comparison__prompt__text",
            "comparison__prompt__messages",
            "comparison__response_a__text",
            "comparison__response_b__text",
        )
    )
    train_path, eval_path = folder / "train.jsonl", folder / "eval.jsonl"
    digest = hashlib.sha256()
    counts = {"train": 0, "eval": 0}
    # Per comparison: labels for A, labels for B, and whether it is on the eval side.
    votes: dict[int, list] = {}
    with train_path.open("w", encoding="utf-8") as train, eval_path.open("w", encoding="utf-8") as held_out:
        for pref_id, comparison_id, choice, strength, text, messages, text_a, text_b in rows.iterator(chunk_size=2000):
            side = "eval" if is_eval_comparison(comparison_id, eval_percent) else "train"
            vote = votes.setdefault(comparison_id, [0, 0, side == "eval"])
            vote[0 if choice == Choice.A else 1] += 1
            is_old = new_since is not None and pref_id <= new_since
            if side == "train" and is_old and not in_replay_sample(pref_id, replay_percent):
                continue
            chosen, rejected = (text_a, text_b) if choice == Choice.A else (text_b, text_a)
            record = {"prompt": messages if messages is not None else text, "chosen": chosen, "rejected": rejected}
            record["margin"] = float(strength or 0)
            line = json.dumps(record, ensure_ascii=False) + "\n"
            digest.update(line.encode("utf-8"))
            (held_out if side == "eval" else train).write(line)
            counts[side] += 1
    comparisons_path = folder / "comparisons.jsonl"
    scored = write_comparisons(votes=votes, path=comparisons_path, limit=max_scored)
    return Snapshot(
        train_path,
        eval_path,
        counts["train"],
        counts["eval"],
        watermark,
        digest.hexdigest(),
        comparisons_path=comparisons_path,
        comparisons=scored,
    )


def write_comparisons(*, votes: dict[int, list], path: Path, limit: int) -> int:
    """Writes {"comparison_id", "prompt", "response_a", "response_b", "split"} for each comparison
    whose A/B labels have a majority, eval side first and by id within a side, at most `limit`.
    Returns how many it wrote."""
    chosen = sorted((not is_eval, cid) for cid, (n_a, n_b, is_eval) in votes.items() if n_a != n_b)[:limit]
    written = 0
    with path.open("w", encoding="utf-8") as out:
        for start in range(0, len(chosen), LOOKUP_BATCH):
            batch = chosen[start : start + LOOKUP_BATCH]
            texts = {
                cid: (messages if messages is not None else text, text_a, text_b)
                for cid, text, messages, text_a, text_b in Comparison.objects.filter(
                    pk__in=[cid for _, cid in batch]
                ).values_list("id", "prompt__text", "prompt__messages", "response_a__text", "response_b__text")
            }
            for is_train, cid in batch:
                if cid not in texts:
                    continue  # deleted since its labels were read
                prompt, text_a, text_b = texts[cid]
                record = {
                    "comparison_id": cid,
                    "prompt": prompt,
                    "response_a": text_a,
                    "response_b": text_b,
                    "split": "train" if is_train else "eval",
                }
                out.write(json.dumps(record, ensure_ascii=False) + "\n")
                written += 1
    return written
