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

# Environment variable of the MaxText guide -> the job setting it fills, for the standalone CLI.
GUIDE_ENVIRONMENT = {
    "MODEL_PATH": "model",
    "TOKENIZER_PATH": "tokenizer",
    "DATASET_PATH": "dataset",
    "GCS_BUCKET_PATH": "output_dir",
    "TENSOR_PARALLEL_SIZE": "tensor_parallel_size",
    "GEN_BATCH_SIZE": "gen_batch_size",
    "MAX_TARGET_LENGTH": "max_target_length",
    "TEMPERATURE": "temperature",
    "TOP_P": "top_p",
}


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


def job_from_config(name: str, entry: dict, model_path: str) -> KdJob:
    """A job from its (schema-validated, defaults filled) config entry; `model_path` is the resolved model folder."""
    dataset = entry["dataset"]
    prompt = PromptSettings(
        mode=dataset["prompt_mode"],
        text_column=dataset["text_column"],
        messages_column=dataset["messages_column"],
        id_column=dataset.get("id_column"),
        max_prompt_tokens=entry["max_prompt_tokens"],
    )
    sampling_entry = entry["sampling"]
    sampling = SamplingSettings(
        n=sampling_entry["n"],
        temperature=sampling_entry["temperature"],
        top_p=sampling_entry["top_p"],
        top_k=sampling_entry["top_k"],
        max_tokens=sampling_entry["max_tokens"],
        stop=tuple(sampling_entry["stop"]),
        return_token_ids=entry["return_token_ids"],
    )
    engine_entry = entry["engine"]
    engine = EngineSettings(
        kind=engine_entry["kind"],
        model_path=model_path,
        tokenizer_path=entry.get("tokenizer"),
        dtype=engine_entry["dtype"],
        tensor_parallel_size=engine_entry["tensor_parallel_size"],
        pipeline_parallel_size=engine_entry["pipeline_parallel_size"],
        max_model_len=engine_entry.get("max_model_len"),
        gpu_memory_utilization=engine_entry["gpu_memory_utilization"],
        enable_prefix_caching=engine_entry["enable_prefix_caching"],
        max_num_seqs=engine_entry["gen_batch_size"],
        enforce_eager=engine_entry["enforce_eager"],
        seed=sampling_entry["seed"],
        base_url=engine_entry.get("base_url"),
        api_key=engine_entry.get("api_key"),
        served_model_name=engine_entry.get("served_model_name"),
        max_concurrency=engine_entry["max_concurrency"],
    )
    return KdJob(
        name=name,
        model=model_path,
        dataset=dataset["path"],
        prompt=prompt,
        sampling=sampling,
        engine=engine,
        seed=sampling_entry["seed"],
        chunk_rows=entry["chunk_rows"],
        shuffle_chunks=entry["shuffle_chunks"],
        max_target_length=entry.get("max_target_length"),
        output_format=entry["output_format"],
    )


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
