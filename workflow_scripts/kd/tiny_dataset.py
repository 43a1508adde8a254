"""A small parquet dataset built locally for the default config and the tests: several files and row groups,
a text column with the rows a real corpus has (nulls, blanks, a very long document), chat messages and ids."""

from __future__ import annotations

import random
from pathlib import Path

_WORDS = [
    "the",
    "model",
    "data",
    "teacher",
    "student",
    "token",
    "layer",
    "weight",
    "chunk",
    "parquet",
    "river",
    "mountain",
    "city",
    "music",
    "science",
    "history",
    "language",
    "question",
    "answer",
    "number",
    "light",
    "water",
    "energy",
    "garden",
    "market",
    "story",
    "letter",
    "window",
    "morning",
    "evening",
]


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 24))]
    return " ".join(words).capitalize() + "."


def tiny_rows(file_index: int, rows: int, seed: int) -> dict[str, list]:
    rng = random.Random(seed * 1000 + file_index)
    texts, messages, ids = [], [], []
    for row in range(rows):
        text = " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))
        if row % 11 == 5:
            text = None
        elif row % 13 == 7:
            text = "   "
        elif row % 17 == 3:
            text = " ".join(_sentence(rng) for _ in range(200))
        texts.append(text)
        question = _sentence(rng)
        messages.append([{"role": "user", "content": question}])
        ids.append(f"doc-{file_index}-{row}")
    return {"id": ids, "text": texts, "messages": messages}


def write_tiny_dataset(output: Path, files: int = 3, rows: int = 40, row_group_rows: int = 16, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    output.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        table = pa.table(tiny_rows(index, rows + index * 7, seed))
        pq.write_table(table, output / f"part-{index:03d}.parquet", row_group_size=row_group_rows)
