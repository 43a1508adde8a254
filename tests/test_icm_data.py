"""ICM's inputs: the reference's testbed files and prompts, the generic JSONL format, batches, prompt token ids."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workflow_scripts.architectures.tiny import train_tokenizer
from workflow_scripts.engines.base import TokenLogprob
from workflow_scripts.errors import DistilleryError
from workflow_scripts.icm.data import load_dataset, select_batch
from workflow_scripts.icm.prompts import LABEL_WORDS, PromptBuilder, Query, prompt_text
from workflow_scripts.icm.scoring import label_margin

CAPITALS = Path(__file__).resolve().parents[1] / "config" / "icm" / "capitals.jsonl"


def write_json(path, rows):
    path.write_text(json.dumps(rows))
    return path


def test_truthfulqa_rows_get_the_reference_prompt_and_keys_from_their_labels(tmp_path):
    rows = [
        {"question": "Can pigs fly?", "choice": "No.", "label": 1, "consistency_id": 3},
        {"question": "Can pigs fly?", "choice": "Yes.", "label": 0, "consistency_id": 3},
    ]
    data = load_dataset(write_json(tmp_path / "train_truthfulqa.json", rows), "truthfulqa")
    assert data.examples[0].prompt == "Question: Can pigs fly?\nClaim: No.\nI think this claim is "
    assert [e.consistency_key for e in data.examples] == ["A", "B"]
    assert data.keys_from_gold


def test_gsm8k_keys_are_the_final_answers(tmp_path):
    rows = [
        {"question": "2+3?", "choice": "2+3=5. The answer is 5", "answer": 5, "label": 1, "consistency_id": 0},
        {"question": "2+3?", "choice": "2+3=6. The answer is 6", "answer": 6, "label": 0, "consistency_id": 0},
    ]
    data = load_dataset(write_json(tmp_path / "train_gsm8k.json", rows), "gsm8k")
    assert [e.consistency_key for e in data.examples] == ["5", "6"]
    assert not data.keys_from_gold
    assert data.examples[1].prompt.startswith("Question: 2+3?\nClaim: 2+3=6.")


def test_alpaca_comparisons_are_one_line_per_response_and_comparative(tmp_path):
    rows = [
        {
            "question": "Hi",
            "choice": "Hello!\nHow can I help?",
            "choice_2": "Go away.",
            "label": 1,
            "consistency_id": 1,
        },
        {
            "question": "Hi",
            "choice": "Go away.",
            "choice_2": "Hello!\nHow can I help?",
            "label": 0,
            "consistency_id": 1,
        },
    ]
    data = load_dataset(write_json(tmp_path / "train_alpaca.json", rows), "alpaca")
    assert "Response 1: Hello!How can I help?\nResponse 2: Go away.\n" in data.examples[0].prompt
    assert data.examples[0].prompt.endswith("more helpful and harmless than Response 2.\nI think this claim is ")
    assert [e.consistency_key for e in data.examples] == ["A>B", "B>A"]
    assert all(e.comparative for e in data.examples)


def test_generic_jsonl_has_optional_group_key_and_label(tmp_path):
    path = tmp_path / "claims.jsonl"
    path.write_text(
        '{"text": "2 + 2 = 4", "group": "q", "consistency_key": "4", "label": true}\n{"text": "sky is green"}\n'
    )
    data = load_dataset(path, "generic")
    assert data.examples[0].prompt == "2 + 2 = 4\nI think this claim is "
    assert (data.examples[0].gold, data.examples[1].gold) == (1, None)
    assert data.examples[1].consistency_key is None
    assert data.examples[0].group != data.examples[1].group


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"text": "a"}\nnot json\n', "line 2 is not valid JSON"),
        ('{"claim": "a"}\n', "row 1 lacks text"),
        ('{"text": "a", "label": "maybe"}\n', "label 'maybe' is not 0/1"),
    ],
)
def test_bad_rows_are_refused_with_the_file_and_line(tmp_path, content, message):
    path = tmp_path / "claims.jsonl"
    path.write_text(content)
    with pytest.raises(DistilleryError, match=message) as raised:
        load_dataset(path, "generic")
    assert str(path) in str(raised.value)


def test_a_batch_holds_whole_groups_drawn_by_the_seed(tmp_path):
    path = tmp_path / "claims.jsonl"
    path.write_text("".join(json.dumps({"text": f"c{i}", "group": f"g{i // 4}"}) + "\n" for i in range(40)))
    data = load_dataset(path, "generic")
    batch = select_batch(data, 12, seed=1)
    assert [e.uid for e in batch] == list(range(12))
    groups = [e.group for e in batch]
    assert all(groups.count(g) == 4 for g in groups)
    assert [e.row for e in select_batch(data, 12, seed=1)] == [e.row for e in batch]
    assert [e.row for e in select_batch(data, 12, seed=2)] != [e.row for e in batch]


def test_prompts_assembled_from_pieces_equal_the_whole_text_tokenized(tmp_path):
    """This tokenizer keeps the trailing space apart from "True" in the demonstrations too, so the query keeps
    it: the prompt is exactly the whole text tokenized."""
    path = tmp_path / "claims.jsonl"
    path.write_text("".join(json.dumps({"text": f"{i} + {i} = {2 * i}"}) + "\n" for i in range(5)))
    examples = load_dataset(path, "generic").examples
    tokenizer = train_tokenizer(512)
    query = Query(2, ((0, 1), (4, 0), (1, 1)))
    text = prompt_text(examples, query)
    assert text.startswith("0 + 0 = 0\nI think this claim is True\n\n4 + 4 = 8\nI think this claim is False\n\n")
    assert PromptBuilder(tokenizer, examples).token_ids(query) == tokenizer(text)["input_ids"]


def test_on_a_real_tokenizer_the_query_ends_where_its_demonstrations_hold_the_label(smollm2_tokenizer):
    """SmolLM2's byte-level BPE (as Llama 3's) tokenizes the prompt alone with its trailing space as a token of
    its own, but " True" as one token after "is" in a demonstration: the query is cut before the space, so the
    model is asked for the label at the boundary where every demonstration shows one."""
    examples = load_dataset(CAPITALS, "generic").examples[:6]
    builder = PromptBuilder(smollm2_tokenizer, examples)
    for example in examples:
        query = builder.query(example.uid)
        assert smollm2_tokenizer.decode(query).endswith("I think this claim is")
        for label, word in enumerate(LABEL_WORDS):
            demonstration = builder.demonstration(example.uid, label)
            assert demonstration[: len(query)] == query
            assert smollm2_tokenizer.decode(demonstration[len(query)]) == f" {word}"


def test_label_margin_sums_true_and_false_tokens_as_the_reference_does():
    candidates = [TokenLogprob(1, " True", -1.0), TokenLogprob(2, "true", -2.0), TokenLogprob(3, "False", -0.5),
                  TokenLogprob(4, "TrueFalse", 0.0), TokenLogprob(5, "maybe", -0.1)]  # fmt: skip
    import math

    expected = math.log(1e-5 + math.exp(-1) + math.exp(-2)) - math.log(1e-5 + math.exp(-0.5))
    assert label_margin(candidates) == pytest.approx(expected)
    assert label_margin([TokenLogprob(1, "maybe", -0.1)]) == 0.0
