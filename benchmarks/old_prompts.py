"""The prompt building ICM had before the query was cut at the label: the anchor of the ICM benchmarks.

Its query is the claim's prompt tokenized alone, so it ends in "I think this claim is " with the trailing space
as a token of its own (on a byte-level BPE), while every demonstration holds " True" or " False" after "is".
"""

from __future__ import annotations

from workflow_scripts.icm.prompts import PromptBuilder


class TrailingSpacePromptBuilder(PromptBuilder):
    def query(self, uid: int) -> list[int]:
        if uid not in self._queries:
            self._queries[uid] = self._encode(self.examples[uid].prompt)
        return self._queries[uid]
