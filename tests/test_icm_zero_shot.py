"""The zero-shot baseline of an ICM report: each claim asked alone, its answers against gold and against ICM's."""

from __future__ import annotations

from workflow_scripts.icm.data import Example
from workflow_scripts.icm.zero_shot import zero_shot_margins, zero_shot_summary


class RecordingScorer:
    """Says True for even uids; remembers what it was asked."""

    calls = 0
    prompt_tokens = 0

    def __init__(self) -> None:
        self.queries = []

    def margins(self, queries):
        self.queries.extend(queries)
        return [1.5 if query.uid % 2 == 0 else -0.5 for query in queries]


def claims(golds):
    return [Example(uid, uid, f"claim {uid}", f"g{uid // 2}", None, gold) for uid, gold in enumerate(golds)]


def test_each_claim_is_asked_with_no_demonstrations():
    scorer = RecordingScorer()
    margins = zero_shot_margins(scorer, claims([1, 0, 1]))
    assert margins == {0: 1.5, 1: -0.5, 2: 1.5}
    assert [query.demonstrations for query in scorer.queries] == [(), (), ()]


def test_answers_are_compared_with_gold_and_with_the_labels_icm_gave():
    batch = claims([1, 1, 0, None])  # zero-shot answers: True, False, True, False
    summary = zero_shot_summary(batch, [1, 1, None, 0], {0: 1.5, 1: -0.5, 2: 1.5, 3: -0.5})
    assert summary == {
        "answered_true": 0.5,
        "accuracy": 0.3333,  # right on claim 0 only, of the 3 with gold
        "gold_labels_compared": 3,
        "icm_labels_agreeing": 0.6667,  # claims 0 and 3 of the 3 ICM labeled
        "icm_labels_compared": 3,
    }


def test_a_batch_without_gold_or_labels_has_no_shares_to_report():
    summary = zero_shot_summary(claims([None, None]), [None, None], {0: 0.0, 1: 0.0})
    assert summary["accuracy"] is None and summary["icm_labels_agreeing"] is None and summary["answered_true"] == 0.0
