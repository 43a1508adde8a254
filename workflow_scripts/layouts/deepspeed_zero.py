"""deepspeed-zero: the HF folder as HF Trainer + DeepSpeed save a ZeRO training checkpoint (`checkpoint-N/`).

The folder holds `latest` (naming the tag `global_step0`), the tag folder with the ranks' files
(formats/deepspeed_writer.py: fp32 master weights partitioned as ZeRO stage 2 or 3 over `world_size` ranks), and
config.json and tokenizer beside them as HF Trainer saves them. No HF weights are written beside the ZeRO files,
so `distillery consolidate` (and DeepSpeed's zero_to_fp32) must rebuild the model from the partitions.
"""

from __future__ import annotations

from pathlib import Path

from ..formats.deepspeed_writer import write_zero_checkpoint
from .options import LayOutOptions
from .source import HFSource

TAG = "global_step0"  # an untrained layout: step 0


def write_deepspeed_zero(source: HFSource, staging: Path, options: LayOutOptions, progress) -> dict:
    files = write_zero_checkpoint(
        staging / TAG,
        source.specs,
        lambda spec: source.load(spec.name),
        options.zero_stage,
        options.world_size,
        shared=source.tied,
        progress=progress,
    )
    (staging / "latest").write_text(TAG)
    return {
        "zero_stage": options.zero_stage,
        "world_size": options.world_size,
        "tag": TAG,
        "shared_params": source.tied,
        "files": [str(path.relative_to(staging)) for path in files],
    }
