"""The non-weight files of a model folder: tokenizer, generation config, custom code.

Where the input lacks them (a DeepSpeed run, a bare weights folder), they come from `--base-model-name`: a local
folder, or a model already in the local Hugging Face cache. Nothing is downloaded.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import DistilleryError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "vocab.txt",
    "chat_template.jinja",
    "chat_template.json",
)
EXTRA_FILES = ("generation_config.json", "preprocessor_config.json")


def resolve_base_model(name: str | None) -> Path | None:
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_dir():
        return path
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure means "not available offline"
        raise DistilleryError(
            "is neither a local folder nor in the local Hugging Face cache",
            name,
            "distillery downloads nothing: fetch it first (huggingface-cli download) and pass its folder",
        ) from None


def _custom_code_files(folder: Path) -> list[str]:
    """Python files that config.json's `auto_map` points at (models loaded with trust_remote_code)."""
    config_path = folder / "config.json"
    if not config_path.is_file():
        return []
    try:
        auto_map = json.loads(config_path.read_text()).get("auto_map", {})
    except (json.JSONDecodeError, AttributeError):
        return []
    modules = {ref.split("--")[-1].split(".")[0] for ref in _flatten(auto_map.values())}
    return [f"{module}.py" for module in sorted(modules) if (folder / f"{module}.py").is_file()]


def _flatten(values) -> list[str]:
    flat: list[str] = []
    for value in values:
        flat.extend(_flatten(value) if isinstance(value, list | tuple) else [value] if isinstance(value, str) else [])
    return flat


def copy_model_files(source: Path, destination: Path, base_model: Path | None = None) -> list[str]:
    """Copy tokenizer, generation config and custom code from `source`, filling gaps from `base_model`."""
    copied = []
    wanted = list(TOKENIZER_FILES) + list(EXTRA_FILES)
    for folder in (source, base_model):
        if folder is None:
            continue
        for name in wanted + _custom_code_files(folder):
            if (folder / name).is_file() and not (destination / name).exists():
                shutil.copy2(folder / name, destination / name)
                copied.append(name)
    return copied
