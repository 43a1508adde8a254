"""The ICM search: simulated annealing over labelings, scored by mutual predictability and consistency.

U(D) = alpha * P(D) - I(D), where I(D) counts violated consistency relations and P(D) is the mutual
predictability: each labeled claim scored with all the other labeled claims as demonstrations. By default P is
the reference's: the mean over labeled claims of the label's log-odds (log P(label) - log P(other label));
`predictability: sum_logprob` gives the paper's sum of log P(label | claim, D without it) instead, with P
normalised over the two label words.

Each iteration, as the reference's `main` loop: sample a claim (unlabeled claims whose consistency group already
has a labeled member weigh 100, all others 1); propose the label the model finds most likely given the labeled
pool; if it differs, apply it, repair inconsistencies (`consistency.py`), score the result and accept it with
probability exp(ΔU / T), T from the schedule at the number of accepted changes so far ("log": T0 / (1 + 2 ln(1 +
n)), "exp": T0 * decay^n; never below final T). Iteration 0 first scores the `num_seed` random seed labels and
repairs them.

Batching: one evaluation of U is ONE scorer call holding every labeled claim's leave-one-out prompt and, with
`score_unlabeled`, every unlabeled claim's prompt given the whole pool: the next iteration's proposal is then
already scored, so an iteration without inconsistencies makes exactly one engine call. The prompts differ only
after the first changed demonstration, which the server's prefix cache shares. With `demonstration_order:
labeling` demonstrations appear in the order their claims were first labeled (consistency groups kept
together only by that order), so a new label lands at the end of every prompt and the prefix before it stays
cached; `dataset` gives the reference's order (consistency groups in batch order).

The search state is saved (atomically) every `save_every` iterations; a killed run resumes from it and ends with
the labels of an uninterrupted run, because everything random comes from one seeded generator saved with it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..atomic import atomic_write_text
from ..errors import DistilleryError
from ..setting import setting
from .consistency import violations
from .data import Example
from .prompts import Query
from .scoring import Scorer

log = logging.getLogger(__name__)

SCHEDULES = ("log", "exp")
PREDICTABILITY = ("mean_logodds", "sum_logprob")
DEMONSTRATION_ORDERS = ("labeling", "dataset")
STATE_VERSION = 1

Labels = tuple  # tuple[int | None, ...], indexed by uid


@dataclass(frozen=True)
class ICMSettings:
    """The reference's arguments and defaults (`ICM.py --alpha --num_seed --K ...`), by their meaning."""

    alpha: float = setting(30.0, help="weight of mutual predictability")
    num_seed: int = setting(8, help="randomly labeled claims at start", aliases=("--num_seed",))
    iterations: int = setting(3000, help="search iterations (the reference's K)", flag="--K", aliases=("--iterations",))
    consistency_fix_iterations: int = setting(
        10, help="consistency-fix rounds for the seed labels", flag="--consistency-fix-K",
        aliases=("--consistency_fix_K",),
    )  # fmt: skip
    proposal_fix_iterations: int = setting(
        10, help="consistency-fix rounds after each proposal (fixed at 10 in the reference)", flag="--proposal-fix-K"
    )
    initial_temperature: float = setting(10.0, help="initial temperature", flag="--initial-T", aliases=("--initial_T",))
    final_temperature: float = setting(0.01, help="lowest temperature", flag="--final-T", aliases=("--final_T",))
    decay: float = setting(0.99, help="decay of the exp schedule")
    schedule: str = setting("log", help="annealing schedule", flag="--scheduler", choices=SCHEDULES)
    seed: int = setting(27565976, help="makes a run reproducible (batch, seed labels, search)")
    unlabeled_weight: float = setting(
        100.0, help="sampling weight of claims whose group has a label", flag=None, config=None
    )
    predictability: str = setting(
        "mean_logodds", help="mean log-odds (the reference's code) or sum of log P (the paper's formula)",
        choices=PREDICTABILITY,
    )  # fmt: skip
    demonstration_order: str = setting(
        "labeling", help="labeling: in the order claims got labels (cache-friendly); dataset: the reference's",
        choices=DEMONSTRATION_ORDERS,
    )  # fmt: skip
    # The command decides it from the engine where the flag is not given (`--score-unlabeled`, cli/icm.py).
    score_unlabeled: bool = setting(True, help="score unlabeled claims in each batch", flag=None, config=None)
    save_every: int = setting(10, help="save the state every N iterations")

    def __post_init__(self) -> None:
        if self.schedule not in SCHEDULES:
            raise DistilleryError(f"unknown temperature schedule {self.schedule!r}", hint="use log or exp")
        if self.predictability not in PREDICTABILITY:
            raise DistilleryError(f"unknown predictability {self.predictability!r}", hint=" or ".join(PREDICTABILITY))
        if self.demonstration_order not in DEMONSTRATION_ORDERS:
            raise DistilleryError(
                f"unknown demonstration_order {self.demonstration_order!r}", hint=" or ".join(DEMONSTRATION_ORDERS)
            )
        if self.iterations < 0 or self.num_seed < 0 or self.save_every < 1:
            raise DistilleryError("iterations and num_seed must be at least 0, save_every at least 1")
        if self.final_temperature <= 0 or self.initial_temperature <= 0:
            raise DistilleryError("temperatures must be positive")

    def affects_result(self) -> dict:
        """The settings a resumed run must share with the run that saved the state."""
        values = asdict(self)
        values.pop("save_every")
        return values


def temperature(accepted: int, settings: ICMSettings) -> float:
    """The reference's `get_temperature`, indexed by the number of accepted changes."""
    if settings.schedule == "exp":
        value = settings.initial_temperature * settings.decay**accepted
    else:
        value = settings.initial_temperature / (1 + 2 * math.log(1 + accepted))
    return max(settings.final_temperature, value)


def accepts(delta: float, temperature_now: float, draw: float) -> bool:
    """Metropolis rule: always accept a better labeling, a worse one with probability exp(ΔU / T)."""
    return delta >= 0 or draw < math.exp(delta / temperature_now)


@dataclass(frozen=True)
class Evaluation:
    """U of one labeling, with each claim's score given the others (what the next proposal reads)."""

    labels: Labels
    scores: dict[int, float]
    predictability: float
    inconsistent: int
    alpha: float

    @property
    def energy(self) -> float:
        return self.alpha * self.predictability - self.inconsistent

    def to_json(self) -> dict:
        return {
            "labels": list(self.labels),
            "scores": {str(uid): score for uid, score in self.scores.items()},
            "predictability": self.predictability,
            "inconsistent": self.inconsistent,
        }

    @classmethod
    def from_json(cls, data: dict, alpha: float) -> Evaluation:
        scores = {int(uid): float(score) for uid, score in data["scores"].items()}
        return cls(tuple(data["labels"]), scores, data["predictability"], data["inconsistent"], alpha)


@dataclass
class IterationStats:
    seconds: float
    engine_calls: int
    prompt_tokens: int
    proposed: bool
    accepted: bool
    # U of the labels kept after the iteration, for the report's plot; None in states saved before it was recorded.
    objective: float | None = None


@dataclass
class SearchState:
    iteration: int  # the next iteration to run
    labels: Labels
    entry_order: list[int]
    current: Evaluation | None
    accepted: int = 0
    proposals: int = 0
    history: list[IterationStats] = field(default_factory=list)


def fingerprint(examples: Sequence[Example], settings: ICMSettings) -> str:
    described = [[example.row, example.prompt, example.group, example.consistency_key] for example in examples]
    content = json.dumps({"settings": settings.affects_result(), "examples": described}, sort_keys=True)
    return hashlib.sha256(content.encode()).hexdigest()[:16]


class ICMSearch:
    def __init__(
        self,
        examples: Sequence[Example],
        scorer: Scorer,
        settings: ICMSettings,
        state_path: Path | None = None,
        on_iteration: Callable[[int, SearchState], None] | None = None,
    ) -> None:
        self.examples = list(examples)
        self.scorer = scorer
        self.settings = settings
        self.state_path = Path(state_path) if state_path else None
        self.on_iteration = on_iteration
        self.rng = random.Random(settings.seed)
        self.fingerprint = fingerprint(self.examples, settings)
        self._cache: dict[Labels, Evaluation] = {}
        self.resumed_from: int | None = None
        self.state = self._load_state() or self._initial_state()

    # --- state ---

    def _initial_state(self) -> SearchState:
        """The first `num_seed` claims of the batch get random labels, half true and half false (the reference)."""
        count = min(self.settings.num_seed, len(self.examples))
        seed_labels = [1] * (count // 2) + [0] * (count // 2)
        self.rng.shuffle(seed_labels)
        labels: list[int | None] = [None] * len(self.examples)
        for uid, label in enumerate(seed_labels):
            labels[uid] = label
        entry = [uid for uid, label in enumerate(labels) if label is not None]
        return SearchState(0, tuple(labels), entry, None)

    def _load_state(self) -> SearchState | None:
        if not self.state_path or not self.state_path.exists():
            return None
        try:
            data = json.loads(self.state_path.read_text())
        except json.JSONDecodeError as exc:
            raise DistilleryError(
                f"not a readable ICM state: {exc.msg}", self.state_path, "delete it to restart"
            ) from None
        if data.get("version") != STATE_VERSION or data.get("fingerprint") != self.fingerprint:
            raise DistilleryError(
                "this ICM state was saved by a run with other data or settings",
                self.state_path,
                "delete it to start over, or restore the settings it was made with",
            )
        version, internal, gauss = data["rng_state"]
        self.rng.setstate((version, tuple(internal), gauss))
        current = Evaluation.from_json(data["current"], self.settings.alpha) if data["current"] else None
        self.resumed_from = data["iteration"]
        log.info("resuming ICM from iteration %d (%s)", data["iteration"], self.state_path)
        return SearchState(
            iteration=data["iteration"],
            labels=tuple(data["labels"]),
            entry_order=list(data["entry_order"]),
            current=current,
            accepted=data["accepted"],
            proposals=data["proposals"],
            history=[IterationStats(**item) for item in data["history"]],
        )

    def save_state(self) -> None:
        if not self.state_path:
            return
        state = self.state
        record = {
            "version": STATE_VERSION,
            "fingerprint": self.fingerprint,
            "iteration": state.iteration,
            "labels": list(state.labels),
            "entry_order": state.entry_order,
            "current": state.current.to_json() if state.current else None,
            "accepted": state.accepted,
            "proposals": state.proposals,
            "rng_state": self.rng.getstate(),
            "history": [asdict(item) for item in state.history],
        }
        atomic_write_text(self.state_path, json.dumps(record))

    # --- scoring ---

    def demonstration_order(self, labels: Labels) -> list[int]:
        labeled = [uid for uid, label in enumerate(labels) if label is not None]
        if self.settings.demonstration_order == "dataset":
            return labeled
        known = [uid for uid in self.state.entry_order if labels[uid] is not None]
        seen = set(known)
        return known + [uid for uid in labeled if uid not in seen]

    def _queries(self, labels: Labels) -> list[Query]:
        order = self.demonstration_order(labels)
        demos = tuple((uid, labels[uid]) for uid in order)
        queries = [Query(uid, tuple(demo for demo in demos if demo[0] != uid)) for uid in order]
        if self.settings.score_unlabeled:
            queries += [Query(uid, demos) for uid, label in enumerate(labels) if label is None]
        return queries

    def _predictability(self, labels: Labels, scores: dict[int, float]) -> float:
        signed = [scores[uid] if label == 1 else -scores[uid] for uid, label in enumerate(labels) if label is not None]
        if not signed:
            return 0.0
        if self.settings.predictability == "sum_logprob":
            # log sigmoid(m): the label's probability normalised over the two label words.
            return sum(-math.log1p(math.exp(-m)) if m > -30 else m for m in signed)
        return sum(signed) / len(signed)

    def evaluate_many(self, candidates: Sequence[Labels]) -> list[Evaluation]:
        """U of several labelings with one scorer call for all their prompts (cached by labeling)."""
        missing = [labels for labels in dict.fromkeys(candidates) if labels not in self._cache]
        if missing:
            per_candidate = [self._queries(labels) for labels in missing]
            margins = self.scorer.margins([query for queries in per_candidate for query in queries])
            start = 0
            for labels, queries in zip(missing, per_candidate, strict=True):
                scores = {query.uid: margins[start + index] for index, query in enumerate(queries)}
                start += len(queries)
                self._cache[labels] = Evaluation(
                    labels,
                    scores,
                    self._predictability(labels, scores),
                    len(violations(self.examples, labels)),
                    self.settings.alpha,
                )
        return [self._cache[labels] for labels in candidates]

    def evaluate(self, labels: Labels) -> Evaluation:
        return self.evaluate_many([labels])[0]

    def propose(self, uid: int) -> int:
        """The model's label for `uid` given the labeled pool (its current score where already computed)."""
        current = self.state.current
        if current is not None and uid in current.scores:
            margin = current.scores[uid]
        else:
            demos = tuple((other, self.state.labels[other]) for other in self.demonstration_order(self.state.labels))
            margin = self.scorer.margins([Query(uid, tuple(d for d in demos if d[0] != uid))])[0]
        return int(margin > 0)

    # --- the search ---

    def fix_inconsistencies(
        self, labels: Labels, best: Evaluation | None, rounds: int
    ) -> tuple[Labels, Evaluation | None]:
        """The consistency fix: per round, go through the violated pairs in random order; for each, score its two
        resolving labelings (one call) and keep the better if it is at least as good as the best so far (any
        is, when `best` is None); stop when a round changes nothing or nothing is inconsistent."""
        for _ in range(rounds):
            pairs = violations(self.examples, labels)
            if not pairs:
                break
            self.rng.shuffle(pairs)
            changed = False
            for pair in pairs:
                candidates = []
                for option in pair.options():
                    candidate = list(labels)
                    for uid, label in option.items():
                        candidate[uid] = label
                    candidates.append(tuple(candidate))
                evaluations = self.evaluate_many(candidates)
                chosen = max(evaluations, key=lambda evaluation: evaluation.energy)  # the first on a tie
                if best is None or chosen.energy >= best.energy:
                    best, labels, changed = chosen, chosen.labels, True
                    break
            if not changed or best.inconsistent == 0:
                break
        return labels, best

    def sample_claim(self) -> int:
        labels = self.state.labels
        groups_with_labels = {e.group for e in self.examples if labels[e.uid] is not None}
        weights = [
            self.settings.unlabeled_weight if labels[e.uid] is None and e.group in groups_with_labels else 1.0
            for e in self.examples
        ]
        return self.rng.choices(range(len(self.examples)), weights=weights, k=1)[0]

    def step(self) -> IterationStats:
        state = self.state
        started, calls, tokens = time.perf_counter(), self.scorer.calls, self.scorer.prompt_tokens
        if state.current is not None:
            self._cache = {state.current.labels: state.current}  # bounded: only what this iteration may reuse
        if state.iteration == 0 or state.current is None:
            state.current = self.evaluate(state.labels)
            if state.current.inconsistent:
                labels, best = self.fix_inconsistencies(
                    state.labels, state.current, self.settings.consistency_fix_iterations
                )
                state.labels, state.current = labels, best
        uid = self.sample_claim()
        new_label = self.propose(uid)
        proposed = accepted = False
        if state.labels[uid] != new_label:
            proposed = True
            state.proposals += 1
            candidate = list(state.labels)
            candidate[uid] = new_label
            candidate, _ = self.fix_inconsistencies(tuple(candidate), None, self.settings.proposal_fix_iterations)
            evaluation = self.evaluate(candidate)
            draw = self.rng.random()
            delta = evaluation.energy - state.current.energy
            if accepts(delta, temperature(state.accepted, self.settings), draw):
                accepted = True
                known = set(state.entry_order)
                state.entry_order += [u for u in self.demonstration_order(candidate) if u not in known]
                state.labels, state.current = candidate, evaluation
                state.accepted += 1
        stats = IterationStats(
            round(time.perf_counter() - started, 6),
            self.scorer.calls - calls,
            self.scorer.prompt_tokens - tokens,
            proposed,
            accepted,
            state.current.energy,
        )
        state.history.append(stats)
        state.iteration += 1
        return stats

    def run(self, progress: Callable[[IterationStats], None] | None = None) -> SearchState:
        while self.state.iteration < self.settings.iterations:
            stats = self.step()
            if self.state.iteration % self.settings.save_every == 0 or self.state.iteration == self.settings.iterations:
                self.save_state()
            if progress:
                progress(stats)
            if self.on_iteration:
                self.on_iteration(self.state.iteration, self.state)
        if self.state.current is None:  # K = 0: still score the seed labels for the report
            self.state.current = self.evaluate(self.state.labels)
        return self.state
