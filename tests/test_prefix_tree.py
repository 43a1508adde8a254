"""The plan of shared prefixes the transformers engine scores a batch by (`engines/prefix_tree.py`)."""

from __future__ import annotations

import pytest

from workflow_scripts.engines.prefix_tree import prefix_tree, shared_tokens


def spans_of(node, prompts) -> list[list[int]]:
    spans, pending = [], [node]
    while pending:
        current = pending.pop()
        spans.append(prompts[current.holder][current.start : current.end])
        pending += current.children
    return spans


def leaves_and_depths(node) -> dict[int, int]:
    found, pending = {}, [node]
    while pending:
        current = pending.pop()
        found.update({leaf: current.end for leaf in current.leaves})
        pending += current.children
    return found


def test_prompts_that_differ_only_in_the_query_share_every_demonstration():
    demos = [1, 10, 11, 12, 20, 21]
    prompts = [[*demos, 30 + k, 40] for k in range(4)]
    tree = prefix_tree(prompts, min_saved_tokens=1)
    assert [(child.start, child.end) for child in tree.children] == [(0, len(demos))]
    assert leaves_and_depths(tree) == {k: len(demos) for k in range(4)}
    assert shared_tokens(tree) == len(demos)


def test_leave_one_out_prompts_share_the_demonstrations_before_the_one_they_leave_out():
    demos = [[10, 11], [20, 21], [30, 31], [40, 41]]
    prompts = [[1, *sum((d for i, d in enumerate(demos) if i != k), []), 90 + k] for k in range(4)]
    depths = leaves_and_depths(prefix_tree(prompts, min_saved_tokens=1))
    # BOS, then the demonstrations before the left-out one; the last two part where their last demos differ.
    assert depths == {0: 1, 1: 3, 2: 5, 3: 5}
    for node_span in spans_of(prefix_tree(prompts, min_saved_tokens=1), prompts):
        assert len(node_span) <= 3


def test_every_prompt_is_a_leaf_once_and_keeps_its_last_token_out_of_any_span():
    prompts = [[1, 2, 3], [1, 2, 3], [1, 2], [1, 2, 3, 4], [5], [1, 9, 9, 9]]
    depths = leaves_and_depths(prefix_tree(prompts, min_saved_tokens=1))
    assert sorted(depths) == list(range(len(prompts)))
    for index, depth in depths.items():
        assert depth < len(prompts[index])
        assert depth >= 1 or prompts[index][0] == 5


def test_a_thousand_chained_prompts_need_no_recursion():
    prompts = [list(range(length)) for length in range(1, 1001)]  # each a prefix of the next
    depths = leaves_and_depths(prefix_tree(prompts, min_saved_tokens=1))
    assert depths == {**{index: index for index in range(999)}, 999: 998}  # the longest runs its last two


def test_a_span_that_saves_too_little_leaves_its_prompts_to_the_node_above():
    demos = [1, *range(10, 50)]  # 41 tokens shared by all three prompts: 82 saved
    prompts = [[*demos, 7, 8, 60 + k] for k in range(2)] + [[*demos, 9, 70]]
    tree = prefix_tree(prompts, min_saved_tokens=64)
    assert [(child.start, child.end) for child in tree.children] == [(0, 41)]
    assert leaves_and_depths(tree) == {0: 41, 1: 41, 2: 41}  # [7, 8] saves 2 tokens: not a node
    assert leaves_and_depths(prefix_tree(prompts, min_saved_tokens=1)) == {0: 43, 1: 43, 2: 41}
    assert leaves_and_depths(prefix_tree(prompts, min_saved_tokens=100)) == {0: 0, 1: 0, 2: 0}


def test_an_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="empty prompt"):
        prefix_tree([[1, 2], []])
