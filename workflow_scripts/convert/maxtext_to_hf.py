"""`distillery maxtext-to-hf`: a MaxText param-only Orbax checkpoint of a Llama model in, an HF Llama folder out.

MaxText's tree (scanned layers are stacked on axis 1, MaxText's default `param_scan_axis`; unscanned ones are
`decoder.layers_{i}`) maps onto HF names as MaxText's own converters map it (`llama_mistral_mixtral_orbax_to_hf`,
`to_huggingface`'s LLAMA31 hooks), with the transforms MaxText's math implies (see architectures/maxtext_llama.py):

    token_embedder.embedding            [vocab, emb]          -> model.embed_tokens.weight
    self_attention.query.kernel         [emb, (L,) heads, hd]  -> q_proj [heads·hd, emb]: ×sqrt(hd), de-interleaved
    self_attention.key.kernel           [emb, (L,) kv, hd]     -> k_proj [kv·hd, emb]: de-interleaved (llama3.1)
    self_attention.value.kernel         [emb, (L,) kv, hd]     -> v_proj [kv·hd, emb]
    self_attention.out.kernel           [heads, (L,) hd, emb]  -> o_proj [emb, heads·hd]
    mlp.wi_0 / wi_1 / wo.kernel         [emb, (L,) mlp] ...    -> gate_proj / up_proj / down_proj (transposed)
    pre_/post_self_attention_layer_norm [emb, (L)]             -> input_layernorm / post_attention_layernorm
    decoder.decoder_norm.scale          [emb]                  -> model.norm.weight
    decoder.logits_dense.kernel         [emb, vocab]           -> lm_head.weight (transposed); absent: via the embedding

Memory stays near one layer's tensor whatever the model's size, and each storage chunk is decoded once: MaxText
shards scanned arrays along the embedding axis with all layers in every chunk, so a scanned array is decoded
block by block into a spool file on disk, from which each layer is read back with positioned reads
(`SpooledArray`, in formats/maxtext_arrays.py); the embedding is decoded block by block straight into the output.
Each layer's HF weight is one copy of a view of the stored layer into a buffer reused for every layer
(convert/maxtext_layers.py).
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..architectures.maxtext_llama import (
    LAYER_PARAMS,
    ROPE_TYPES,
    MaxTextLlamaMath,
    default_rope_type,
    hf_config,
    layer_shapes,
    resolve_size,
)
from ..architectures.tokenizer_facts import tokenizer_facts
from ..choices import ORIGINAL_DTYPE
from ..errors import DistilleryError
from ..formats import hf_writer
from ..formats.maxtext import PARAM_ONLY, MaxTextCheckpoint
from ..formats.maxtext_arrays import StoredArrays, as_torch
from ..formats.safetensors_file import TensorPieces, TensorSpec
from .driver import ConversionPlan, ConversionRequest, check_request, run_conversion
from .maxtext_layers import LayerBuffers, hf_layer_tensor
from .model_files import copy_model_files
from .registry import MaxTextToHFOptions

log = logging.getLogger(__name__)

_SCANNED_PROBE = "decoder.layers.self_attention.query.kernel"


@dataclass
class MaxTextToHFResult:
    output: Path
    num_tensors: int
    total_bytes: int
    files: list[hf_writer.WrittenFile]
    math: MaxTextLlamaMath

    def summary(self) -> str:
        files = ", ".join(f.name for f in self.files)
        return (f"✓ {self.output}: {self.num_tensors} tensors of {self.math.model_size} "
                f"(rope {self.math.rope_type}) into {files}")  # fmt: skip


def expected_maxtext_shapes(math: MaxTextLlamaMath, scanned: bool) -> dict[str, tuple[int, ...]]:
    """Every MaxText parameter the checkpoint must hold for this size, with its stored shape."""
    s = math.size
    shapes = {
        "token_embedder.embedding": (s.vocab_size, s.hidden_size),
        "decoder.decoder_norm.scale": (s.hidden_size,),
    }
    if not math.tied_embeddings:
        shapes["decoder.logits_dense.kernel"] = (s.hidden_size, s.vocab_size)
    for name, shape in layer_shapes(math).items():
        if scanned:
            shapes[f"decoder.layers.{name}"] = (shape[0], s.num_hidden_layers, *shape[1:])
        else:
            for layer in range(s.num_hidden_layers):
                shapes[f"decoder.layers_{layer}.{name}"] = shape
    return shapes


def check_fits_size(checkpoint: MaxTextCheckpoint, math: MaxTextLlamaMath, scanned: bool) -> None:
    """Refuse before writing anything when the arrays do not have the shapes of --model-size."""
    expected = expected_maxtext_shapes(math, scanned)
    missing = [name for name in expected if name not in checkpoint.params]
    if not scanned:
        layers = sorted({int(name.split(".")[1].removeprefix("layers_")) for name in missing
                         if name.startswith("decoder.layers_")})  # fmt: skip
        if layers:
            raise DistilleryError(
                f"misses decoder layer(s) {layers[:5]} of the {math.size.num_hidden_layers} that --model-size "
                f"{math.model_size} has (e.g. {next(n for n in missing if n.startswith('decoder.layers_'))})",
                checkpoint.items,
                "the checkpoint is incomplete, or --model-size has more layers than the model",
            )
    if missing:
        raise DistilleryError(
            f"misses MaxText parameter(s) {', '.join(missing[:3])}",
            checkpoint.items,
            "is this a MaxText Llama checkpoint written completely?",
        )
    wrong = []
    for name, shape in expected.items():
        actual = checkpoint.tensors[name].shape
        if actual != shape:
            wrong.append(f"{name} is {list(actual)}, {math.model_size} expects {list(shape)}")
    if wrong:
        raise DistilleryError(
            f"does not match --model-size {math.model_size}: {'; '.join(wrong[:3])}"
            + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else ""),
            checkpoint.items,
            "pass the model's size, or --config with its config.json",
        )


def plan_hf_tensors(math: MaxTextLlamaMath, scanned: bool, dtype: torch.dtype) -> list[tuple[TensorSpec, tuple]]:
    """HF tensors in the order that reads each stored array once: (spec, (maxtext name, layer or None, kind))."""
    s = math.size
    emb, vocab = s.hidden_size, s.vocab_size
    plan = [(TensorSpec("model.embed_tokens.weight", dtype, (vocab, emb)), ("token_embedder.embedding", None, "copy"))]
    hf_shapes = {
        "self_attention.query.kernel": (s.num_attention_heads * s.head_dim, emb),
        "self_attention.key.kernel": (s.num_key_value_heads * s.head_dim, emb),
        "self_attention.value.kernel": (s.num_key_value_heads * s.head_dim, emb),
        "self_attention.out.kernel": (emb, s.num_attention_heads * s.head_dim),
        "mlp.wi_0.kernel": (s.intermediate_size, emb),
        "mlp.wi_1.kernel": (s.intermediate_size, emb),
        "mlp.wo.kernel": (emb, s.intermediate_size),
        "pre_self_attention_layer_norm.scale": (emb,),
        "post_self_attention_layer_norm.scale": (emb,),
    }
    for hf_name, mt_name in LAYER_PARAMS:
        for layer in range(s.num_hidden_layers):
            stored = f"decoder.layers.{mt_name}" if scanned else f"decoder.layers_{layer}.{mt_name}"
            spec = TensorSpec(f"model.layers.{layer}.{hf_name}", dtype, hf_shapes[mt_name])
            plan.append((spec, (stored, layer if scanned else None, mt_name)))
    plan.append((TensorSpec("model.norm.weight", dtype, (emb,)), ("decoder.decoder_norm.scale", None, "copy")))
    if not math.tied_embeddings:
        plan.append(
            (TensorSpec("lm_head.weight", dtype, (vocab, emb)), ("decoder.logits_dense.kernel", None, "transpose"))
        )
    elif math.normalize_embedding_logits:
        plan.append(
            (TensorSpec("lm_head.weight", dtype, (vocab, emb)), ("token_embedder.embedding", None, "normalized"))
        )
    return plan


def spooled_order(plan: list[tuple[TensorSpec, tuple]]) -> list[str]:
    """The stored arrays handed out by layer or by column block, in the order the plan asks for them."""
    return [stored for _, (stored, layer, kind) in plan if layer is not None or kind == "transpose"]


def produce_tensor(
    arrays: StoredArrays, source: tuple, spec: TensorSpec, math: MaxTextLlamaMath, buffers: LayerBuffers
):
    stored, layer, kind = source
    dtype = spec.dtype
    if kind == "copy" and len(spec.shape) == 2:
        return TensorPieces(as_torch(block).to(dtype) for block in arrays.blocks(stored, axis=0))
    if kind == "copy":
        return as_torch(arrays.whole(stored)).to(dtype)
    if kind == "transpose":
        # Each block is transposed into one buffer reused for all of them (a fresh 32 MB tensor per block: page faults).
        return TensorPieces(_transposed(as_torch(block), dtype, buffers) for block in arrays.blocks(stored, axis=1))
    if kind == "normalized":
        # MaxText divides logits computed through the embedding by sqrt(emb_dim) (normalize_embedding_logits).
        scale = float(1.0 / np.sqrt(math.size.hidden_size))
        return TensorPieces((as_torch(block).float() * scale).to(dtype) for block in arrays.blocks(stored, axis=0))
    layer_array = arrays.whole(stored) if layer is None else arrays.layer(stored, layer)
    return hf_layer_tensor(kind, layer_array, math, dtype, buffers)


def _transposed(block: torch.Tensor, dtype: torch.dtype, buffers: LayerBuffers) -> torch.Tensor:
    out = buffers(tuple(reversed(block.shape)), dtype)
    out.copy_(block.T)
    return out


def read_math(checkpoint: MaxTextCheckpoint, options: MaxTextToHFOptions) -> tuple[MaxTextLlamaMath, bool]:
    size = resolve_size(options.model_size, options.config)
    rope_type = options.rope_type or default_rope_type(options.model_size)
    if rope_type not in ROPE_TYPES:
        raise DistilleryError(f"unknown --rope-type {rope_type!r}", hint=f"choose from {', '.join(ROPE_TYPES)}")
    scanned = _SCANNED_PROBE in checkpoint.params
    tied = "decoder.logits_dense.kernel" not in checkpoint.params
    math_ = MaxTextLlamaMath(options.model_size, size, rope_type, tied, options.normalize_embedding_logits)
    return math_, scanned


def _return_freed_buffers_to_the_system() -> None:
    """Make glibc hand blocks of 16 MB or more back to the system when freed.

    Its default threshold grows after each large free, so decode buffers and layers end up in the heap, where
    freed memory stays resident: measured, this halves the peak RSS at the same speed.
    """
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 16 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: keep the allocator's behaviour
        pass


def convert_maxtext_to_hf(options: MaxTextToHFOptions) -> MaxTextToHFResult:
    # `original` is the precision of MaxText's param-only checkpoints: bfloat16.
    dtype = "bfloat16" if options.dtype == ORIGINAL_DTYPE else options.dtype
    request = ConversionRequest(options.hf_model_path, dtype, options.max_shard_size, options.force,
                                options.validate_vllm, options.command, "maxtext-to-hf",
                                inputs=(options.orbax_checkpoint, options.config, options.tokenizer_path))  # fmt: skip
    check_request(request)
    if not options.model_size:
        raise DistilleryError("no --model-size", hint="pass the MaxText model name, e.g. llama3.1-8b")
    checkpoint = MaxTextCheckpoint(options.orbax_checkpoint)
    checkpoint.require(PARAM_ONLY)
    math_, scanned = read_math(checkpoint, options)
    check_fits_size(checkpoint, math_, scanned)
    plan = conversion_plan(options, checkpoint, math_, scanned, dtype)
    files = run_conversion(request, plan)
    return MaxTextToHFResult(options.hf_model_path, len(plan.tensors), plan.total_bytes, files, math_)


def conversion_plan(options: MaxTextToHFOptions, checkpoint: MaxTextCheckpoint, math_: MaxTextLlamaMath,
                    scanned: bool, dtype: str) -> ConversionPlan:  # fmt: skip
    """The HF tensors in the order that decodes each stored array once, the config and the tokenizer."""
    planned = plan_hf_tensors(math_, scanned, getattr(torch, dtype))
    sources = {spec.name: source for spec, source in planned}

    @contextlib.contextmanager
    def reading(staging: Path):
        _return_freed_buffers_to_the_system()
        # Decoded arrays are spooled inside the staging folder: removed with it whatever happens.
        arrays = StoredArrays(checkpoint, staging, order=spooled_order(planned))
        buffers = LayerBuffers()
        threads = torch.get_num_threads()
        # One thread per torch operation: the conversion's parallelism is its own (decoding, spooling and writing
        # in threads of their own), and torch's OpenMP workers spin between its many short operations (6% of a
        # conversion's processor time went to that spinning).
        torch.set_num_threads(1)
        # The objects that exist by now (torch's and the other modules') are kept out of the collector's passes:
        # each full pass went over all of them, for about 3% of a conversion's processor time.
        gc.freeze()
        try:
            yield lambda spec: produce_tensor(arrays, sources[spec.name], spec, math_, buffers)
        finally:
            gc.unfreeze()
            torch.set_num_threads(threads)
            arrays.close()

    def write_model_files(staging: Path) -> dict:
        tokenizer = Path(options.tokenizer_path) if options.tokenizer_path else None
        copied = _copy_tokenizer(tokenizer, staging)
        config = hf_config(math_, dtype)
        _take_token_ids(config, staging)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
        return {"tokenizer": str(tokenizer) if tokenizer else None, "tokenizer_files": copied}

    return ConversionPlan(
        tensors=[spec for spec, _ in planned],
        reading=reading,
        write_model_files=write_model_files,
        source={
            "path": options.orbax_checkpoint,
            "type": "maxtext",
            "items": checkpoint.items,
            "kind": checkpoint.kind,
            "layout": f"{checkpoint.layout}, {'scanned' if scanned else 'unscanned'} layers",
            "stored_bytes": checkpoint.stored_bytes(),
        },
        conversion={"dtype": dtype, "max_shard_size": options.max_shard_size},
        provenance={"maxtext": math_.to_dict()},
    )


def _copy_tokenizer(tokenizer_path: Path | None, staging: Path) -> list[str]:
    if tokenizer_path is None:
        log.warning("no --tokenizer-path: the model folder has no tokenizer (vLLM and verify need one)")
        return []
    tokenizer_path = Path(tokenizer_path)
    if tokenizer_path.is_file():
        (staging / tokenizer_path.name).write_bytes(tokenizer_path.read_bytes())
        return [tokenizer_path.name]
    if not tokenizer_path.is_dir():
        raise DistilleryError("does not exist", tokenizer_path, "pass the tokenizer's folder with --tokenizer-path")
    copied = copy_model_files(tokenizer_path, staging)
    if not copied:
        raise DistilleryError("holds no tokenizer files", tokenizer_path, "pass the folder with tokenizer.json")
    return copied


def _take_token_ids(config: dict, staging: Path) -> None:
    """bos/eos/pad ids from the tokenizer itself, where one was given, so config and tokenizer agree."""
    if not any((staging / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        return
    try:
        tokenizer = tokenizer_facts(staging)
    except Exception:  # noqa: BLE001 - the table's ids stay; verify reports an unusable tokenizer
        return
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        value = getattr(tokenizer, key)
        if value is not None:
            config[key] = value
