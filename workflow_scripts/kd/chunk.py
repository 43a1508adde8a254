"""One chunk job: generate completions for rows [start, stop) of one parquet file, resumably.

Finished rows are appended to a side file as the engine returns them; a restarted job reads it back, cuts off a
torn last row and generates only the rows that are missing. The chunk file and its `.stats.json` appear, by
rename, only when every row is generated or skipped. Each row samples with a seed derived from the job seed and
the row's id, so a resumed or re-chunked run draws the same samples.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..atomic import atomic_output_file, atomic_write_text, disk_full_as_error
from ..engines import Engine, GenerationRequest, open_engine, refuse_untrusted_code
from ..engines.base import derive_seed, new_engine_id
from ..errors import DistilleryError
from ..progress import progress_bar
from .chunk_progress import PROGRESS_SECONDS, ChunkProgress
from .local_copies import IN_PLACE, LocalCopies
from .manifest import Chunk, Manifest
from .prompts import Prompt, build_prompt, check_tokenizer
from .records import RESUME_HINT, SideFile, recover, side_file, skip_line, stats_file
from .settings import KdJob, job_from_dict

log = logging.getLogger(__name__)


@dataclass
class RowInput:
    index: int
    row_id: str
    value: object


def row_id(job: KdJob, chunk: Chunk, index: int, id_value) -> str:
    """The id column's value, or a stable id from the file and the row (the same in any chunking)."""
    if job.prompt.id_column and id_value is not None:
        return str(id_value)
    return f"{chunk.part}:{index}"


def read_chunk_rows(job: KdJob, chunk: Chunk, copies: LocalCopies = IN_PLACE) -> list[RowInput]:
    from .sources import read_rows

    columns = [job.prompt.column] + ([job.prompt.id_column] if job.prompt.id_column else [])
    data = read_rows(copies.local_file(job, chunk.file), chunk.start, chunk.stop, columns)
    ids = data[job.prompt.id_column] if job.prompt.id_column else [None] * (chunk.stop - chunk.start)
    return [
        RowInput(chunk.start + offset, row_id(job, chunk, chunk.start + offset, ids[offset]), value)
        for offset, value in enumerate(data[job.prompt.column])
    ]


def load_tokenizer(job: KdJob):
    from transformers import AutoTokenizer

    from ..errors import first_line

    try:
        return AutoTokenizer.from_pretrained(job.engine.tokenizer, trust_remote_code=job.engine.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise DistilleryError(f"cannot load the tokenizer: {first_line(exc)}", job.engine.tokenizer) from None


def engine_max_model_len(engine: Engine, job: KdJob, tokenizer) -> int:
    for candidate in (getattr(engine, "max_model_len", None), job.engine.max_model_len):
        if candidate:
            return int(candidate)
    limit = getattr(tokenizer, "model_max_length", None)
    return int(limit) if limit and limit < 10**8 else 2048


def chunk_output(manifest: Manifest, chunk: Chunk) -> Path:
    return manifest.job_folder / chunk.relative_path


class ChunkRunner:
    """Runs chunks of one manifest with one engine (started on first use, shared by the chunks), or with the
    engine it is given (an engine job's, `engines/remote.py`, whose id and start time it reports).

    `copies`: where this job reads the model and the parquet files, if not at the paths the manifest names; the
    records name the manifest's paths either way.
    """

    def __init__(
        self,
        manifest: Manifest,
        engine: Engine | None = None,
        show_progress: bool = True,
        copies: LocalCopies = IN_PLACE,
        progress_seconds: float = PROGRESS_SECONDS,
    ) -> None:
        self.manifest = manifest
        self.job = job_from_dict(manifest.settings)
        self.copies = copies
        self.reading_job = copies.job_reading_copies(self.job)
        self.engine = engine
        self.engine_id = getattr(engine, "engine_id", None)
        self.engine_start_seconds = float(getattr(engine, "start_seconds", 0.0))
        self.tokenizer = None
        self.show_progress = show_progress
        self.progress_seconds = progress_seconds

    def _ensure_engine(self) -> Engine:
        if self.engine is None:
            started = time.perf_counter()
            self.engine = open_engine(self.reading_job.engine)
            self.engine_start_seconds = time.perf_counter() - started
            self.engine_id = new_engine_id()
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.reading_job)
            check_tokenizer(self.tokenizer, self.job.prompt, self.reading_job.engine.tokenizer)
        return self.engine

    def run(self, chunk: Chunk, output: Path | None = None) -> dict:
        output = Path(output) if output else chunk_output(self.manifest, chunk)
        stats_path = stats_file(output)
        if output.exists() and stats_path.exists():
            return json.loads(stats_path.read_text())
        if self.engine is None:
            # Before the first progress line: a refused model should leave a log holding only the refusal.
            refuse_untrusted_code(self.reading_job.engine)
        output.parent.mkdir(parents=True, exist_ok=True)
        job = self.job
        partial = side_file(output)
        recovered = recover(partial, job.sampling.n)
        writer = SideFile(partial, recovered.complete_bytes)
        progress = self._progress_lines(chunk, recovered)
        try:
            stats = self._generate(chunk, recovered, progress.counting(writer))
        finally:
            progress.stop()
            writer.close()
        return self._finish(chunk, output, partial, stats)

    def _progress_lines(self, chunk: Chunk, recovered) -> ChunkProgress:
        """Progress lines for the log (kd/chunk_progress.py); on a terminal the bar says it instead."""
        tokens = sum(record["completion_tokens"] for lines in recovered.records.values() for record in lines)
        interval = 0 if sys.stderr.isatty() else self.progress_seconds
        total = chunk.stop - chunk.start
        return ChunkProgress(chunk.name, total, len(recovered.done_rows), tokens, interval).start()

    def _generate(self, chunk: Chunk, recovered, writer: SideFile) -> dict:
        job = self.job
        rows = read_chunk_rows(job, chunk, self.copies)
        todo = [row for row in rows if row.index not in recovered.done_rows]
        if recovered.done_rows:
            log.info("chunk %s: resuming, %d of %d rows already done", chunk.name, len(recovered.done_rows), len(rows))
        engine = self._ensure_engine()
        max_model_len = engine_max_model_len(engine, job, self.tokenizer)
        prompts: dict[str, tuple[RowInput, Prompt]] = {}
        requests = []
        for row in todo:
            prompt = build_prompt(self.tokenizer, job.prompt, row.value, max_model_len)
            if not isinstance(prompt, Prompt):
                writer.append([skip_line(row.index, row.row_id, prompt.reason, prompt.detail)])
                continue
            budget = None
            if job.max_target_length:
                budget = job.max_target_length - len(prompt.token_ids)
                if budget <= 0:
                    writer.append(
                        [skip_line(row.index, row.row_id, "prompt_too_long", "no room below max_target_length")]
                    )
                    continue
            request_id = str(row.index)
            prompts[request_id] = (row, prompt)
            requests.append(GenerationRequest(request_id, prompt.token_ids, derive_seed(job.seed, row.row_id), budget))

        started, wall_started = time.perf_counter(), time.time()
        bar = progress_bar(total=len(requests), desc=chunk.name, unit="row", disable=not self.show_progress or None)
        for result in engine.generate(requests, job.sampling):
            row, prompt = prompts.pop(result.request_id)
            writer.append(self._records(chunk, row, prompt, result.completions))
            bar.update(1)
        bar.close()
        if prompts:
            raise DistilleryError(f"the engine returned no result for {len(prompts)} rows of chunk {chunk.name}")
        return {
            "generate_seconds": time.perf_counter() - started,
            # Wall-clock span: chunks sharing an engine run at once, so summary.json takes the union of spans.
            "generated_from": round(wall_started, 3),
            "generated_until": round(time.time(), 3),
            "resumed_rows": len(recovered.done_rows),
        }

    def _records(self, chunk: Chunk, row: RowInput, prompt: Prompt, completions) -> list[dict]:
        job = self.job
        records = []
        for sample_index, completion in enumerate(completions):
            record = {
                "id": row.row_id,
                "source_file": chunk.file,
                "row_index": row.index,
                "sample_index": sample_index,
                "prompt": prompt.text,
                "completion": completion.text,
                "prompt_tokens": len(prompt.token_ids),
                "completion_tokens": len(completion.token_ids),
                "finish_reason": completion.finish_reason,
                "model": job.model,
                "settings_hash": self.manifest.settings_hash,
            }
            if job.sampling.return_token_ids:
                record["prompt_token_ids"] = prompt.token_ids
                record["completion_token_ids"] = completion.token_ids
            records.append(record)
        return records

    def _finish(self, chunk: Chunk, output: Path, partial: Path, run_stats: dict) -> dict:
        recovered = recover(partial, self.job.sampling.n)
        expected = set(range(chunk.start, chunk.stop))
        if recovered.done_rows != expected:
            missing = sorted(expected - recovered.done_rows)[:5]
            raise DistilleryError(f"chunk {chunk.name} is missing rows {missing} after generation", partial)
        records = [line for row in sorted(recovered.records) for line in recovered.records[row]]
        stats = {
            "chunk": chunk.name,
            "file": chunk.file,
            "start": chunk.start,
            "stop": chunk.stop,
            "rows": chunk.stop - chunk.start,
            "generated_rows": len(recovered.records),
            "samples": len(records),
            "skipped": [recovered.skipped[row] for row in sorted(recovered.skipped)],
            "prompt_tokens": sum(r["prompt_tokens"] for r in records),
            "completion_tokens": sum(r["completion_tokens"] for r in records),
            "engine": self.job.engine.kind if self.engine is None else self.engine.kind,
            "versions": self.engine.versions() if self.engine is not None else {},
            # Every chunk names its engine and that engine's start: summary.json counts each engine once.
            "engine_id": self.engine_id,
            "engine_start_seconds": round(self.engine_start_seconds, 3),
            "engine_wait_seconds": round(float(getattr(self.engine, "wait_seconds", 0.0)), 3),
            "settings_hash": self.manifest.settings_hash,
            **{key: round(value, 3) if isinstance(value, float) else value for key, value in run_stats.items()},
        }
        # The stats first: the chunk file is what says the chunk is done.
        with disk_full_as_error(stats_file(output), RESUME_HINT):
            atomic_write_text(stats_file(output), json.dumps(stats, indent=1) + "\n")
        with disk_full_as_error(output, RESUME_HINT), atomic_output_file(output) as staging:
            staging.write(b"".join(json.dumps(record, ensure_ascii=False).encode() + b"\n" for record in records))
        partial.unlink()
        return stats

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()
