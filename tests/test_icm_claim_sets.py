"""The claim sets with gold labels for ICM on a small real model (`icm/claim_sets.py`), and the committed file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_scripts.errors import DistilleryError
from workflow_scripts.icm.claim_sets import CLAIM_SETS, claim_rows, write_claim_set
from workflow_scripts.icm.consistency import violations
from workflow_scripts.icm.data import load_dataset

CAPITALS = Path(__file__).resolve().parents[1] / "config" / "icm" / "capitals.jsonl"


def test_the_committed_capitals_file_is_the_generators_output():
    rows = [json.loads(line) for line in CAPITALS.read_text(encoding="utf-8").splitlines()]
    assert rows == claim_rows("capitals")
    assert rows[0] == {"text": "The capital of France is Paris.", "group": "capital-0", "consistency_key": "Paris",
                       "label": 1}  # fmt: skip


@pytest.mark.parametrize("name", CLAIM_SETS)
def test_each_group_holds_one_true_claim_and_the_gold_labels_are_consistent(name, tmp_path):
    examples = load_dataset(write_claim_set(name, tmp_path / f"{name}.jsonl"), "generic").examples
    groups: dict[str, list] = {}
    for example in examples:
        groups.setdefault(example.group, []).append(example)
    assert len(groups) == 44
    for members in groups.values():
        assert sorted(example.gold for example in members) == [0, 1]
        assert len({example.consistency_key for example in members}) == len(members)
    gold = [example.gold for example in examples]
    assert violations(examples, gold) == []
    assert len(violations(examples, [1] * len(examples))) == 44  # two claims of a group cannot both be true


def test_the_order_within_a_group_does_not_give_the_label_away():
    for name in CLAIM_SETS:
        firsts = [row["label"] for index, row in enumerate(claim_rows(name)) if index % 2 == 0]
        assert 0.25 < sum(firsts) / len(firsts) < 0.75, name


def test_an_unknown_claim_set_is_one_line():
    with pytest.raises(DistilleryError, match="unknown claim set 'planets'"):
        claim_rows("planets")
