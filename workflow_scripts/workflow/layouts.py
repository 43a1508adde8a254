"""The training checkpoints a config asks the workflow to lay out (`layouts:`), and which models read them back.

`layouts.MODEL.make` lists layouts of the model's HF folder ({results}/models/MODEL/hf), each written by the
lay_out rule to {work}/layouts/MODEL/LAYOUT (`distillery lay-out`). A model of `models:` whose source path is
such a folder is converted back by its format's rule, and its verification compares it with the reference the
config names (the HF folder the layout came from). DeepSpeed and MaxText layouts are for the users of those
libraries: they are made only where the packages in `NEEDS` are importable, and a model reading a layout that is
not made is left out of the run, so one config serves machines with and without them.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import DistilleryError
from ..layouts.options import LayOutOptions
from ..setting import from_config, to_argv
from .model_targets import ModelTarget

# The packages whose users bring each layout (a layout not listed needs only what the workflow always has).
NEEDS: dict[str, tuple[str, ...]] = {"deepspeed-zero": ("deepspeed",), "maxtext": ("jax", "tensorstore")}


def layout_path(work: str, model: str, layout: str) -> str:
    return f"{work}/layouts/{model}/{layout}"


@dataclass(frozen=True)
class LayoutTarget:
    model: str
    layout: str
    path: str
    missing: tuple[str, ...]  # packages NEEDS names that are not importable here: the layout is not made


def _importable(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


class LayoutPlan:
    """What the `layouts:` section asks for, split into the layouts made here and those skipped."""

    def __init__(self, entries: dict[str, dict], targets: list[LayoutTarget]) -> None:
        self.entries = entries
        self.targets = targets

    @classmethod
    def from_config(cls, config: dict, importable: Callable[[str], bool] = _importable) -> LayoutPlan:
        entries = config.get("layouts") or {}
        unknown = sorted(set(entries) - set(config.get("models") or {}))
        if unknown:
            raise DistilleryError(
                f"layouts names {', '.join(map(repr, unknown))}, which models: does not have",
                hint="a layout is made of a model's HF folder: add the model or remove its layouts entry",
            )
        targets = []
        for model, entry in entries.items():
            for layout in entry["make"]:
                missing = tuple(package for package in NEEDS.get(layout, ()) if not importable(package))
                targets.append(LayoutTarget(model, layout, layout_path(config["work"], model, layout), missing))
        return cls(entries, targets)

    @property
    def made(self) -> list[LayoutTarget]:
        return [target for target in self.targets if not target.missing]

    @property
    def skipped(self) -> list[LayoutTarget]:
        return [target for target in self.targets if target.missing]

    def outputs(self) -> list[str]:
        return [target.path for target in self.made]

    def built_sources(self) -> set[str]:
        """Every layout folder the config names, made or not: sources the workflow writes itself."""
        return {target.path for target in self.targets}

    def readable_models(self, models: dict[str, ModelTarget]) -> dict[str, ModelTarget]:
        """The models, without those whose source is a layout that is not made here."""
        skipped = {target.path for target in self.skipped}
        return {name: target for name, target in models.items() if target.source.rstrip("/") not in skipped}

    def messages(self) -> list[str]:
        """A line per skipped layout, for the log of every run."""
        return [
            f"layout {target.layout} of {target.model} is not made: {', '.join(target.missing)} not installed"
            for target in self.skipped
        ]

    def options(self, model: str) -> LayOutOptions:
        return from_config(LayOutOptions, self.entries[model])

    def flags(self, model: str) -> str:
        return shlex.join(to_argv(self.options(model)))

    def model_constraint(self) -> str:
        """A wildcard constraint matching the models with a layout made here (never empty, so it stays valid)."""
        names = sorted({re.escape(target.model) for target in self.made})
        return "|".join(names) if names else "(?!)"

    def layout_constraint(self) -> str:
        names = sorted({re.escape(target.layout) for target in self.made})
        return "|".join(names) if names else "(?!)"
