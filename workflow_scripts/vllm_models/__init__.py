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

import json
from pathlib import Path

from ..errors import DistilleryError

# Architecture name in config.json -> the model family it serves.
ARCHITECTURES = {"TorchTitanQwen3ForCausalLM": "qwen3", "TorchTitanLlamaForCausalLM": "llama"}


def register() -> None:
    """Register the TorchTitan architectures with vLLM's ModelRegistry (safe to call more than once)."""
    from vllm import ModelRegistry

    for architecture in ARCHITECTURES:
        if architecture not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(architecture, f"{__name__}.torchtitan:{architecture}")


def require_registered_architecture(config_path: Path) -> str | None:
    """The TorchTitan architecture a config.json names (None for any other); refuse one distillery lacks."""
    try:
        architectures = json.loads(Path(config_path).read_text()).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None  # a missing or broken config.json is reported by whoever reads it properly
    for architecture in architectures:
        if architecture in ARCHITECTURES:
            return architecture
        if architecture.startswith("TorchTitan"):
            raise DistilleryError(
                f"names architecture {architecture!r}, which is not registered",
                config_path,
                f"distillery registers {', '.join(ARCHITECTURES)}",
            )
    return None
