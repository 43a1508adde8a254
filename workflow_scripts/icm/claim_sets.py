"""Claim sets with gold labels for ICM on a small real model, written as generic JSONL (`data.py`'s format).

Each set is a consistency group per question, with one true claim and one or more false ones: capital cities
(a different city cannot also be the capital), single-digit sums (different results cannot both be right),
and number comparisons (a comparison and its swap: exactly one holds). Which set a model can label is a
measurement, not a guess: `benchmarks/icm_claim_signal.py` scores each set zero-shot and records which one a
135M model tells apart; the chosen set is committed as `config/icm/capitals.jsonl`, equal to `claim_rows`'s
output (a test holds them together).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import DistilleryError
from .data import COMPARATIVE_KEYS

# Countries whose capital is not in dispute, known to anyone who went to school.
CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("the United Kingdom", "London"), ("Ireland", "Dublin"), ("the Netherlands", "Amsterdam"),
    ("Belgium", "Brussels"), ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"),
    ("Sweden", "Stockholm"), ("Norway", "Oslo"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Russia", "Moscow"), ("Hungary", "Budapest"), ("the Czech Republic", "Prague"), ("Turkey", "Ankara"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Japan", "Tokyo"), ("China", "Beijing"), ("South Korea", "Seoul"),
    ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
    ("the Philippines", "Manila"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Saudi Arabia", "Riyadh"),
    ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Cuba", "Havana"), ("Brazil", "Brasília"),
    ("Argentina", "Buenos Aires"), ("Chile", "Santiago"), ("Peru", "Lima"), ("Colombia", "Bogotá"),
    ("Australia", "Canberra"), ("New Zealand", "Wellington"), ("Ukraine", "Kyiv"),
)  # fmt: skip


# Everyday facts a child knows, each beside the same sentence with a wrong ending.
FACTS = (
    ("Snow is", "cold", "hot"), ("Fire is", "hot", "cold"), ("The sun rises in the", "east", "west"),
    ("A week has", "seven days", "five days"), ("Fish live in", "water", "trees"), ("Cows eat", "grass", "rocks"),
    ("A triangle has", "three sides", "four sides"), ("Birds have", "feathers", "fur"),
    ("The sky on a clear day is", "blue", "green"), ("Ripe bananas are", "yellow", "purple"),
    ("Dogs are", "animals", "plants"), ("Roses are", "flowers", "fish"),
    ("A year has", "twelve months", "ten months"), ("People breathe", "air", "sand"),
    ("Spiders have", "eight legs", "six legs"), ("A day has", "24 hours", "12 hours"),
    ("Lemons taste", "sour", "salty"), ("Elephants are", "large", "tiny"), ("Grass is", "green", "red"),
    ("Coal is", "black", "white"), ("Milk is", "white", "black"), ("At midnight the sky is", "dark", "bright"),
    ("Feathers are", "light", "heavy"), ("Camels live in", "deserts", "oceans"), ("Bees make", "honey", "milk"),
    ("Chickens lay", "eggs", "apples"), ("Cats say", "meow", "moo"), ("Trees have", "leaves", "wheels"),
    ("Planes fly in the", "sky", "sea"), ("Books are made of", "paper", "glass"),
    ("Shoes are worn on the", "feet", "head"), ("Hats are worn on the", "head", "feet"),
    ("Bakers bake", "bread", "cars"), ("Keys open", "locks", "clouds"), ("Ice melts when it is", "warm", "cold"),
    ("A square has", "four corners", "three corners"), ("Water is", "wet", "dry"), ("The Earth is", "round", "flat"),
    ("Owls hunt at", "night", "noon"), ("Babies drink", "milk", "coffee"), ("Clocks tell the", "time", "weather"),
    ("Umbrellas keep off the", "rain", "sun"), ("Teeth are used for", "chewing", "hearing"),
    ("Eyes are used for", "seeing", "smelling"),
)  # fmt: skip


def fact_rows(rng: random.Random) -> list[dict]:
    """'Snow is cold.' and 'Snow is hot.'"""
    rows = []
    for index, (start, right, wrong) in enumerate(FACTS):
        claims = [(right, 1), (wrong, 0)]
        rng.shuffle(claims)
        for ending, label in claims:
            rows.append({"text": f"{start} {ending}.", "group": f"fact-{index}", "consistency_key": ending,
                         "label": label})  # fmt: skip
    return rows


def capital_rows(rng: random.Random) -> list[dict]:
    """'The capital of France is Paris.' and the same sentence with another country's capital."""
    rows = []
    cities = [city for _, city in CAPITALS]
    for index, (country, capital) in enumerate(CAPITALS):
        wrong = rng.choice([city for city in cities if city != capital])
        claims = [(capital, 1), (wrong, 0)]
        rng.shuffle(claims)
        for city, label in claims:
            text = f"The capital of {country} is {city}."
            rows.append({"text": text, "group": f"capital-{index}", "consistency_key": city, "label": label})
    return rows


def sum_rows(rng: random.Random) -> list[dict]:
    """'3 + 5 = 8' and the same sum one or two off, for 44 distinct single-digit pairs."""
    pairs = [(a, b) for a in range(1, 10) for b in range(1, 10)]
    rng.shuffle(pairs)
    rows = []
    for index, (a, b) in enumerate(pairs[: len(CAPITALS)]):
        wrong = a + b + rng.choice((-2, -1, 1, 2))
        claims = [(a + b, 1), (wrong, 0)]
        rng.shuffle(claims)
        for result, label in claims:
            rows.append({"text": f"{a} + {b} = {result}", "group": f"sum-{index}", "consistency_key": str(result),
                         "label": label})  # fmt: skip
    return rows


def comparison_rows(rng: random.Random) -> list[dict]:
    """'12 is larger than 7.' and its swap: exactly one of the two holds (comparative keys)."""
    rows = []
    for index in range(len(CAPITALS)):
        small, large = sorted(rng.sample(range(1, 100), 2))
        claims = [(large, small, 1), (small, large, 0)]
        rng.shuffle(claims)
        # The keys name the two directions by position, not by which one is true.
        for key, (first, second, label) in zip(COMPARATIVE_KEYS, claims, strict=True):
            rows.append({"text": f"{first} is larger than {second}.", "group": f"compare-{index}",
                         "consistency_key": key, "label": label})  # fmt: skip
    return rows


CLAIM_SETS: dict[str, Callable[[random.Random], list[dict]]] = {
    "capitals": capital_rows,
    "sums": sum_rows,
    "comparisons": comparison_rows,
    "facts": fact_rows,
}
SEED = 16  # fixed: the committed file is this seed's output


def claim_rows(name: str, seed: int = SEED) -> list[dict]:
    if name not in CLAIM_SETS:
        raise DistilleryError(f"unknown claim set {name!r}", hint=f"choose one of {', '.join(CLAIM_SETS)}")
    return CLAIM_SETS[name](random.Random(f"{name}-{seed}"))


def write_claim_set(name: str, path: str | Path, seed: int = SEED) -> Path:
    path = Path(path)
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in claim_rows(name, seed))
    atomic_write_text(path, lines)
    return path
