"""`TorchTitanQwen3ForCausalLM` and `TorchTitanLlamaForCausalLM`: vLLM's own Qwen3 and Llama with TorchTitan names.

Each class extends vLLM's model and changes only `load_weights`: TorchTitan's tensor transforms (a fused
`qkv_linear.wqkv` split into q, k, v; Llama's rotary permutation of q and k, see `formats/titan_names.py`) run
first, then vLLM's `WeightsMapper` renames with distillery's TorchTitan→HF table, and the parent's loader (which
stacks q/k/v and gate/up and shards for tensor parallelism) does the rest.

The classes are built on first attribute access (PEP 562 `__getattr__`), so this module imports without vLLM;
vLLM reaches them as `workflow_scripts.vllm_models.torchtitan:<name>` (see `register`).
"""

from __future__ import annotations

from ..formats.titan_names import TITAN_TO_HF_PREFIX, TITAN_TO_HF_SUBSTR, attention_shape, titan_weights_as_hf_layout
from . import ARCHITECTURES

_built: dict[str, type] = {}


def weights_mapper_tables() -> dict[str, dict[str, str | None]]:
    """The keyword arguments of the `WeightsMapper` the classes use (plain data, testable without vLLM)."""
    return {"orig_to_new_substr": dict(TITAN_TO_HF_SUBSTR), "orig_to_new_prefix": dict(TITAN_TO_HF_PREFIX)}


def _build(architecture: str) -> type:
    from vllm.model_executor.models.utils import WeightsMapper

    family = ARCHITECTURES[architecture]
    if family == "qwen3":
        from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM as Base
    else:
        from vllm.model_executor.models.llama import LlamaForCausalLM as Base

    def load_weights(self, weights):
        """TorchTitan-named weights in, the parent's loader (HF names) out; returns the parameters loaded."""
        transformed = titan_weights_as_hf_layout(weights, family, attention_shape(self.config))
        return Base.load_weights(self, self.titan_to_hf_mapper.apply(transformed))

    namespace = {
        "__module__": __name__,
        "__qualname__": architecture,
        "__doc__": f"vLLM's {Base.__name__} loading TorchTitan-named weights.",
        "titan_to_hf_mapper": WeightsMapper(**weights_mapper_tables()),
        "load_weights": load_weights,
    }
    return type(architecture, (Base,), namespace)


def __getattr__(name: str) -> type:
    if name not in ARCHITECTURES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _built:
        _built[name] = _build(name)
    return _built[name]
