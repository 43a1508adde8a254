"""Where a batch of prompts shares token prefixes: the plan the transformers engine follows to compute each
shared prefix once, as vLLM's prefix cache does within a batch.

The prompts (token ids) form a tree: a node is a span of tokens that every prompt below it holds at the same
positions; its key/value cache extends its parent's by that span. A prompt is a leaf of the deepest node it
shares, and only its remainder is run, batched with the node's other leaves on the node's cache. Every prompt
keeps at least its last token out of any shared span: its next-token distribution comes from running it. A
node is made only where it saves enough (`MIN_SAVED_TOKENS`): a few tokens shared by a few prompts would cost
more passes than they save, so such prompts stay leaves of the node above.

ICM's batches are what this is for: the prompts of unlabeled claims hold all the demonstrations and differ only
in the query, and the leave-one-out prompts of the labeled claims share every demonstration before the one
each leaves out. Sorting the prompts makes each node's prompts contiguous and its span the common prefix of its
first and last prompt.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class PrefixNode:
    """Tokens [start, end) of prompt `holder` (any of its prompts), shared by `children` and `leaves`, which
    hold `size` prompts in all."""

    start: int
    end: int
    holder: int
    size: int
    children: list[PrefixNode] = field(default_factory=list)
    leaves: list[int] = field(default_factory=list)  # prompts run from `end` on this node's cache


def common_length(first: Sequence[int], second: Sequence[int], start: int) -> int:
    """The position where two prompts first differ, looking from `start` on."""
    position = start
    limit = min(len(first), len(second))
    while position < limit and first[position] == second[position]:
        position += 1
    return position


# A node costs a forward pass of its own, and its leaves one more: it is made only where it saves at least this
# many token computations ((prompts below - 1) x its span), else its prompts stay with the node above it.
MIN_SAVED_TOKENS = 64


def prefix_tree(prompts: Sequence[Sequence[int]], min_saved_tokens: int = MIN_SAVED_TOKENS) -> PrefixNode:
    """The tree of a batch's shared prefixes; the root's span is what every prompt shares (often nothing)."""
    if any(len(prompt) == 0 for prompt in prompts):
        raise ValueError("an empty prompt has no next token to score")
    order = sorted(range(len(prompts)), key=lambda index: prompts[index])
    root = PrefixNode(0, 0, order[0], len(order))  # shares nothing: its leaves run whole
    # (prompts that share tokens [0, depth), the node whose cache they extend); a loop, not recursion: a chain
    # of leave-one-out prompts is as deep as the batch is long.
    pending = [(order, 0, root)]
    while pending:
        group, depth, node = pending.pop()
        shortest = min(len(prompts[index]) for index in group)
        # Every prompt keeps at least its last token out of a shared span: that token is what it runs.
        end = max(depth, min(common_length(prompts[group[0]], prompts[group[-1]], depth), shortest - 1))
        if (end - node.end) * (len(group) - 1) >= min_saved_tokens:
            child = PrefixNode(node.end, end, group[0], len(group))
            node.children.append(child)
            node = child
        for run in _runs_by_token(prompts, group, end):
            rest = [index for index in run if len(prompts[index]) > end + 1]
            node.leaves += [index for index in run if len(prompts[index]) == end + 1]
            if len(rest) > 1:
                pending.append((rest, end, node))
            else:
                node.leaves += rest
    return root


def _runs_by_token(prompts: Sequence[Sequence[int]], group: list[int], position: int) -> list[list[int]]:
    """The sorted group cut where the token at `position` changes."""
    runs: list[list[int]] = []
    for index in group:
        if runs and prompts[runs[-1][0]][position] == prompts[index][position]:
            runs[-1].append(index)
        else:
            runs.append([index])
    return runs


def shared_tokens(node: PrefixNode) -> int:
    """Tokens the tree computes once for all prompts below: the spans of every node."""
    total, pending = 0, [node]
    while pending:
        current = pending.pop()
        total += current.end - current.start
        pending += current.children
    return total
