"""A KD job's settings: the `kd:` entries of the config, or the standalone CLI's flags and environment variables.

The environment variables are those of the MaxText guide's `run_sequence_kd.sh` (MODEL_PATH, TOKENIZER_PATH,
DATASET_PATH, GCS_BUCKET_PATH, TENSOR_PARALLEL_SIZE, GEN_BATCH_SIZE, MAX_TARGET_LENGTH, TEMPERATURE, TOP_P).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ..engines.base import EngineSettings, SamplingSettings

PROMPT_MODES = ("prefix", "prompt", "chat")
OUTPUT_FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class GuideVariable:
    """An environment variable of the MaxText guide: it fills the flag `dest` of the standalone CLI when the flag
    is not given. It is read only by the commands that have the flag, when they run (a bad value must not break
    `--help` or other commands)."""

    name: str
    dest: str
    default: object = None
    kind: type = str


GUIDE_ENVIRONMENT = (
    GuideVariable("MODEL_PATH", "model_path"),
    GuideVariable("TOKENIZER_PATH", "tokenizer_path"),
    GuideVariable("DATASET_PATH", "dataset"),
    GuideVariable("GCS_BUCKET_PATH", "output_dir"),
    GuideVariable("TENSOR_PARALLEL_SIZE", "tensor_parallel_size", 1, int),
    GuideVariable("GEN_BATCH_SIZE", "gen_batch_size", 256, int),
    GuideVariable("MAX_TARGET_LENGTH", "max_target_length", None, int),
    GuideVariable("TEMPERATURE", "temperature", 0.8, float),
    GuideVariable("TOP_P", "top_p", 0.95, float),
)


@dataclass(frozen=True)
class PromptSettings:
    mode: str = "prefix"
    text_column: str = "text"
    messages_column: str = "messages"
    id_column: str | None = None
    max_prompt_tokens: int = 128  # prefix mode: the cut; other modes: rows above it are skipped (0: no limit)

    @property
    def column(self) -> str:
        return self.messages_column if self.mode == "chat" else self.text_column


@dataclass(frozen=True)
class KdJob:
    name: str
    model: str  # the HF model folder (or a path the engine understands, or the served name)
    dataset: str  # a glob or URL of parquet files
    prompt: PromptSettings = field(default_factory=PromptSettings)
    sampling: SamplingSettings = field(default_factory=SamplingSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    seed: int = 0
    chunk_rows: int = 1000
    shuffle_chunks: bool = False
    max_target_length: int | None = None  # prompt + completion, as MaxText's max_target_length
    output_format: str = "jsonl"

    def settings_hash(self) -> str:
        """What decides the generated text: a different hash means a different dataset."""
        decisive = {
            "model": self.model,
            "prompt": asdict(self.prompt),
            "sampling": self.sampling.as_dict(),
            "seed": self.seed,
            "max_target_length": self.max_target_length,
        }
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def job_to_dict(job: KdJob) -> dict:
    """The job as plain data for the manifest; secrets stay out (the API key is read from the environment)."""
    data = asdict(job)
    data["engine"]["api_key"] = None
    data["sampling"]["stop"] = list(job.sampling.stop)
    return data


def job_from_dict(data: dict) -> KdJob:
    sampling = dict(data["sampling"])
    sampling["stop"] = tuple(sampling["stop"])
    return KdJob(
        **{key: value for key, value in data.items() if key not in ("prompt", "sampling", "engine")},
        prompt=PromptSettings(**data["prompt"]),
        sampling=SamplingSettings(**sampling),
        engine=EngineSettings(**data["engine"]),
    )
