"""A small parquet dataset built locally for the default config and the tests: several files and row groups,
a text column of English sentences with the rows a real corpus has (nulls, blanks, a very long document), chat
messages asking English questions, and ids."""

from __future__ import annotations

import random
from pathlib import Path

# Openings of plain English sentences a small instruct model can continue (prefix mode) and questions it can
# answer (chat mode): the default run's KD dataset shows real completions, not noise.
_SENTENCES = (
    "The capital of France is Paris, a city on the Seine.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "The sun rises in the east and sets in the west.",
    "A week has seven days, and a year has twelve months.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar.",
    "The Pacific is the largest ocean on Earth.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "Bees collect nectar from flowers and make honey.",
    "The heart pumps blood through the body.",
    "Mount Everest is the highest mountain in the world.",
    "Trains carry people and goods between cities.",
    "In autumn the leaves of many trees turn red and yellow.",
    "The moon orbits the Earth about once a month.",
    "A library lends books to the people of a town.",
    "Rain falls when water in the clouds gets heavy.",
    "Computers store numbers as bits, zeros and ones.",
)
_QUESTIONS = (
    "What is the capital of France?",
    "How many days are in a week?",
    "What color is the sky on a clear day?",
    "What is 12 plus 7?",
    "Name a fruit that is yellow.",
    "Why do we need to drink water?",
    "What do bees make?",
    "Which planet do we live on?",
    "What is the opposite of hot?",
    "Write one sentence about the sea.",
)


def _sentence(rng: random.Random) -> str:
    return rng.choice(_SENTENCES)


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
        question = rng.choice(_QUESTIONS)
        # Chat mode meets what a real chat corpus has too: a row without messages, a message without content.
        messages.append(None if row % 11 == 6 else [{"role": "user", "content": "" if row % 13 == 8 else question}])
        ids.append(f"doc-{file_index}-{row}")
    return {"id": ids, "text": texts, "messages": messages}


def write_tiny_dataset(output: Path, files: int = 3, rows: int = 40, row_group_rows: int = 16, seed: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    output.mkdir(parents=True, exist_ok=True)
    for index in range(files):
        table = pa.table(tiny_rows(index, rows + index * 7, seed))
        pq.write_table(table, output / f"part-{index:03d}.parquet", row_group_size=row_group_rows)
