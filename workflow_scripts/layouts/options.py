"""The options of `distillery lay-out`, declared once (`setting.py`): its flags, the keys of a config's
`layouts.MODEL` entry and the argv the lay_out rule passes all come from these fields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..choices import ZERO_STAGES
from ..setting import setting


@dataclass
class LayOutOptions:
    input: Path | None = None
    output: Path | None = None
    layout: str = ""  # one of choices.LAYOUTS: the command's --as, the rule's wildcard
    max_shard_size: str = setting("100MB", help="hf-bin-sharded: largest .bin shard")
    zero_stage: int = setting(3, choices=ZERO_STAGES, help="deepspeed-zero: the ZeRO stage whose files to write")
    world_size: int = setting(2, help="deepspeed-zero: the data-parallel ranks the weights are partitioned over")
    force: bool = setting(False, config=None, help="replace an earlier output of distillery")
    command: list[str] = field(default_factory=list)
