"""ICM's input data: the reference's three testbeds in their own files, a generic JSONL format, and the batch.

Reference testbeds (Unsupervised-Elicitation's `data/train_*.json`: a JSON list, JSONL accepted too):
- `truthfulqa`: {question, choice, label, consistency_id}; claims about one question form a group;
- `gsm8k`: {question, choice, answer, label, consistency_id}; `answer` is the solution's final answer;
- `alpaca`: {question, choice, choice_2, label, consistency_id}; a comparison and its swap form a group.
Generic JSONL (`generic`): {"text": the claim, "group": consistency group (optional), "consistency_key":
optional, "label": optional gold 0/1 or true/false}. Its prompt is `prompt_template` filled from the row.

Consistency keys, as the reference defines them: within a group, claims with the same key must get the same
label; claims with different keys cannot both be true; for comparative keys (`A>B`, `B>A`) exactly one is true.
GSM8K keys are the final answers. The reference derives TruthfulQA's keys from the gold labels (true claims
share one key, false ones another) and Alpaca's from the label's direction; `keys_from_gold` records that.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import DistilleryError

FORMATS = ("truthfulqa", "gsm8k", "alpaca", "generic")
COMPARATIVE_KEYS = ("A>B", "B>A")

# The reference's prompt formats; the label word ("True"/"False") follows the trailing space.
TEMPLATES = {
    "truthfulqa": "Question: {question}\nClaim: {choice}\nI think this claim is ",
    "gsm8k": "Question: {question}\nClaim: {choice}\nI think this claim is ",
    "alpaca": (
        "Human: {question}\nResponse 1: {choice}\nResponse 2: {choice_2}\n"
        "Claim: Response 1 is more helpful and harmless than Response 2.\nI think this claim is "
    ),
    "generic": "{text}\nI think this claim is ",
}
REQUIRED_FIELDS = {
    "truthfulqa": ("question", "choice", "consistency_id"),
    "gsm8k": ("question", "choice", "answer", "consistency_id"),
    "alpaca": ("question", "choice", "choice_2", "consistency_id"),
    "generic": ("text",),
}


@dataclass(frozen=True)
class Example:
    """One claim of the batch. `uid` is its position in the batch; `row` its line in the input file."""

    uid: int
    row: int
    prompt: str
    group: str
    consistency_key: str | None
    gold: int | None
    fields: dict = field(default_factory=dict, compare=False)

    @property
    def comparative(self) -> bool:
        return self.consistency_key in COMPARATIVE_KEYS


@dataclass(frozen=True)
class Dataset:
    path: Path
    format: str
    examples: list[Example]  # the whole file, uid = row
    keys_from_gold: bool


def read_rows(path: Path) -> list[dict]:
    """A JSON list (the reference's files) or JSON Lines."""
    path = Path(path)
    if not path.is_file():
        raise DistilleryError("does not exist", path, "check the icm data path")
    text = path.read_text()
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DistilleryError(f"not valid JSON: {exc}", path) from None
    else:
        rows = []
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DistilleryError(f"line {number} is not valid JSON: {exc.msg}", path) from None
    if not rows:
        raise DistilleryError("holds no rows", path)
    for number, row in enumerate(rows, 1):
        if not isinstance(row, dict):
            raise DistilleryError(f"row {number} is not a JSON object", path)
    return rows


def gold_label(value, path: Path, number: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or value in (0, 1):
        return int(value)
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return int(value.lower() == "true")
    raise DistilleryError(f"row {number}: label {value!r} is not 0/1 or true/false", path)


def load_dataset(path: str | Path, data_format: str, prompt_template: str | None = None) -> Dataset:
    path = Path(path)
    if data_format not in FORMATS:
        raise DistilleryError(f"unknown ICM data format {data_format!r}", path, f"use one of {', '.join(FORMATS)}")
    template = prompt_template or TEMPLATES[data_format]
    rows = read_rows(path)
    examples = []
    keys_from_gold = False
    for number, row in enumerate(rows, 1):
        missing = [name for name in REQUIRED_FIELDS[data_format] if name not in row]
        if missing:
            raise DistilleryError(
                f"row {number} lacks {', '.join(missing)} (format {data_format})",
                path,
                f"a {data_format} row has {', '.join(REQUIRED_FIELDS[data_format])}",
            )
        gold = gold_label(row.get("label"), path, number)
        key = row.get("consistency_key")
        if data_format == "alpaca":
            fields = {
                **row,
                "choice": str(row["choice"]).replace("\n", ""),
                "choice_2": str(row["choice_2"]).replace("\n", ""),
            }
        else:
            fields = dict(row)
        if key is None and data_format in ("truthfulqa", "alpaca"):
            if gold is None:
                raise DistilleryError(
                    f"row {number} has neither consistency_key nor label", path,
                    "the reference derives this testbed's keys from its labels; give consistency_key",
                )  # fmt: skip
            key = ("A" if gold else "B") if data_format == "truthfulqa" else ("A>B" if gold else "B>A")
            keys_from_gold = True
        elif key is None and data_format == "gsm8k":
            key = row["answer"]
        group = row.get("consistency_id", row.get("group"))
        try:
            prompt = template.format(**fields)
        except (KeyError, IndexError) as exc:
            raise DistilleryError(f"row {number}: the prompt template needs field {exc}", path) from None
        examples.append(
            Example(
                uid=number - 1,
                row=number - 1,
                prompt=prompt,
                group=str(group) if group is not None else f"row-{number - 1}",
                consistency_key=None if key is None else str(key),
                gold=gold,
                fields=row,
            )
        )
    return Dataset(path, data_format, examples, keys_from_gold)


def select_batch(dataset: Dataset, batch_size: int, seed: int) -> list[Example]:
    """`batch_size` examples in whole consistency groups, groups drawn at random as the reference draws them;
    each group's claims stay together and keep their file order. uids are positions in the batch."""
    groups: dict[str, list[Example]] = {}
    for example in dataset.examples:
        groups.setdefault(example.group, []).append(example)
    order = list(groups)
    random.Random(seed).shuffle(order)  # as the reference, also when the whole file fits in one batch
    chosen: list[Example] = []
    for name in order:
        if len(chosen) + len(groups[name]) <= batch_size:
            chosen.extend(groups[name])
    if not chosen:
        raise DistilleryError(f"no consistency group fits batch_size {batch_size}", dataset.path, "raise batch_size")
    return [
        Example(uid, example.row, example.prompt, example.group, example.consistency_key, example.gold, example.fields)
        for uid, example in enumerate(chosen)
    ]
