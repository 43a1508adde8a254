"""The models a config asks for, one entry per output model folder.

A MaxText source is one model; whether its checkpoint is a full training state (made param-only first) or
already param-only is read from its Orbax metadata when the workflow is planned.

A DeepSpeed source with `step: all` (or a list of steps) becomes one model per checkpoint, named
`{name}_step_{N}` like batch-consolidate's default template; `step: latest` (the default) becomes one model named
`{name}` built from the newest `checkpoint-N` by step number. Steps are found by listing the run folder when the
workflow is planned, so a new checkpoint adds exactly one job.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from ..errors import DistilleryError
from ..formats.deepspeed_steps import list_step_folders, step_of


@dataclass(frozen=True)
class ModelTarget:
    name: str
    format: str  # hf | deepspeed | maxtext | titan
    source: (
        str  # what a conversion job reads: an HF model, one DeepSpeed checkpoint-N, a MaxText or TorchTitan checkpoint
    )
    settings: dict  # the model's config entry (dtype, max_shard_size, ...)
    step: int | None = None
    full_state: bool = False  # MaxText: a training state that needs maxtext_param_only first


def _step_folders(run: Path) -> dict[int, Path]:
    return {step_of(folder): folder for folder in list_step_folders(run)}


def model_targets(models: dict[str, dict], built: Collection[str] = ()) -> dict[str, ModelTarget]:
    """`built`: source folders the workflow writes itself (workflow/layouts.py), so not there to be read yet; its
    MaxText ones are param-only."""
    plans: dict[str, ModelTarget] = {}
    for name, settings in models.items():
        source = settings["source"]
        if source["format"] == "maxtext" and source["path"].rstrip("/") in built:
            plans[name] = ModelTarget(name, "maxtext", source["path"], settings)
            continue
        if source["format"] == "maxtext":
            from ..formats.maxtext import FULL_STATE, checkpoint_kind

            full_state = checkpoint_kind(source["path"]) == FULL_STATE
            plans[name] = ModelTarget(name, "maxtext", source["path"], settings, full_state=full_state)
            continue
        if source["format"] != "deepspeed":
            plans[name] = ModelTarget(name, source["format"], source["path"], settings)
            continue
        run = Path(source["path"])
        steps = _step_folders(run)
        wanted = source.get("step", "latest")
        if not steps:
            # A single checkpoint folder (with `latest`) rather than a run: consolidate resolves it.
            plans[name] = ModelTarget(name, "deepspeed", str(run), settings)
            continue
        if wanted == "latest":
            step = max(steps)
            plans[name] = ModelTarget(name, "deepspeed", str(steps[step]), settings, step)
            continue
        chosen = (
            sorted(steps) if wanted == "all" else [int(s) for s in ([wanted] if isinstance(wanted, int) else wanted)]
        )
        missing = [s for s in chosen if s not in steps]
        if missing:
            raise DistilleryError(
                f"model {name!r} asks for step(s) {missing}, which the run does not have",
                run,
                f"available: {sorted(steps)}",
            )
        for step in chosen:
            plans[f"{name}_step_{step}"] = ModelTarget(
                f"{name}_step_{step}", "deepspeed", str(steps[step]), settings, step
            )
    return plans
