"""`distillery lay-out`: write an HF model folder as one training checkpoint format, staged, with provenance.

Every layout goes the same way: refuse a bad request before reading anything (an unknown layout, an output that
is or lies inside the input, an existing output without --force), read the HF folder's structure, refuse what
the format cannot hold, write the weights tensor by tensor into a staging folder beside the output, copy the
folder's other files (config.json, tokenizer, ...), write provenance.json and rename the folder into place.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..atomic import atomic_output_dir
from ..choices import LAYOUTS, ZERO_STAGES
from ..errors import DistilleryError
from ..output_guard import check_output
from ..progress import progress_bar
from ..provenance import write_provenance
from ..sizes import format_size, parse_size
from .deepspeed_zero import write_deepspeed_zero
from .hf_bin import write_hf_bin_sharded
from .maxtext import maxtext_math, write_maxtext
from .options import LayOutOptions
from .source import HFSource, open_source
from .titan import check_titan, write_titan_dcp

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Layout:
    name: str
    write: Callable  # (source, staging, options, progress) -> provenance details
    check: Callable[[HFSource], object] = lambda source: None  # refuses a model the format cannot hold
    reads_back: str = ""  # the command that converts it back, for the summary line


WRITERS = {
    "hf-bin-sharded": Layout("hf-bin-sharded", write_hf_bin_sharded, reads_back="distillery consolidate"),
    "titan-dcp": Layout("titan-dcp", write_titan_dcp, check_titan, "distillery titan-to-hf"),
    "deepspeed-zero": Layout("deepspeed-zero", write_deepspeed_zero, reads_back="distillery consolidate"),
    "maxtext": Layout("maxtext", write_maxtext, maxtext_math, "distillery maxtext-to-hf"),
}


@dataclass
class LayOutResult:
    output: Path
    layout: Layout
    num_tensors: int
    total_bytes: int


def check_options(options: LayOutOptions) -> None:
    if options.layout not in WRITERS:
        raise DistilleryError(f"unknown layout {options.layout!r}", hint=f"choose from {', '.join(LAYOUTS)}")
    if options.zero_stage not in ZERO_STAGES:
        raise DistilleryError(f"unknown ZeRO stage {options.zero_stage}", hint="choose 2 or 3")
    if options.world_size < 1:
        raise DistilleryError(f"--world-size {options.world_size} is not a number of ranks", hint="pass 1 or more")
    parse_size(options.max_shard_size)
    check_output(options.output, [options.input], options.force)


def lay_out(options: LayOutOptions) -> LayOutResult:
    check_options(options)
    layout = WRITERS[options.layout]
    source = open_source(options.input)
    layout.check(source)
    log.info("%s: %d tensors (%s) as %s", options.input, len(source.specs), format_size(source.total_bytes),
             layout.name)  # fmt: skip
    with (
        atomic_output_dir(options.output, options.force, [options.input]) as staging,
        progress_bar(total=source.total_bytes, unit="B", unit_scale=True, desc=f"lay-out {layout.name}") as bar,
    ):
        details = layout.write(source, staging, options, lambda spec: bar.update(spec.nbytes))
        model_files = source.model_files()
        for path in model_files:
            shutil.copy2(path, staging / path.name)
        write_provenance(
            staging,
            source={
                "path": str(source.folder.resolve()),
                "type": "hf",
                "layout": source.checkpoint.layout,
                "architecture": (getattr(source.config, "architectures", None) or [source.model_type])[0],
                "tensors": len(source.specs),
                "tied": source.tied,
            },
            layout={"name": layout.name, **details, "model_files": [path.name for path in model_files]},
            command=options.command,
            tool_version=__version__,
        )
    return LayOutResult(options.output, layout, len(source.specs), source.total_bytes)
