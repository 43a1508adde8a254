"""The model's answer for each claim with no demonstrations: the baseline ICM's labels are judged against.

ICM is worth running where its labels beat what the model says when simply asked. Each claim's query is scored
alone (the same prompt and label boundary as in the search, no other claims before it); the answer is True where
log P(True) > log P(False). The report gives the answers' accuracy against gold and how often ICM's labels agree
with them; labels.jsonl gives each claim's zero-shot margin.
"""

from __future__ import annotations

from .data import Example
from .prompts import Query
from .scoring import Scorer


def zero_shot_margins(scorer: Scorer, batch: list[Example]) -> dict[int, float]:
    margins = scorer.margins([Query(example.uid, ()) for example in batch])
    return {example.uid: margin for example, margin in zip(batch, margins, strict=True)}


def share(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def zero_shot_summary(batch: list[Example], labels: list[int | None], margins: dict[int, float]) -> dict:
    answers = {uid: int(margin > 0) for uid, margin in margins.items()}
    with_gold = [example for example in batch if example.gold is not None]
    labeled = [example for example in batch if labels[example.uid] is not None]
    return {
        "answered_true": share(sum(answers.values()), len(answers)),
        "accuracy": share(sum(answers[e.uid] == e.gold for e in with_gold), len(with_gold)),
        "gold_labels_compared": len(with_gold),
        "icm_labels_agreeing": share(sum(answers[e.uid] == labels[e.uid] for e in labeled), len(labeled)),
        "icm_labels_compared": len(labeled),
    }
