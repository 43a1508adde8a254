"""ICM's few-shot prompts, as the reference writes them, assembled as token ids.

A prompt is the labeled demonstrations, each `{prompt}{True|False}\n\n`, then the query: the claim's `{prompt}`
(which ends in "I think this claim is "), cut where the label word's first token begins in its demonstrations.

The cut is what makes a score mean what the demonstrations show. Tokenized alone, the reference's query ends in
the trailing space, which a byte-level BPE (SmolLM2's, Llama 3's) makes a token of its own, while every
demonstration holds " True" as one token after "is": the model would be asked for the next token at a boundary
no demonstration has. So each claim is tokenized with both label words, and its query is the longest common
prefix of the two: the label is then scored exactly where every demonstration's label starts, whatever the
tokenizer does with the space (a tokenizer that keeps " " apart from "True" keeps it in the query).

Each demonstration and query is tokenized once and prompts are concatenated from those pieces, so a batch of
hundreds of long prompts costs no tokenizer time, and every prompt that shares the same demonstrations starts
with the same token ids (what a prefix cache keys on).
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
    """The prompt as text, the query's trailing space included: what the prompt says, not where it is cut."""
    demos = "".join(demonstration_text(examples[uid], label) for uid, label in query.demonstrations)
    return demos + examples[query.uid].prompt


def common_prefix(first: Sequence[int], second: Sequence[int]) -> list[int]:
    length = 0
    for a, b in zip(first, second, strict=False):
        if a != b:
            break
        length += 1
    return list(first[:length])


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
        """The claim's tokens up to where its label word starts in both of its demonstrations."""
        if uid not in self._queries:
            self._queries[uid] = common_prefix(self.demonstration(uid, 0), self.demonstration(uid, 1))
        return self._queries[uid]

    def token_ids(self, query: Query) -> list[int]:
        ids = list(self.start)
        for uid, label in query.demonstrations:
            ids.extend(self.demonstration(uid, label))
        ids.extend(self.query(query.uid))
        return ids
