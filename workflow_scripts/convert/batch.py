"""`distillery batch-consolidate`: many runs or checkpoints, one consolidated model each.

Inputs come from one folder, a glob, or a file listing folders; from each, the latest checkpoint or (with
`--all-checkpoints` or `--checkpoint-filter`) every matching `checkpoint-N`. Output names follow a template over
`{input_name}` (the input folder's name), `{run_name}` (its parent's name) and `{step}`. Jobs run in separate
processes; one failure stops the batch unless `--continue-on-error`, and the summary names every failure.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import re
import string
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import DistilleryError
from ..formats import deepspeed
from ..output_guard import check_apart_from_inputs
from .consolidate import ConsolidateOptions, consolidate

log = logging.getLogger(__name__)

DEFAULT_TEMPLATE = "{input_name}_step_{step}"
_TEMPLATE_FIELDS = {"input_name", "run_name", "step"}


@dataclass(frozen=True)
class BatchItem:
    input: Path  # the run or model folder the user named
    checkpoint: Path | None  # a checkpoint-N folder to use, or None for what consolidate picks itself
    step: str
    output: Path


def expand_braces(pattern: str) -> list[str]:
    """`checkpoint-{100,200}` -> [`checkpoint-100`, `checkpoint-200`], as a shell would (nesting allowed)."""
    match = re.search(r"\{([^{}]*)\}", pattern)
    if not match:
        return [pattern]
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [expanded for option in match.group(1).split(",") for expanded in expand_braces(head + option + tail)]


def collect_inputs(input_dir: Path | None, input_pattern: str | None, input_list: Path | None) -> list[Path]:
    if input_dir is not None:
        candidates = [input_dir]
    elif input_pattern is not None:
        candidates = sorted(Path(p) for p in glob.glob(input_pattern))
        if not candidates:
            raise DistilleryError(f"--input-pattern {input_pattern!r} matches no folder", hint="check the glob")
    else:
        if not input_list.is_file():
            raise DistilleryError("does not exist", input_list, "check --input-list")
        lines = [line.strip() for line in input_list.read_text().splitlines()]
        candidates = [Path(line) for line in lines if line and not line.startswith("#")]
        if not candidates:
            raise DistilleryError("lists no folder", input_list, "write one folder per line")
    for candidate in candidates:
        if not candidate.is_dir():
            raise DistilleryError("is not a folder", candidate, "check the batch's inputs")
    return candidates


def check_template(template: str) -> None:
    fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    unknown = fields - _TEMPLATE_FIELDS
    if unknown:
        raise DistilleryError(
            f"--naming-template {template!r} uses unknown field(s) {', '.join(sorted(unknown))}",
            hint="use {input_name}, {run_name} and {step}",
        )


def output_path(output_dir: Path, template: str, input_folder: Path, step: str) -> Path:
    name = template.format(input_name=input_folder.name, run_name=input_folder.parent.name, step=step)
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DistilleryError(
            f"--naming-template {template!r} gives {name!r}, which is not a folder name inside --output-dir",
            output_dir,
            "use a template without '/' or '..'",
        )
    output = output_dir / name
    target = output.resolve()
    if target.parent != output_dir.resolve():
        raise DistilleryError(
            f"the output path is a symlink pointing outside --output-dir (to {target})",
            output,
            "remove the symlink or choose another --output-dir",
        )
    return output


def plan_batch(
    inputs: list[Path],
    output_dir: Path,
    template: str = DEFAULT_TEMPLATE,
    all_checkpoints: bool = False,
    checkpoint_filter: str | None = None,
) -> list[BatchItem]:
    check_template(template)
    patterns = expand_braces(checkpoint_filter) if checkpoint_filter else None
    items: list[BatchItem] = []
    for folder in inputs:
        steps = deepspeed.list_step_folders(folder)
        if patterns is not None:
            steps = [s for s in steps if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
            if not steps:
                raise DistilleryError(
                    f"has no checkpoint-N folder matching --checkpoint-filter {checkpoint_filter!r}",
                    folder,
                    f"found: {', '.join(p.name for p in deepspeed.list_step_folders(folder)) or 'none'}",
                )
        elif not all_checkpoints:
            steps = steps[-1:]
        if steps:
            chosen = [(step_folder, str(deepspeed.step_of(step_folder))) for step_folder in steps]
        else:  # a model folder or a bare DeepSpeed checkpoint: one item, named by its step where it has one
            step = deepspeed.step_of(folder)
            chosen = [(None, str(step) if step is not None else "final")]
        for checkpoint, step in chosen:
            output = output_path(output_dir, template, folder, step)
            check_apart_from_inputs(output, [folder])
            items.append(BatchItem(folder, checkpoint, step, output))
    outputs = [item.output for item in items]
    duplicates = sorted({str(o) for o in outputs if outputs.count(o) > 1})
    if duplicates:
        raise DistilleryError(
            f"--naming-template gives the same output to several inputs: {', '.join(duplicates)}",
            hint="add {run_name} or {step} to the template",
        )
    return items


def _run_item(item: BatchItem, base: ConsolidateOptions) -> str:
    options = replace(base, input=item.checkpoint or item.input, output=item.output)
    result = consolidate(options)
    return f"{result.num_tensors} tensors from {result.input_type} input"


@dataclass
class BatchOutcome:
    item: BatchItem
    error: str | None = None
    detail: str = ""


def run_batch(
    items: list[BatchItem], base: ConsolidateOptions, max_workers: int = 4, continue_on_error: bool = False
) -> list[BatchOutcome]:
    outcomes: list[BatchOutcome] = []
    pending: dict[Future, BatchItem] = {}
    queue = list(items)
    stop = False
    with ProcessPoolExecutor(max_workers=max(1, min(max_workers, len(items) or 1))) as pool:
        while queue or pending:
            while queue and not stop and len(pending) < max_workers:
                item = queue.pop(0)
                pending[pool.submit(_run_item, item, base)] = item
            if not pending:
                break
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                item = pending.pop(future)
                try:
                    outcomes.append(BatchOutcome(item, detail=future.result()))
                except DistilleryError as exc:
                    outcomes.append(BatchOutcome(item, error=str(exc)))
                    stop = stop or not continue_on_error
            if stop:
                queue.clear()
    return outcomes
