"""Batched next-token log-probabilities of the transformers engine: what ICM's scoring calls."""

from __future__ import annotations

import pytest
import torch

from workflow_scripts.engines import EngineSettings, open_engine


@pytest.fixture(scope="module")
def engine(tiny_model_store):
    model = tiny_model_store("llama", "safetensors", "float32")
    opened = open_engine(EngineSettings(kind="transformers", model_path=str(model), max_num_seqs=8))
    yield opened
    opened.close()


def test_a_batch_of_different_lengths_scores_each_prompt_as_if_alone(engine):
    tokenizer = engine.tokenizer
    prompts = [tokenizer(text)["input_ids"] for text in ("The teacher", "A resumable job continues after the", "Q")]
    batched = engine.next_token_logprobs(prompts, 5)
    for prompt, candidates in zip(prompts, batched, strict=True):
        with torch.inference_mode():
            logits = engine.model(input_ids=torch.tensor([prompt])).logits[0, -1].float()
        expected = torch.topk(torch.log_softmax(logits, -1), 5)
        assert [c.token_id for c in candidates] == expected.indices.tolist()
        assert [c.logprob for c in candidates] == pytest.approx(expected.values.tolist(), abs=1e-4)
        assert [c.text for c in candidates] == [tokenizer.decode([i]) for i in expected.indices.tolist()]


def test_a_prompt_longer_than_the_context_is_refused(engine):
    from workflow_scripts.errors import DistilleryError

    with pytest.raises(DistilleryError, match="does not fit max_model_len"):
        engine.next_token_logprobs([[1] * (engine.max_model_len + 1)], 5)


def icm_like_prompts(seed: int = 0) -> list[list[int]]:
    """What one ICM evaluation of two candidate labelings sends (as the consistency fix does): for each, every
    labeled claim scored with the others as demonstrations (leave one out) and every unlabeled claim with all
    of them; the candidates differ in the label of the third demonstration. Plus a duplicate prompt and one
    that is a prefix of another."""
    import random

    rng = random.Random(seed)
    demos = [[rng.randrange(5, 200) for _ in range(rng.randrange(12, 24))] for _ in range(10)]
    queries = [[rng.randrange(5, 200) for _ in range(rng.randrange(2, 6))] for _ in range(10)]
    prompts = []
    for label_token in (201, 202):
        labeled = [*demos[:2], [*demos[2], label_token], *demos[3:6]]
        prompts += [[1, *sum((d for i, d in enumerate(labeled) if i != k), []), *queries[k]] for k in range(6)]
        prompts += [[1, *sum(labeled, []), *queries[k]] for k in range(6, 10)]
    return [*prompts, list(prompts[3]), prompts[7][:5]]


def walk(tree) -> list:
    nodes, pending = [], [tree]
    while pending:
        nodes.append(pending.pop())
        pending += nodes[-1].children
    return nodes


def nodes_of(tree) -> int:
    return len(walk(tree))


def test_scoring_with_shared_prefixes_gives_the_log_probs_of_whole_prompts(engine):
    from workflow_scripts.engines.prefix_tree import prefix_tree

    prompts = icm_like_prompts()
    assert engine.shares_prefixes
    tree = prefix_tree(prompts)
    assert nodes_of(tree) >= 8  # a few levels of shared demonstrations
    assert any(len(node.children) > 1 for node in walk(tree))  # where the two candidates part
    shared = engine.score_sharing_prefixes(prompts, 5)
    whole = engine.score_whole_prompts(prompts, 5)
    for ours, reference in zip(shared, whole, strict=True):
        assert [c.token_id for c in ours] == [c.token_id for c in reference]
        assert [c.logprob for c in ours] == pytest.approx([c.logprob for c in reference], abs=1e-4)
    assert engine.next_token_logprobs(prompts, 5) == shared


def test_packed_passes_split_where_the_token_budget_says_with_the_same_log_probs(engine, monkeypatch):
    from workflow_scripts.engines import shared_prefix_scoring

    prompts = icm_like_prompts(seed=1)
    expected = engine.score_whole_prompts(prompts, 3)
    monkeypatch.setattr(shared_prefix_scoring, "PACKED_TOKENS_PER_PASS", 40)  # mostly one segment per pass
    for ours, reference in zip(engine.score_sharing_prefixes(prompts, 3), expected, strict=True):
        assert [c.logprob for c in ours] == pytest.approx([c.logprob for c in reference], abs=1e-4)


def test_prompts_sharing_nothing_and_each_over_the_pass_budget_run_alone(engine, monkeypatch):
    """No shared prefix gives an empty spine: each prompt, too long to pack with another, is a pass of its own
    (an ICM batch of long claims hit this: the first pass had no tokens at all)."""
    from workflow_scripts.engines import shared_prefix_scoring

    prompts = [[5 + index, *range(10, 40)] for index in range(3)]  # they differ at the first token
    monkeypatch.setattr(shared_prefix_scoring, "PACKED_TOKENS_PER_PASS", 20)
    expected = engine.score_whole_prompts(prompts, 3)
    for ours, reference in zip(engine.score_sharing_prefixes(prompts, 3), expected, strict=True):
        assert [c.logprob for c in ours] == pytest.approx([c.logprob for c in reference], abs=1e-4)
