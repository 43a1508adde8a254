"""The ICM search with a scorer whose preferences are known: a deterministic function of the prompt, defined here."""

from __future__ import annotations

import json
import math

import pytest

from workflow_scripts.errors import DistilleryError
from workflow_scripts.icm.algorithm import ICMSearch, ICMSettings, accepts, temperature
from workflow_scripts.icm.consistency import CONTRADICTION, IMPLICATION, violations
from workflow_scripts.icm.data import Example


class PlantedScorer:
    """A 'model' that finds claims with the same planted label alike: each demonstration votes for the query's
    label (+1 when the demonstration's label agrees with the planted relation between the two claims, -1 when
    not), averaged, plus a weak prior towards the planted label. The planted labeling is the most mutually
    predictable one; its mirror image is almost as predictable and is told apart by consistency and the prior."""

    def __init__(self, planted: list[int], prior: float = 0.2) -> None:
        self.planted = planted
        self.prior = prior
        self.calls = 0
        self.prompt_tokens = 0
        self.batches: list[int] = []

    def margins(self, queries) -> list[float]:
        self.calls += 1
        self.batches.append(len(queries))
        out = []
        for query in queries:
            self.prompt_tokens += len(query.demonstrations) + 1
            q = self.planted[query.uid]
            votes = [(2 * label - 1) * (1 if self.planted[uid] == q else -1) for uid, label in query.demonstrations]
            vote = sum(votes) / len(votes) if votes else 0.0
            out.append(2.0 * vote + self.prior * (2 * q - 1))
        return out


def gsm8k_like(groups: int = 8, per_group: int = 4) -> tuple[list[Example], list[int]]:
    """Groups of solutions to one question: different final answers, exactly one of them right."""
    examples, planted = [], []
    for group in range(groups):
        right = group % per_group
        for member in range(per_group):
            uid = len(examples)
            gold = int(member == right)
            examples.append(Example(uid, uid, f"q{group} a{member}", f"g{group}", f"answer-{member}", gold))
            planted.append(gold)
    return examples, planted


def test_icm_recovers_the_planted_labeling():
    examples, planted = gsm8k_like()
    settings = ICMSettings(alpha=30, num_seed=8, iterations=300, seed=3)
    state = ICMSearch(examples, PlantedScorer(planted), settings).run()
    assert list(state.labels) == planted
    assert state.current.inconsistent == 0


def test_without_the_prior_consistency_alone_breaks_the_mirror_symmetry():
    examples, planted = gsm8k_like()
    state = ICMSearch(examples, PlantedScorer(planted, prior=0.0), ICMSettings(iterations=300, seed=5)).run()
    assert list(state.labels) == planted


def pair(first_key: str, second_key: str) -> list[Example]:
    return [Example(0, 0, "a", "g", first_key, None), Example(1, 1, "b", "g", second_key, None)]


@pytest.mark.parametrize(
    ("keys", "labels", "kind", "resolved"),
    [
        (("7", "9"), (1, 1), CONTRADICTION, [(0, 1), (1, 0)]),  # different answers cannot both be right
        (("A>B", "B>A"), (0, 0), CONTRADICTION, [(0, 1), (1, 0)]),  # one of a comparison and its swap holds
        (("7", "7"), (1, 0), IMPLICATION, [(0, 0), (1, 1)]),  # the same answer is right or wrong together
    ],
)
def test_consistency_fix_resolves_each_relation_type(keys, labels, kind, resolved):
    examples = pair(*keys)
    found = violations(examples, labels)
    assert [(v.first, v.second, v.kind) for v in found] == [(0, 1, kind)]
    for preferred in resolved:  # the fix picks the resolution the scorer prefers
        scorer = PlantedScorer(list(preferred), prior=1.0)
        search = ICMSearch(examples, scorer, ICMSettings(num_seed=0, iterations=0))
        fixed, evaluation = search.fix_inconsistencies(labels, None, rounds=10)
        assert fixed == preferred
        assert evaluation.inconsistent == 0
        assert scorer.batches == [4]  # both resolutions scored in one call: 2 labelings x 2 prompts


def test_consistent_comparisons_and_unlabeled_claims_violate_nothing():
    assert violations(pair("A>B", "B>A"), (1, 0)) == []
    assert violations(pair("7", "9"), (0, 0)) == []
    assert violations(pair("7", "7"), (1, None)) == []


def test_fix_keeps_the_labels_when_no_resolution_scores_at_least_as_well():
    examples = pair("7", "9")
    search = ICMSearch(examples, PlantedScorer([1, 1], prior=5.0), ICMSettings(alpha=100, num_seed=0, iterations=0))
    current = search.evaluate((1, 1))
    assert search.fix_inconsistencies((1, 1), current, rounds=10) == ((1, 1), current)


def test_annealing_accepts_every_improvement_and_a_loss_with_probability_exp_delta_over_t():
    assert accepts(0.0, 0.01, 0.999)
    assert accepts(5.0, 0.01, 0.999)
    assert accepts(-1.0, 1.0, math.exp(-1.0) - 1e-9)
    assert not accepts(-1.0, 1.0, math.exp(-1.0) + 1e-9)
    assert not accepts(-1000.0, 0.5, 0.0)


def test_temperature_schedules_follow_the_reference():
    log_schedule = ICMSettings()  # log, T0 = 10, final 0.01
    assert temperature(0, log_schedule) == 10.0
    assert temperature(1, log_schedule) == pytest.approx(10 / (1 + 2 * math.log(2)))
    exp_schedule = ICMSettings(schedule="exp", decay=0.99)
    assert temperature(10, exp_schedule) == pytest.approx(10 * 0.99**10)
    assert temperature(10_000, exp_schedule) == 0.01


def test_annealing_rejects_worse_labelings_once_cold():
    examples, planted = gsm8k_like(4)
    settings = ICMSettings(iterations=120, seed=1, initial_temperature=1e-6, final_temperature=1e-6)
    # A prior against the planted labels: each claim alone is proposed wrongly, which the pool then disowns.
    search = ICMSearch(examples, PlantedScorer(planted, prior=-3.0), settings)
    energies = []
    search.on_iteration = lambda _, state: energies.append(state.current.energy)
    search.run()
    assert energies == sorted(energies)  # at T ~ 0 the score never goes down
    assert [stats.objective for stats in search.state.history] == energies  # what the report plots
    assert any(stats.proposed and not stats.accepted for stats in search.state.history)


class Killed(Exception):
    pass


def test_a_killed_run_resumes_to_the_labels_of_an_uninterrupted_run(tmp_path):
    examples, planted = gsm8k_like()
    settings = ICMSettings(iterations=80, seed=11, save_every=10, initial_temperature=3.0)
    reference = ICMSearch(examples, PlantedScorer(planted, prior=0.05), settings).run()

    state_path = tmp_path / "state.json"

    def kill(iteration, _state):
        if iteration == 37:
            raise Killed

    with pytest.raises(Killed):
        ICMSearch(examples, PlantedScorer(planted, prior=0.05), settings, state_path, on_iteration=kill).run()
    assert json.loads(state_path.read_text())["iteration"] == 30
    resumed = ICMSearch(examples, PlantedScorer(planted, prior=0.05), settings, state_path)
    assert resumed.resumed_from == 30
    final = resumed.run()
    assert final.labels == reference.labels
    assert final.accepted == reference.accepted
    history = [(s.proposed, s.accepted, s.objective) for s in final.history]
    assert history == [(s.proposed, s.accepted, s.objective) for s in reference.history]


def test_state_of_other_settings_is_refused(tmp_path):
    examples, planted = gsm8k_like(2)
    state_path = tmp_path / "state.json"
    ICMSearch(examples, PlantedScorer(planted), ICMSettings(iterations=10, save_every=5), state_path).run()
    with pytest.raises(DistilleryError, match="other data or settings"):
        ICMSearch(examples, PlantedScorer(planted), ICMSettings(iterations=10, alpha=1.0), state_path)


def test_an_iteration_makes_one_engine_call_when_nothing_is_inconsistent():
    examples, planted = gsm8k_like()
    free = [Example(e.uid, e.row, e.prompt, e.group, None, e.gold) for e in examples]  # no relations
    scorer = PlantedScorer(planted)
    state = ICMSearch(free, scorer, ICMSettings(iterations=60, seed=2)).run()
    later = state.history[1:]
    assert all(stats.engine_calls == (1 if stats.proposed else 0) for stats in later)
    assert any(stats.proposed for stats in later)


def test_scoring_unlabeled_claims_on_demand_gives_the_same_search():
    examples, planted = gsm8k_like()
    batched = ICMSearch(examples, PlantedScorer(planted), ICMSettings(iterations=60, seed=4)).run()
    on_demand = ICMSearch(examples, PlantedScorer(planted), ICMSettings(iterations=60, seed=4, score_unlabeled=False))
    assert on_demand.run().labels == batched.labels
