"""`distillery maxtext-param-only`: a MaxText full training state in, a param-only (decode) checkpoint out.

What MaxText's `generate_param_only_checkpoint` does (`load_full_state_path=.../N/items`,
`checkpoint_dir=OUT`): the parameters, cast to bfloat16, saved as step 0, so `OUT/0/items` is what
`load_parameters_path` (and `distillery maxtext-to-hf --orbax-checkpoint`) takes. Unlike it, no model is built
and the optimizer state is never restored: each parameter array is copied from the source's database to the new
one chunk by chunk (formats/maxtext.py), so memory stays near one chunk whatever the model's size.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from .. import __version__
from ..atomic import atomic_output_dir
from ..errors import DistilleryError
from ..formats.maxtext import FULL_STATE, MaxTextCheckpoint, is_remote, write_param_only
from ..output_guard import check_output
from ..progress import progress_bar
from ..provenance import write_provenance

log = logging.getLogger(__name__)
PARAM_ONLY_DTYPES = ("bfloat16", "float32", "original")


@dataclass
class ParamOnlyOptions:
    load_full_state_path: str
    checkpoint_dir: Path
    dtype: str = "bfloat16"
    force: bool = False
    command: list[str] = field(default_factory=list)


@dataclass
class ParamOnlyResult:
    items: Path
    num_params: int
    source_items: str


def make_param_only_checkpoint(options: ParamOnlyOptions) -> ParamOnlyResult:
    if options.dtype not in PARAM_ONLY_DTYPES:
        raise DistilleryError(f"unknown --dtype {options.dtype!r}", hint=f"choose from {', '.join(PARAM_ONLY_DTYPES)}")
    if is_remote(options.checkpoint_dir):
        raise DistilleryError(
            "is remote: the param-only checkpoint is written to a local folder",
            options.checkpoint_dir,
            "write it locally, then copy it (gcloud storage cp -r)",
        )
    output = Path(options.checkpoint_dir)
    check_output(output, [options.load_full_state_path], options.force)
    source = MaxTextCheckpoint(options.load_full_state_path)
    source.require(FULL_STATE)
    step = int(source.tree.read(source.step_keys)) if source.step_keys else None
    log.info("%s: %d parameter arrays of step %s", source.items, len(source.params), step)
    with (
        atomic_output_dir(output, options.force, [options.load_full_state_path]) as staging,
        progress_bar(total=len(source.params), unit="array", desc="maxtext-param-only") as bar,
    ):
        dtype = None if options.dtype == "original" else options.dtype
        written = write_param_only(source, staging / "0", dtype, progress=lambda _: bar.update(1))
        write_provenance(
            staging,
            source={
                "path": options.load_full_state_path,
                "type": "maxtext",
                "items": source.items,
                "kind": source.kind,
                "layout": source.layout,
                "step": step,
                "stored_bytes": source.stored_bytes(),
            },  # fmt: skip
            conversion={"dtype": options.dtype, "parameters": [param.name for param in written]},
            command=options.command,
            tool_version=__version__,
        )
    return ParamOnlyResult(output / "0" / "items", len(written), source.items)
