"""hf-bin-sharded: the HF folder as `save_pretrained(safe_serialization=False)` shards it.

`pytorch_model-00001-of-0000N.bin` files (each a `torch.save`d state dict) and `pytorch_model.bin.index.json`,
named and split as transformers does (formats/hf_writer.py); `distillery consolidate` reads it back.
"""

from __future__ import annotations

from pathlib import Path

from ..formats import hf_writer
from ..sizes import parse_size
from .options import LayOutOptions
from .source import HFSource


def write_hf_bin_sharded(source: HFSource, staging: Path, options: LayOutOptions, progress) -> dict:
    files = hf_writer.write_weights(
        staging,
        source.specs,
        lambda spec: source.load(spec.name),
        parse_size(options.max_shard_size),
        "pytorch_bin",
        progress=progress,
    )
    return {"files": [vars(written) for written in files], "max_shard_size": options.max_shard_size}
