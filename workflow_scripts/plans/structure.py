"""A model's module tree built on the meta device: names, classes, parameter shapes, with no weights loaded.

`distillery print-structure` prints it; the plan checks match their patterns against it.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from ..architectures.architecture import load_config
from ..architectures.remote_code import allow_remote_code
from ..errors import DistilleryError, first_line


def build_meta_model(folder: str | Path, trust_remote_code: bool = False) -> nn.Module:
    """The causal LM that `folder`'s config.json describes, on the meta device (a 70B config builds instantly)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    trust_remote_code = allow_remote_code(folder, trust_remote_code)
    if trust_remote_code:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=True, local_files_only=True)
    else:
        config = load_config(folder)
    with warnings.catch_warnings(), torch.device("meta"):
        warnings.simplefilter("ignore")
        try:
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        except (ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
            raise DistilleryError(
                f"transformers cannot build this model ({first_line(exc)})",
                folder / "config.json",
                "for a model with its own code (auto_map), pass --trust-remote-code",
            ) from None


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _format_count(count: int) -> str:
    for unit, size in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)


def structure_lines(model: nn.Module, max_depth: int | None = None, show_params: bool = False) -> list[str]:
    """One line per module, indented by depth; repeated layers after the first are folded into one line."""
    lines = [f"{type(model).__name__} ({_format_count(_count(model))} parameters)"]

    def walk(module: nn.Module, prefix: str, depth: int) -> None:
        if max_depth is not None and depth > max_depth:
            return
        children = list(module.named_children())
        index = 0
        while index < len(children):
            name, child = children[index]
            same = [c for _, c in children[index:] if type(c) is type(child)]
            folded = isinstance(module, nn.ModuleList) and len(same) > 1 and name.isdigit()
            label = f"{name}..{children[index + len(same) - 1][0]}" if folded else name
            indent = "  " * depth
            total = _count(child) * (len(same) if folded else 1)
            lines.append(f"{indent}{prefix}{label}: {type(child).__name__} ({_format_count(total)})")
            if show_params:
                for param_name, param in child.named_parameters(recurse=False):
                    lines.append(
                        f"{indent}    .{param_name} {list(param.shape)} {str(param.dtype).removeprefix('torch.')}"
                    )
            walk(child, f"{prefix}{label}.", depth + 1)
            index += len(same) if folded else 1

    walk(model, "", 1)
    return lines
