"""One ICM job end to end: data, engine, search, then `labels.jsonl` and `report.json` (DESIGN.md, "Artifacts").

labels.jsonl: one line per claim of the batch, in batch order: {"uid", "row" (line in the input file, from 0),
"consistency_id", "consistency_key", "label" (1 true, 0 false, null if never labeled), "score" (the model's
log-odds of "True" given the other labels), "gold" (where the data has it), "zero_shot_margin" (the same
log-odds with no demonstrations), "prompt"}.
report.json: accuracy against gold labels, the zero-shot answers' accuracy and agreement (`zero_shot.py`),
label balance, iterations, proposals and acceptance rate, the objective U after each iteration, consistency
violations left, seconds / tokens / engine calls per iteration, the prefix-cache hit rate (from vLLM's metrics
where the engine exposes them), the settings and versions.
"""

from __future__ import annotations

import json
import logging
import statistics
import sys
from dataclasses import asdict, replace
from pathlib import Path

from .. import __version__
from ..atomic import atomic_write_text
from ..engines import EngineSettings, open_engine, resolve_engine_kind
from ..errors import DistilleryError
from ..output_guard import check_apart_from_inputs
from ..provenance import package_versions
from .algorithm import ICMSearch, ICMSettings, SearchState
from .data import Example, load_dataset, select_batch
from .job import ICMJob
from .prompts import PromptBuilder
from .scoring import EngineScorer
from .zero_shot import zero_shot_margins, zero_shot_summary

log = logging.getLogger(__name__)


def engine_tokenizer(engine, settings: EngineSettings):
    """The tokenizer prompts are built with: the engine's own, or for a server, the model's tokenizer here."""
    if getattr(engine, "tokenizer", None) is not None:
        return engine.tokenizer
    if getattr(engine, "llm", None) is not None:
        return engine.llm.get_tokenizer()
    tokenizer = settings.tokenizer
    if not tokenizer or not Path(tokenizer).is_dir():
        raise DistilleryError(
            "engine 'openai' sends token ids and needs the served model's tokenizer here",
            tokenizer or None,
            "set the job's tokenizer (or model) to a local folder with the tokenizer files",
        )
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer, trust_remote_code=settings.trust_remote_code)


def cache_counters(engine) -> dict[str, float] | None:
    reader = getattr(engine, "prefix_cache_counters", None)
    return reader() if reader else None


def hit_rate(before: dict | None, after: dict | None) -> dict:
    if not before or not after:
        return {"hit_rate": None, "note": "the engine exposes no prefix-cache metrics (transformers, external API)"}
    queries = after["queries"] - before["queries"]
    hits = after["hits"] - before["hits"]
    return {"hit_rate": round(hits / queries, 4) if queries else None, "hit_tokens": hits, "query_tokens": queries}


def label_rows(batch: list[Example], state: SearchState, zero_shot: dict[int, float]) -> list[dict]:
    scores = state.current.scores if state.current else {}
    return [
        {
            "uid": example.uid,
            "row": example.row,
            "consistency_id": example.group,
            "consistency_key": example.consistency_key,
            "label": state.labels[example.uid],
            "score": scores.get(example.uid),
            "gold": example.gold,
            "zero_shot_margin": zero_shot[example.uid],
            "prompt": example.prompt,
        }
        for example in batch
    ]


def summarize(batch: list[Example], state: SearchState, settings: ICMSettings) -> dict:
    labels = state.labels
    with_gold = [e for e in batch if e.gold is not None and labels[e.uid] is not None]
    history = state.history
    seconds = [item.seconds for item in history]
    mean = lambda values: statistics.fmean(values) if history else 0.0  # noqa: E731
    proposals = sum(item.proposed for item in history)
    accepted = sum(item.accepted for item in history)
    return {
        "examples": len(batch),
        "iterations": len(history),
        "proposals": proposals,
        "accepted": accepted,
        "acceptance_rate": round(accepted / proposals, 4) if proposals else None,
        "label_balance": {
            "true": sum(label == 1 for label in labels),
            "false": sum(label == 0 for label in labels),
            "unlabeled": sum(label is None for label in labels),
        },
        "accuracy": round(sum(labels[e.uid] == e.gold for e in with_gold) / len(with_gold), 4) if with_gold else None,
        "gold_labels_compared": len(with_gold),
        "consistency_violations_left": state.current.inconsistent if state.current else None,
        "score_U": state.current.energy if state.current else None,
        "objective_by_iteration": [item.objective for item in history],
        "mutual_predictability": state.current.predictability if state.current else None,
        "seconds_per_iteration": {
            "mean": round(statistics.fmean(seconds), 4) if seconds else None,
            "median": round(statistics.median(seconds), 4) if seconds else None,
            "total": round(sum(seconds), 2),
        },
        "prompt_tokens_per_iteration": round(mean([i.prompt_tokens for i in history]), 1),
        "engine_calls_per_iteration": round(mean([i.engine_calls for i in history]), 3),
        "engine_calls_per_proposal": round(sum(i.engine_calls for i in history[1:]) / max(1, proposals), 3),
    }


def run_icm_job(job: ICMJob, progress: bool = True) -> dict:
    dataset = load_dataset(job.data, job.data_format, job.prompt_template)
    batch = select_batch(dataset, job.batch_size, job.search.seed)
    kind = resolve_engine_kind(job.engine.kind)
    settings = job.search_settings(kind)
    model = job.engine.model_path if kind != "openai" else None
    for output in (job.output_dir, job.state_path):
        check_apart_from_inputs(output, [job.data, model, job.engine.tokenizer_path])
    engine_settings = replace(job.engine, kind=kind)
    if kind == "vllm":  # vLLM keeps its prefix-cache counters only with stats on
        engine_settings = replace(engine_settings, extra={"disable_log_stats": False, **engine_settings.extra})
    if kind != "openai" and not Path(engine_settings.model_path).is_dir():
        # Never let transformers or vLLM read a name as a hub model to download.
        raise DistilleryError("is not a model folder", engine_settings.model_path or "(no --model)",
                              "pass the folder of a Hugging Face model")  # fmt: skip
    engine = open_engine(engine_settings)
    try:
        builder = PromptBuilder(engine_tokenizer(engine, engine_settings), batch)
        scorer = EngineScorer(engine, builder, job.top_logprobs)
        search = ICMSearch(batch, scorer, settings, job.state_path)
        before = cache_counters(engine)
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=settings.iterations, initial=search.state.iteration, desc="ICM", file=sys.stderr)
        state = search.run(progress=(lambda _stats: bar.update(1)) if bar else None)
        if bar:
            bar.close()
        after = cache_counters(engine)
        # Scored apart from the search, so that its calls and tokens stay out of the per-iteration figures.
        zero_shot = zero_shot_margins(EngineScorer(engine, builder, job.top_logprobs), batch)
        versions = {**package_versions(), **{f"engine:{k}": v for k, v in engine.versions().items()}}
    finally:
        engine.close()

    report = {
        "tool": "distillery",
        "tool_version": __version__,
        "command": list(job.command),
        "data": {"path": str(job.data), "format": job.data_format, "rows": len(dataset.examples)},
        "model": engine_settings.model_path or engine_settings.served_model_name,
        "engine": kind,
        "batch_size": job.batch_size,
        "resumed_from_iteration": search.resumed_from,
        **summarize(batch, state, settings),
        "zero_shot": zero_shot_summary(batch, state.labels, zero_shot),
        "prefix_cache": {**hit_rate(before, after), "scope": "this run (a resumed run counts only its own part)"},
        "this_run": {
            "engine_calls": scorer.calls,
            "prompt_tokens": scorer.prompt_tokens,
        },
        "settings": {**asdict(settings), "top_logprobs": job.top_logprobs},
        "consistency_keys_from_gold": dataset.keys_from_gold,
        "versions": versions,
    }
    if dataset.keys_from_gold:
        report["note"] = (
            "consistency keys were derived from the data's gold labels, as the reference does for this testbed: "
            "the search knows which claims agree, so accuracy is not that of a gold-free run"
        )
    rows = label_rows(batch, state, zero_shot)
    job.output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(job.output_dir / "labels.jsonl", "".join(json.dumps(row) + "\n" for row in rows))
    atomic_write_text(job.output_dir / "report.json", json.dumps(report, indent=2) + "\n")
    return report
