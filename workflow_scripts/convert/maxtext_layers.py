"""One MaxText layer array -> its HF weight, made by one copy into a buffer reused from layer to layer.

Each layout change (a transpose, the head split, llama3.1's de-interleaving of q and k: evens of head_dim
first, then odds) is a view of the stored layer, and the HF tensor is that view copied once. The buffer is
reused because the driver writes each tensor before asking for the next: a fresh 32 MB tensor per layer cost a
page fault per 4 KB of it (memory from the system comes zeroed, page by page), a large share of a conversion's
system time. The copy is of the whole layer: copied in row blocks, a transpose is about 4x slower (torch's
blocked transpose kernel only takes a whole 2-D transpose).
"""

from __future__ import annotations

import numpy as np
import torch

from ..architectures.maxtext_llama import MaxTextLlamaMath
from ..formats.maxtext_arrays import as_torch

_QUERY, _KEY, _VALUE = "self_attention.query.kernel", "self_attention.key.kernel", "self_attention.value.kernel"


_SCALE_BLOCK = 1 << 18  # elements of a query kernel scaled at a time


class LayerBuffers:
    """Tensors reused from one layer to the next: one flat buffer per dtype and role (a query kernel needs two),
    as large as the largest layer asked for, viewed in each layer's shape."""

    def __init__(self) -> None:
        self._flat: dict[tuple, torch.Tensor] = {}

    def __call__(self, shape: tuple[int, ...], dtype: torch.dtype, role: str = "out") -> torch.Tensor:
        count = int(np.prod(shape))
        flat = self._flat.get((dtype, role))
        if flat is None or flat.numel() < count:
            flat = self._flat[(dtype, role)] = torch.empty(count, dtype=dtype)
        return flat[:count].view(shape)


def _fresh(shape: tuple[int, ...], dtype: torch.dtype, role: str = "out") -> torch.Tensor:
    return torch.empty(shape, dtype=dtype)


def hf_layout(mt_name: str, tensor: torch.Tensor, math: MaxTextLlamaMath) -> tuple[torch.Tensor, tuple[int, ...]]:
    """(a view of the stored layer whose row-major order is the HF weight's, the HF weight's shape)."""
    if mt_name in (_QUERY, _KEY, _VALUE):
        emb, heads, head_dim = tensor.shape
        if mt_name != _VALUE and math.rope_type == "llama3.1":
            # [emb, heads, hd/2, pair] -> [heads, pair, hd/2, emb]: HF's rows, halves rotated as MaxText's pairs
            return tensor.reshape(emb, heads, head_dim // 2, 2).permute(1, 3, 2, 0), (heads * head_dim, emb)
        return tensor.permute(1, 2, 0), (heads * head_dim, emb)
    if mt_name == "self_attention.out.kernel":
        heads, head_dim, emb = tensor.shape
        return tensor.permute(2, 0, 1), (emb, heads * head_dim)
    if mt_name.startswith("mlp."):
        return tensor.T, tuple(reversed(tensor.shape))
    return tensor, tuple(tensor.shape)  # the layer norms' scales


def hf_layer_tensor(
    mt_name: str, layer: np.ndarray, math: MaxTextLlamaMath, dtype: torch.dtype, buffers=_fresh
) -> torch.Tensor:
    """One layer's MaxText array -> the HF weight in `dtype` (transposes and reshapes are exact in any dtype), in
    a tensor from `buffers` (which the caller may hand out again once this one is written)."""
    view, shape = hf_layout(mt_name, as_torch(layer), math)
    if mt_name != _QUERY:
        out = buffers(shape, dtype)
        out.view(view.shape).copy_(view)  # a whole 2-D transpose: torch's blocked kernel, several times faster
        return out
    # MaxText's attention does not divide q·k by sqrt(head_dim); its query kernel carries that factor, multiplied in
    # float32 and rounded once to `dtype`: element by element, so a block of heads at a time (no float32 copy of
    # the whole layer kept in memory).
    out = buffers(shape, dtype)
    rows = out.view(view.shape)
    scale = float(np.sqrt(math.size.head_dim))
    step = max(1, _SCALE_BLOCK // max(1, rows[0].numel()))
    for start in range(0, view.shape[0], step):
        scaled = buffers(view[start : start + step].shape, torch.float32, "scaled")
        scaled.copy_(view[start : start + step])
        rows[start : start + step].copy_(scaled.mul_(scale))
    return out
