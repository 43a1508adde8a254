"""Next-token log-probabilities of many prompts with each shared prefix computed once (what vLLM's prefix cache
does within a batch), for the transformers engine.

The prompts' prefix tree (`prefix_tree.py`) is walked from the root. At each node, the spans of its children and
the remainders of its leaves (the prompts that share nothing deeper) run together in packed passes: laid end to
end in one sequence, each segment attending to the node's cached prefix and causally to itself only (a custom
4D attention mask), at the positions it has in its own prompt. A child's cache is the node's prefix followed by
its segment's keys and values; a leaf's distribution is read at its segment's last token. Packing, rather than
one row per prompt, keeps the passes long (a short pass costs a read of every weight for a few tokens) and needs
no padding.

Exact for a model whose every layer keeps a plain growing cache and takes a custom 4D mask (sdpa, eager): not for
sliding windows, recurrent state or flash attention, where the engine runs whole prompts instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import TokenLogprob
from .prefix_tree import prefix_tree

# Packed tokens per pass: long enough that the weights' read is shared by many tokens, short enough that the
# attention scores (heads x packed x (prefix + packed)) stay small. A longer segment runs alone.
PACKED_TOKENS_PER_PASS = 1024


def can_share_prefixes(model) -> bool:
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    if getattr(model.config, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    layers = DynamicCache(config=model.config).layers
    return bool(layers) and all(type(layer) is DynamicLayer for layer in layers)


def top_candidates(logits, top_k: int, tokenizer) -> list[list[TokenLogprob]]:
    """The `top_k` most likely next tokens of each row of `logits` (rows x vocabulary), best first."""
    import torch

    logprobs = torch.log_softmax(logits.float(), dim=-1)
    values, ids = torch.topk(logprobs, min(top_k, logprobs.shape[-1]), dim=-1)
    return [
        [
            TokenLogprob(int(token), tokenizer.decode([int(token)]), float(value))
            for value, token in zip(row_values, row_ids, strict=True)
        ]
        for row_values, row_ids in zip(values.tolist(), ids.tolist(), strict=True)
    ]


def score_sharing_prefixes(model, tokenizer, prompts: Sequence[Sequence[int]], top_k: int, device):
    results: list[list[TokenLogprob] | None] = [None] * len(prompts)
    pending = [(prefix_tree(prompts), None)]
    while pending:
        node, prefix = pending.pop()
        segments = [(child, list(prompts[child.holder][node.end : child.end])) for child in node.children]
        segments += [(leaf, list(prompts[leaf][node.end :])) for leaf in node.leaves]
        for pack in packs(segments, PACKED_TOKENS_PER_PASS):
            is_leaf = [isinstance(key, int) for key, _ in pack]
            logits, caches = run_pack(model, prefix, node.end, [tokens for _, tokens in pack], is_leaf, device)
            leaves = [key for key, _ in pack if isinstance(key, int)]
            for leaf, candidates in zip(leaves, top_candidates(logits, top_k, tokenizer), strict=True):
                results[leaf] = candidates
            children = [key for key, _ in pack if not isinstance(key, int)]
            pending += list(zip(children, caches, strict=True))
    return results


def packs(segments: list, budget: int) -> list[list]:
    """Consecutive segments, as many per pack as fit in `budget` tokens (a longer one alone)."""
    grouped: list[list] = []
    used = budget
    for segment in segments:
        if used + len(segment[1]) > budget:
            grouped.append([])
            used = 0
        grouped[-1].append(segment)
        used += len(segment[1])
    return grouped


def packed_mask(lengths: list[int], prefix_length: int, dtype, device):
    """(1, 1, packed, prefix + packed): 0 where a token may attend (the prefix, its own segment up to itself),
    the dtype's minimum elsewhere."""
    import torch

    segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), torch.tensor(lengths, device=device))
    index = torch.arange(len(segment), device=device)
    inside = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    allowed = torch.cat([torch.ones(len(segment), prefix_length, dtype=torch.bool, device=device), inside], dim=1)
    mask = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return mask.masked_fill(~allowed, torch.finfo(dtype).min)[None, None]


def run_pack(model, prefix: list | None, start: int, segments: list[list[int]], is_leaf: list[bool], device):
    """One pass over `segments` laid end to end after `prefix` (keys and values per layer of the first `start`
    tokens): the logits at the last token of each leaf's segment, and the cache of each other segment (the
    prefix, then its own keys and values)."""
    import torch
    from transformers import DynamicCache

    lengths = [len(tokens) for tokens in segments]
    ends = torch.tensor(lengths, device=device).cumsum(0)
    cache = DynamicCache(ddp_cache_data=prefix, config=model.config) if prefix else DynamicCache(config=model.config)
    positions = torch.cat([torch.arange(start, start + length, device=device) for length in lengths])
    with torch.inference_mode():
        logits = model(
            input_ids=torch.tensor([[token for tokens in segments for token in tokens]], device=device),
            attention_mask=packed_mask(lengths, start, model.dtype, device),
            position_ids=positions[None],
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=ends[torch.tensor(is_leaf, device=device)] - 1 if any(is_leaf) else 1,
        ).logits[0]
    caches = []
    for end, length, leaf in zip(ends.tolist(), lengths, is_leaf, strict=True):
        if leaf:
            continue
        span = slice(start + end - length, start + end)
        caches.append([
            (torch.cat([layer.keys[:, :, :start], layer.keys[:, :, span]], dim=2),
             torch.cat([layer.values[:, :, :start], layer.values[:, :, span]], dim=2))
            for layer in cache.layers
        ])  # fmt: skip
    return (logits if any(is_leaf) else logits[:0]), caches
