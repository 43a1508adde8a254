"""How ICM reads the model: the label's log-odds from the next token's top log-probabilities.

As the reference's `get_yes_no_diff_logprobs`: among the top-k next tokens (k=20 by default), the probabilities of
tokens containing "true" and of those containing "false" (case-insensitive; a token with both or neither is
left out) are summed, each starting from 1e-5; the score is log P(true) - log P(false), 0 when neither appears.
A positive score means the model predicts "True". `EngineScorer` scores a whole batch of queries with one call
of the engine's `next_token_logprobs`, and counts calls and prompt tokens.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from ..engines.base import TokenLogprob
from .prompts import PromptBuilder, Query

EPSILON = 1e-5


class Scorer(Protocol):
    calls: int
    prompt_tokens: int

    def margins(self, queries: Sequence[Query]) -> list[float]:
        """log P(True) - log P(False) for each query, all in one batch."""
        ...


def label_word(token_text: str) -> int | None:
    text = token_text.lower()
    says_true, says_false = "true" in text, "false" in text
    if says_true == says_false:
        return None
    return int(says_true)


def label_margin(candidates: Sequence[TokenLogprob]) -> float:
    mass = [EPSILON, EPSILON]
    for candidate in candidates:
        word = label_word(candidate.text)
        if word is not None:
            mass[word] += math.exp(candidate.logprob)
    if mass[0] == EPSILON and mass[1] == EPSILON:
        return 0.0
    return math.log(mass[1]) - math.log(mass[0])


class EngineScorer:
    def __init__(self, engine, builder: PromptBuilder, top_logprobs: int = 20) -> None:
        self.engine = engine
        self.builder = builder
        self.top_logprobs = top_logprobs
        self.calls = 0
        self.prompt_tokens = 0

    def margins(self, queries: Sequence[Query]) -> list[float]:
        if not queries:
            return []
        prompts = [self.builder.token_ids(query) for query in queries]
        self.calls += 1
        self.prompt_tokens += sum(len(prompt) for prompt in prompts)
        return [label_margin(candidates) for candidates in self.engine.next_token_logprobs(prompts, self.top_logprobs)]
