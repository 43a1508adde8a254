"""An ICM job's settings, declared once (`workflow_scripts.setting`): an `icm.jobs` entry of the config, the flags of
`distillery icm` and the argv its rule passes all come from these fields.

The search's settings are `ICMSettings` (the reference ICM.py's arguments); the engine's are `EngineSettings`, whose
keys an `icm.jobs` entry lays out flat (`engine`, `tensor_parallel_size`, ...) or under `server:` (`ENGINE_KEYS`).
The paths are the rule's own: it names the data file, the output folder and the state on its command line.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from ..engines.base import EngineSettings
from ..setting import nested, setting
from .algorithm import ICMSettings
from .data import FORMATS

# Where an `icm.jobs` entry keeps each engine setting it has (config/schema/config.schema.yaml).
ENGINE_KEYS = {
    "kind": "engine",
    "tokenizer_path": "tokenizer",
    "dtype": "dtype",
    "tensor_parallel_size": "tensor_parallel_size",
    "max_model_len": "max_model_len",
    "gpu_memory_utilization": "gpu_memory_utilization",
    "enforce_eager": "enforce_eager",
    "trust_remote_code": "trust_remote_code",
    **{
        name: f"server.{name}"
        for name in (
            "base_url",
            "served_model_name",
            "requests_per_minute",
            "self_hosted",
            "max_concurrency",
            "request_timeout_s",
            "max_retries",
        )
    },
}


@dataclass(frozen=True)
class ICMJob:
    """One job: its data, the search, the engine, and how claims are batched and scored."""

    data: Path | None = setting(None, help="the claims (JSON list or JSONL)", config=None)
    data_format: str = setting(
        "generic", help="data format and prompt", flag="--testbed", aliases=("--format",), choices=FORMATS,
        config="data.format",
    )  # fmt: skip
    prompt_template: str | None = setting(
        None, help="prompt of a claim, from its fields, e.g. '{text}\\nI think ...'", config="data.prompt_template"
    )
    output_dir: Path | None = setting(None, help="where labels.jsonl and report.json go", config=None)
    state_path: Path | None = setting(
        None, help="search state for resuming (default: OUTPUT_DIR/.icm-state.json)", flag="--state", config=None
    )
    search: ICMSettings = nested(ICMSettings, config="")
    # The search's --seed is the job's; the engine keeps its own seed at 0.
    engine: EngineSettings = nested(EngineSettings, config="", keys=ENGINE_KEYS, without=("seed",))
    batch_size: int = setting(256, help="claims labeled together", aliases=("--batch_size",))
    top_logprobs: int = setting(20, help="next-token candidates read per prompt")
    score_unlabeled: bool | None = setting(
        None, help="score unlabeled claims in each batch (default: on, off for transformers)"
    )
    api_key_env: str = setting("OPENAI_API_KEY", help="variable holding the API key", config="server.api_key_env")
    command: tuple[str, ...] = ()  # what was run, for the report

    def search_settings(self, engine_kind: str) -> ICMSettings:
        """The search's settings on this engine: without a prefix cache (transformers) every extra prompt is a
        full forward pass, so unlabeled claims are scored on demand unless the job says otherwise."""
        score = engine_kind != "transformers" if self.score_unlabeled is None else self.score_unlabeled
        return replace(self.search, score_unlabeled=score)
