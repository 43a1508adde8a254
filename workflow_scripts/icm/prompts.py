"""ICM's few-shot prompts, as the reference writes them, assembled as token ids.

A prompt is the labeled demonstrations, each `{prompt}{True|False}\n\n`, then the query's own `{prompt}` (which
ends in "I think this claim is "). Each demonstration and query is tokenized once and prompts are concatenated
from those pieces, so a batch of hundreds of long prompts costs no tokenizer time, and every prompt that shares
the same demonstrations starts with the same token ids (what the server's prefix cache keys on).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .data import Example

LABEL_WORDS = ("False", "True")


@dataclass(frozen=True)
class Query:
    """Score example `uid` given these demonstrations, as (uid, label) in prompt order."""

    uid: int
    demonstrations: tuple[tuple[int, int], ...]


def demonstration_text(example: Example, label: int) -> str:
    return f"{example.prompt}{LABEL_WORDS[label]}\n\n"


def prompt_text(examples: Sequence[Example], query: Query) -> str:
    demos = "".join(demonstration_text(examples[uid], label) for uid, label in query.demonstrations)
    return demos + examples[query.uid].prompt


class PromptBuilder:
    def __init__(self, tokenizer, examples: Sequence[Example]) -> None:
        self.tokenizer = tokenizer
        self.examples = examples
        with_special = tokenizer("x")["input_ids"]
        without = tokenizer("x", add_special_tokens=False)["input_ids"]
        # The tokenizer's own leading special tokens (Llama's BOS), once at the very start of every prompt.
        self.start = (
            list(with_special[: len(with_special) - len(without)]) if with_special[-len(without) :] == without else []
        )
        self._demos: dict[tuple[int, int], list[int]] = {}
        self._queries: dict[int, list[int]] = {}

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def demonstration(self, uid: int, label: int) -> list[int]:
        key = (uid, label)
        if key not in self._demos:
            self._demos[key] = self._encode(demonstration_text(self.examples[uid], label))
        return self._demos[key]

    def query(self, uid: int) -> list[int]:
        if uid not in self._queries:
            self._queries[uid] = self._encode(self.examples[uid].prompt)
        return self._queries[uid]

    def token_ids(self, query: Query) -> list[int]:
        ids = list(self.start)
        for uid, label in query.demonstrations:
            ids.extend(self.demonstration(uid, label))
        ids.extend(self.query(query.uid))
        return ids
