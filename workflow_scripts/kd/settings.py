"""A KD job's settings, declared once (`workflow_scripts.setting`): the `kd:` entries of the config, the flags of
the KD commands, the manifest's JSON and the settings hash all come from these fields.

The environment variables are those of the MaxText guide's `run_sequence_kd.sh` (MODEL_PATH, TOKENIZER_PATH,
DATASET_PATH, TENSOR_PARALLEL_SIZE, GEN_BATCH_SIZE, MAX_TARGET_LENGTH, TEMPERATURE, TOP_P; GCS_BUCKET_PATH is
the standalone command's output folder); only `distillery generate` reads them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from ..engines.base import EngineSettings, SamplingSettings
from ..setting import from_dict, nested, setting, to_dict

PROMPT_MODES = ("prefix", "prompt", "chat")
OUTPUT_FORMATS = ("jsonl", "parquet")


@dataclass(frozen=True)
class PromptSettings:
    """How a dataset row becomes a prompt; config keys relative to the KD job's entry."""

    mode: str = setting(
        "prefix", help="how rows become prompts", flag="--prompt-mode", choices=PROMPT_MODES,
        config="dataset.prompt_mode",
    )  # fmt: skip
    text_column: str = setting("text", help="column with the text (prefix, prompt modes)", config="dataset.text_column")
    messages_column: str = setting(
        "messages", help="column with the chat messages (chat mode)", config="dataset.messages_column"
    )
    id_column: str | None = setting(
        None, help="column with row ids (default: file and row index)", config="dataset.id_column"
    )
    max_prompt_tokens: int = setting(
        128, help="prefix length (prefix mode); other modes skip longer prompts (0: no limit)"
    )

    @property
    def column(self) -> str:
        return self.messages_column if self.mode == "chat" else self.text_column


@dataclass(frozen=True)
class KdJob:
    name: str = setting("kd", help="name of the job", flag="--job-name", config=None)
    # the HF model folder (or a path the engine understands, or the served name); the same flag as engine.model_path
    model: str = setting("", help="HF model folder", flag="--model-path", env="MODEL_PATH", config=None)
    dataset: str = setting("", help="parquet file, folder, glob or URL", env="DATASET_PATH", config="dataset.path")
    prompt: PromptSettings = nested(PromptSettings, config="")
    sampling: SamplingSettings = nested(SamplingSettings, config="sampling")
    engine: EngineSettings = nested(EngineSettings, config="engine")
    seed: int = setting(0, help="job seed; each row samples with a seed derived from it", config="sampling.seed")
    chunk_rows: int = setting(1000, help="rows per chunk")
    shuffle_chunks: bool = setting(False, help="seeded chunk order, for several hosts")
    max_target_length: int | None = setting(
        None, help="prompt + completion cap (MaxText's max_target_length)", env="MAX_TARGET_LENGTH"
    )
    output_format: str = setting("jsonl", help="dataset file format", choices=OUTPUT_FORMATS)

    def settings_hash(self) -> str:
        """What decides the generated text: a different hash means a different dataset."""
        decisive = {
            "model": self.model,
            "prompt": to_dict(self.prompt),
            "sampling": self.sampling.as_dict(),
            "seed": self.seed,
            "max_target_length": self.max_target_length,
        }
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]


def job_to_dict(job: KdJob) -> dict:
    """The job as plain data for the manifest; secrets stay out (the API key is read from the environment)."""
    return to_dict(job)


def teacher_record(job: KdJob) -> dict:
    """What `kd-teacher` writes to teacher.json: every chunk is redone when it changes."""
    return {"job": job.name, "model": job.model, "settings_hash": job.settings_hash(), "settings": job_to_dict(job)}


def job_from_dict(data: dict) -> KdJob:
    engine = {key: value for key, value in data.get("engine", {}).items() if key != "api_key"}  # older manifests
    return from_dict(KdJob, {**data, "engine": engine})
