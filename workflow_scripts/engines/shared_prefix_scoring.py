"""Next-token log-probabilities of many prompts with each shared prefix computed once (what vLLM's prefix cache
does within a batch), for the transformers engine.

The prompts' prefix tree (`prefix_tree.py`) is taken apart into spines: from a node, the path down through the
child holding most prompts, to the end. A spine's tokens are one sequence; the prompts that leave it (the
leaves of its nodes) need only their remainders, each after the spine's first `depth` tokens (the depth of its
node). The spine and as many remainders as fit run in one packed pass: laid end to end in one sequence, with a
custom 4D attention mask that lets each remainder see the spine's keys before its depth and itself causally,
at the positions it has in its own prompt; further passes hold more remainders, the spine now cached. A child
off the spine starts a spine of its own on the first `depth` keys of this one.

So a batch of leave-one-out prompts (ICM's: each labeled claim scored with every other one as a demonstration)
costs about half the tokens of running each prompt whole, and the prompts of unlabeled claims, which share all
demonstrations, only their queries; the passes stay long (a short pass reads every weight for a few tokens)
and need no padding.

Exact for a model whose every layer keeps a plain growing cache and takes a custom 4D mask (sdpa, eager): not for
sliding windows, recurrent state or flash attention, where the engine runs whole prompts instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from .base import TokenLogprob
from .prefix_tree import PrefixNode, prefix_tree

# Packed tokens per pass: long enough that the weights' read is shared by many tokens, short enough that the
# attention scores (heads x packed x (prefix + packed), mostly masked) stay few. A longer segment runs alone. On
# a CPU with SmolLM2-135M and 15 leave-one-out prompts, 256 or 512 took 0.63x the CPU time of whole prompts,
# 1024 0.73x, 2048 0.85x.
PACKED_TOKENS_PER_PASS = 512


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
    pending: list[tuple[PrefixNode, list | None]] = [(prefix_tree(prompts), None)]  # a node, its prefix's cache
    while pending:
        node, cache = pending.pop()
        spine = [node]
        while spine[-1].children:
            spine.append(max(spine[-1].children, key=lambda child: child.size))
        spine_tokens = list(prompts[spine[-1].holder][node.start : spine[-1].end])
        while len(spine_tokens) > PACKED_TOKENS_PER_PASS:  # a long spine runs ahead, in pieces
            _, cache = run_pack(model, cache, [spine_tokens[:PACKED_TOKENS_PER_PASS]], [], True, device)
            spine_tokens = spine_tokens[PACKED_TOKENS_PER_PASS:]
        remainders = [(leaf, part.end) for part in spine for leaf in part.leaves]
        # A root that shares nothing has no spine tokens: its first pass is its prompts alone (an empty spine
        # with a remainder over the budget would leave a pass of no tokens).
        with_spine = bool(spine_tokens)
        while with_spine or remainders:
            segments, pack = [spine_tokens] if with_spine else [], []
            room = PACKED_TOKENS_PER_PASS - len(spine_tokens) * with_spine
            while remainders and (room >= len(prompts[remainders[0][0]]) - remainders[0][1] or not segments):
                leaf, depth = remainders.pop(0)
                pack.append((leaf, depth))
                segments.append(list(prompts[leaf][depth:]))
                room -= len(segments[-1])
            logits, cache = run_pack(model, cache, segments, [depth for _, depth in pack], with_spine, device)
            for (leaf, _), candidates in zip(pack, top_candidates(logits, top_k, tokenizer), strict=True):
                results[leaf] = candidates
            with_spine = False
        on_spine = {id(part) for part in spine}
        pending += [(child, sliced(cache, child.start)) for part in spine for child in part.children
                    if id(child) not in on_spine]  # fmt: skip
    return results  # type: ignore[return-value]


def sliced(cache: list | None, length: int) -> list | None:
    """The keys and values of the first `length` positions."""
    if not cache or length == 0:
        return None
    return [(keys[:, :, :length], values[:, :, :length]) for keys, values in cache]


def packed_mask(spine_length: int, cached: int, lengths: list[int], depths: list[int], dtype, device):
    """(1, 1, packed, cached + packed), 0 where a query may attend and the dtype's minimum elsewhere. The keys
    are the cache (spine positions 0..cached-1), then the packed tokens: the spine's next `spine_length`, then
    one segment per remainder. A spine token sees the spine up to itself; a remainder's token sees the spine's
    keys before its depth and its own segment up to itself."""
    import torch

    def ints(values):
        return torch.tensor(values, dtype=torch.long, device=device)

    packed = spine_length + sum(lengths)
    segment = torch.repeat_interleave(torch.arange(len(lengths) + 1, device=device), ints([spine_length, *lengths]))
    on_spine = segment == 0
    index = torch.arange(packed, device=device)
    # A spine query sees spine positions up to its own; a remainder's, those before its depth.
    limit = torch.where(on_spine, cached + index + 1, ints([0, *depths])[segment])
    key_on_spine = torch.cat([torch.ones(cached, dtype=torch.bool, device=device), on_spine])
    key_position = torch.cat([torch.arange(cached, device=device), cached + index])
    key_segment = torch.cat([torch.zeros(cached, dtype=torch.long, device=device), segment])
    key_index = torch.cat([torch.full((cached,), -1, device=device), index])
    sees_spine = key_on_spine[None, :] & (key_position[None, :] < limit[:, None])
    same_segment = key_segment[None, :] == segment[:, None]
    sees_itself = ~on_spine[:, None] & same_segment & (key_index[None, :] <= index[:, None])
    mask = torch.zeros((packed, cached + packed), dtype=dtype, device=device)
    return mask.masked_fill(~(sees_spine | sees_itself), torch.finfo(dtype).min)[None, None]


def run_pack(model, cache: list | None, segments: list[list[int]], depths: list[int], with_spine: bool, device):
    """One pass over `segments` laid end to end after the cached spine keys: the spine's next tokens first where
    `with_spine`, then one remainder per depth. Returns the logits at each remainder's last token and the cache
    of the spine so far."""
    import torch
    from transformers import DynamicCache

    spine = segments[0] if with_spine else []
    remainders = segments[1:] if with_spine else segments
    cached = cache[0][0].shape[2] if cache else 0
    lengths = [len(tokens) for tokens in remainders]
    positions = [cached + offset for offset in range(len(spine))]
    positions += [depth + offset for depth, length in zip(depths, lengths, strict=True) for offset in range(length)]
    ends = (len(spine) + torch.tensor(lengths, dtype=torch.long).cumsum(0) - 1).tolist() if lengths else []
    past = DynamicCache(ddp_cache_data=cache, config=model.config) if cache else DynamicCache(config=model.config)
    with torch.inference_mode():
        logits = model(
            input_ids=torch.tensor([[token for tokens in segments for token in tokens]], device=device),
            attention_mask=packed_mask(len(spine), cached, lengths, depths, model.dtype, device),
            position_ids=torch.tensor([positions], device=device),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=torch.tensor(ends or [0], device=device),
        ).logits[0]
    spine_cache = [(layer.keys[:, :, : cached + len(spine)], layer.values[:, :, : cached + len(spine)])
                   for layer in past.layers]  # fmt: skip
    return logits[: len(ends)], spine_cache
