"""vLLM model classes that serve TorchTitan-named checkpoints directly, as TorchTitan's vLLM guide does.

A checkpoint folder whose config.json says `"architectures": ["TorchTitanQwen3ForCausalLM"]` (or
`TorchTitanLlamaForCausalLM`) and whose safetensors or .bin files hold TorchTitan names loads with
`vllm serve FOLDER` or `LLM(model=FOLDER)` once these classes are registered: through vLLM's plugin entry point
(`vllm.general_plugins` → `register`, declared in pyproject.toml, so an installed distillery is found by every
vLLM process), or by calling `register()` in a script.

Importing this package never imports vLLM: `register` names the classes by string, and vLLM imports
`workflow_scripts.vllm_models.torchtitan` (which builds them on first use) only when it needs one.
"""

from __future__ import annotations

# Architecture name in config.json -> the model family it serves.
ARCHITECTURES = {"TorchTitanQwen3ForCausalLM": "qwen3", "TorchTitanLlamaForCausalLM": "llama"}


def register() -> None:
    """Register the TorchTitan architectures with vLLM's ModelRegistry (safe to call more than once)."""
    from vllm import ModelRegistry

    for architecture in ARCHITECTURES:
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, f"{__name__}.torchtitan:{architecture}")
