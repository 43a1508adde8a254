"""Each MaxText layer array becomes its HF weight by one copy of a view into a buffer reused from layer to layer;
the bits are those of MaxText's transforms written out step by step (de-interleave, reshape, transpose, scale)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

ml_dtypes = pytest.importorskip("ml_dtypes")

from workflow_scripts.architectures.maxtext_llama import LlamaSize, MaxTextLlamaMath  # noqa: E402
from workflow_scripts.convert.maxtext_layers import LayerBuffers, hf_layer_tensor  # noqa: E402
from workflow_scripts.formats.maxtext_arrays import BlockBuffers  # noqa: E402

SIZE = LlamaSize(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, vocab_size=100)  # fmt: skip
STORED_SHAPES = {
    "self_attention.query.kernel": (64, 4, 16),
    "self_attention.key.kernel": (64, 2, 16),
    "self_attention.value.kernel": (64, 2, 16),
    "self_attention.out.kernel": (4, 16, 64),
    "mlp.wi_0.kernel": (64, 96),
    "mlp.wi_1.kernel": (64, 96),
    "mlp.wo.kernel": (96, 64),
    "pre_self_attention_layer_norm.scale": (64,),
}


def step_by_step(mt_name: str, layer: np.ndarray, math: MaxTextLlamaMath, dtype: torch.dtype) -> torch.Tensor:
    """MaxText's transforms one after another, each making a new tensor."""
    tensor = torch.from_numpy(layer.astype(np.float32))
    if mt_name == "self_attention.query.kernel":
        tensor = tensor * float(np.sqrt(math.size.head_dim))
    if mt_name in ("self_attention.query.kernel", "self_attention.key.kernel") and math.rope_type == "llama3.1":
        tensor = torch.cat([tensor[..., 0::2], tensor[..., 1::2]], dim=-1)
    if mt_name.startswith("self_attention.") and mt_name != "self_attention.out.kernel":
        tensor = tensor.reshape(math.size.hidden_size, -1).T
    elif mt_name == "self_attention.out.kernel":
        tensor = tensor.reshape(-1, math.size.hidden_size).T
    elif mt_name.startswith("mlp."):
        tensor = tensor.T
    return tensor.to(dtype)


@pytest.mark.parametrize("rope_type", ["llama3.1", "default"])
@pytest.mark.parametrize("stored_dtype", [ml_dtypes.bfloat16, np.float32])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_each_layer_gets_the_bits_of_maxtexts_transforms(rope_type, stored_dtype, dtype):
    math = MaxTextLlamaMath("tiny", SIZE, rope_type, tied_embeddings=False)
    buffers = LayerBuffers()  # shared by every layer, as in a conversion, larger and smaller ones taking turns
    rng = np.random.default_rng(0)
    for mt_name, shape in [*STORED_SHAPES.items(), *reversed(STORED_SHAPES.items())]:
        layer = (rng.standard_normal(shape) * 3).astype(stored_dtype)
        expected = step_by_step(mt_name, layer, math, dtype)
        made = hf_layer_tensor(mt_name, layer, math, dtype, buffers)
        assert made.is_contiguous() and made.dtype == dtype
        assert torch.equal(made.view(torch.uint8), expected.contiguous().view(torch.uint8)), mt_name


def test_block_buffers_are_lent_again_and_outgrown_ones_let_go():
    buffers = BlockBuffers()
    first = buffers.borrow(1000)
    buffers.give_back(first)
    assert buffers.borrow(800) is first  # a smaller block fits in it
    buffers.give_back(first)
    larger = buffers.borrow(5000)
    assert larger is not first and larger.nbytes == 5000
    buffers.give_back(larger)
    assert buffers.borrow(1000) is larger  # the outgrown buffer was let go, not kept beside it
