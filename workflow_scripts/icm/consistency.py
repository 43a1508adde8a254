"""Logical consistency between labeled claims, and the options the consistency fix chooses between.

The relations (as the reference's `pick_two_inconsistent_claims` defines them, within one consistency group):
- contradiction: different keys and both labeled true; for comparative keys (A>B vs B>A) also both false;
- implication: the same key and different labels.
The fix (the reference's `fix_inconsistency`) tries, for one violated pair at a time, the two labelings that
resolve it (contradiction: one true and the other false, either way round; implication: both true or both
false), keeps the better by the score U, and repeats on what is still inconsistent.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .data import Example

CONTRADICTION = "contradiction"
IMPLICATION = "implication"


@dataclass(frozen=True)
class Violation:
    first: int  # uids
    second: int
    kind: str

    def options(self) -> list[dict[int, int]]:
        """The labelings of the pair that resolve it, in the reference's order (decision score 0, then 1)."""
        if self.kind == CONTRADICTION:
            return [{self.first: 0, self.second: 1}, {self.first: 1, self.second: 0}]
        return [{self.first: 0, self.second: 0}, {self.first: 1, self.second: 1}]


def relation(first: Example, second: Example, first_label: int, second_label: int) -> str | None:
    """The relation these two labeled claims violate, if any."""
    if first.group != second.group or first.consistency_key is None or second.consistency_key is None:
        return None
    if first.consistency_key != second.consistency_key:
        both_true = first_label == second_label == 1
        both_false_comparison = first.comparative and first_label == second_label == 0
        return CONTRADICTION if both_true or both_false_comparison else None
    return IMPLICATION if first_label != second_label else None


def violations(examples: Sequence[Example], labels: Sequence[int | None]) -> list[Violation]:
    """Every violated pair among labeled claims, in batch order (the caller shuffles where the reference does)."""
    groups: dict[str, list[Example]] = {}
    for example in examples:
        if labels[example.uid] is not None:
            groups.setdefault(example.group, []).append(example)
    found = []
    for members in groups.values():
        for index, first in enumerate(members):
            for second in members[index + 1 :]:
                kind = relation(first, second, labels[first.uid], labels[second.uid])
                if kind:
                    found.append(Violation(first.uid, second.uid, kind))
    return found
