"""The numeric check: logits of probe prompts from the converted model against a reference.

Both models run in float32 on the CPU, so the difference measures what the conversion did to the weights and
not the arithmetic of a low-precision forward pass. Where the converted weights are stored in a lower precision
than the reference, the reference's weights are rounded to that dtype first: a correct conversion then gives
(nearly) identical logits, and a mapping error (a transpose, a wrong rotary permutation, a missed scale) stands
out even in a tiny random model whose logits barely depend on some weights. The tolerance is relative to the
reference's largest logit and depends on the stored dtype, to allow for rounding done in another order.

The reference is an HF folder, loaded here, unless the caller passes how to load its format's own forward
(`load_reference`: TorchTitan's model code, MaxText's math in JAX, transformers' GGUF loader); which format a
reference is in is the format registry's to say (`convert/registry.py`), not this module's.
"""

from __future__ import annotations

import pickle
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..architectures.architecture import load_config
from ..errors import DistilleryError, first_line
from ..formats import hf_checkpoint
from ..formats.torch_bin import pickle_refusal
from .report import FAIL, PASS, SKIP, Check
from .settings import PROBE_PROMPTS, TOLERANCES

# (reference's path, converted model's folder) -> a model called as `reference(ids).logits`. One that is a
# torch module is rounded to the converted weights' dtype; one with a `description` names it in the report.
ReferenceLoader = Callable[[Path, Path], Any]


class ReferenceUnavailable(DistilleryError):
    """The reference's own forward cannot run here (e.g. a package it needs is not installed): a skipped check."""


@dataclass(frozen=True)
class LogitComparison:
    max_abs_diff: float
    max_rel_diff: float
    top1_agreement: float
    num_positions: int


def load_model_float32(
    folder: Path, config_folder: Path | None = None, own_reader: bool = False, trust_remote_code: bool = False
):
    """Load a model folder in float32 with transformers, as a user of the folder would.

    With `own_reader` (for a reference, i.e. a conversion's source) a folder transformers cannot open, such as
    shards nested in `pytorch_model.bin/` or weights without a config.json, is read through distillery's
    reader into the architecture that `config_folder`'s config.json describes.
    """
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    folder = Path(folder)
    loadable = (folder / "config.json").is_file() and not (folder / "pytorch_model.bin").is_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if loadable or not own_reader:
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    folder, dtype=torch.float32, local_files_only=True, trust_remote_code=trust_remote_code
                )
            except pickle.UnpicklingError as exc:
                raise pickle_refusal(exc, folder) from None
            except (OSError, ValueError, RuntimeError, KeyError) as exc:
                message = first_line(exc)
                raise DistilleryError(f"transformers cannot load it ({message})", folder) from None
            return model.eval()
        config = load_config(folder if (folder / "config.json").is_file() else config_folder, trust_remote_code)
        checkpoint = hf_checkpoint.open_checkpoint(folder)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=trust_remote_code)
        state = {name: tensor.load().float() for name, tensor in checkpoint.tensors.items()}
        result = model.load_state_dict(state, strict=False)
        tied = set(getattr(model, "all_tied_weights_keys", None) or {})
        missing = sorted(set(result.missing_keys) - tied)
        if missing or result.unexpected_keys:
            raise DistilleryError(
                f"does not fit its architecture (missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})",
                folder,
            )
        model.tie_weights()
        return model.eval()


def probe_token_ids(
    folder: Path, prompts: tuple[str, ...] | list[str], vocab_size: int, trust_remote_code: bool = False
) -> list[list[int]]:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=trust_remote_code)
        return [tokenizer(prompt)["input_ids"] for prompt in prompts]
    except Exception:  # noqa: BLE001 - without a tokenizer, fixed token ids still exercise every weight
        generator = torch.Generator().manual_seed(0)
        return [torch.randint(0, vocab_size, (16,), generator=generator).tolist() for _ in prompts]


@torch.no_grad()
def compare_logits(model, reference, token_ids: list[list[int]]) -> LogitComparison:
    max_abs = 0.0
    max_ref = 0.0
    agree = 0
    positions = 0
    for ids in token_ids:
        batch = torch.tensor([ids])
        ours = model(batch).logits.float()
        theirs = reference(batch).logits.float()
        max_abs = max(max_abs, float((ours - theirs).abs().max()))
        max_ref = max(max_ref, float(theirs.abs().max()))
        agree += int((ours.argmax(-1) == theirs.argmax(-1)).sum())
        positions += ours.shape[1]
    return LogitComparison(
        max_abs_diff=max_abs,
        max_rel_diff=max_abs / max_ref if max_ref else max_abs,
        top1_agreement=agree / positions if positions else 1.0,
        num_positions=positions,
    )


@torch.no_grad()
def round_weights(model, dtype: torch.dtype) -> None:
    """Round a float32 model's weights to `dtype` and back, as a conversion to `dtype` would store them."""
    for parameter in model.parameters():
        parameter.copy_(parameter.to(dtype).float())


def stored_float_dtype(folder: Path) -> str:
    checkpoint = hf_checkpoint.open_checkpoint(folder)
    dtypes = [t.dtype for t in checkpoint.tensors.values() if t.dtype.is_floating_point]
    # The least precise dtype present sets the tolerance.
    for candidate in (torch.bfloat16, torch.float16, torch.float32):
        if candidate in dtypes:
            return str(candidate).removeprefix("torch.")
    return "float32"


def check_numerics(
    model_path: Path,
    reference_path: Path,
    prompts: tuple[str, ...] | list[str] = PROBE_PROMPTS,
    tolerances: dict[str, float] | None = None,
    trust_remote_code: bool = False,
    load_reference: ReferenceLoader | None = None,
) -> Check:
    tolerances = {**TOLERANCES, **(tolerances or {})}
    title = "logits match the reference"
    try:
        model = load_model_float32(model_path, trust_remote_code=trust_remote_code)
        if load_reference is None:
            reference = load_model_float32(
                reference_path, config_folder=model_path, own_reader=True, trust_remote_code=trust_remote_code
            )
        else:
            reference = load_reference(reference_path, model_path)
    except ReferenceUnavailable as exc:
        return Check("numerics", SKIP, title, f"skipped: {exc}", {"reference": str(reference_path)})
    except DistilleryError as exc:
        return Check("numerics", FAIL, title, str(exc))
    dtype = stored_float_dtype(model_path)
    # A reference computed from arrays of its own (MaxText's in JAX) keeps its precision.
    rounded = dtype != "float32" and isinstance(reference, torch.nn.Module)
    if rounded:
        round_weights(reference, getattr(torch, dtype))
    token_ids = probe_token_ids(model_path, prompts, model.config.vocab_size, trust_remote_code)
    try:
        comparison = compare_logits(model, reference, token_ids)
    except RuntimeError as exc:
        return Check("numerics", FAIL, title, f"the models cannot run the same input ({exc})")
    tolerance = tolerances.get(dtype, TOLERANCES["float32"])
    passed = comparison.max_rel_diff <= tolerance
    described = getattr(reference, "description", None)
    detail = (
        f"max abs diff {comparison.max_abs_diff:.3g}, max rel diff {comparison.max_rel_diff:.3g} "
        f"({'within' if passed else 'above'} the {dtype} tolerance {tolerance:g}"
        f"{f', reference rounded to {dtype}' if rounded else ''}), "
        f"{f'reference: {described}, ' if described else ''}"
        f"top-1 agreement {comparison.top1_agreement:.1%} over {comparison.num_positions} positions"
    )
    return Check(
        "numerics",
        PASS if passed else FAIL,
        title,
        detail,
        {**vars(comparison), "dtype": dtype, "tolerance": tolerance, "reference": str(reference_path)},
    )
