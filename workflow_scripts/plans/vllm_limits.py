"""vLLM's arithmetic for splitting a model over T tensor-parallel and P pipeline-parallel GPUs.

The rules follow vLLM 0.26.0: attention heads are split evenly over T; KV heads are split when there are at
least T of them, and replicated when T is a multiple of their number; MLP columns are split evenly;
the vocabulary is padded to a multiple of 64 and then split; layers are spread over P stages with the
remainder going to the stages just before the last (`get_pp_indices`). Memory is estimated per GPU as the
weights it holds plus the KV cache of `batch` sequences of `max_model_len` tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..verify.report import FAIL, PASS, WARN, Check

VLLM_VERSION = "0.26.0"
VOCAB_PADDING = 64
# Architectures (config.json "architectures") with a native vLLM implementation in vLLM 0.26.0's model
# registry (the decoder-only text models users of this workflow train); anything else runs through vLLM's
# Transformers backend, which splits the model by its HF tp/pp plans.
NATIVE_ARCHITECTURES = frozenset(
    {
        "LlamaForCausalLM", "MistralForCausalLM", "MixtralForCausalLM", "Qwen2ForCausalLM", "Qwen2MoeForCausalLM",
        "Qwen3ForCausalLM", "Qwen3MoeForCausalLM", "GemmaForCausalLM", "Gemma2ForCausalLM", "Gemma3ForCausalLM",
        "Phi3ForCausalLM", "PhiForCausalLM", "GPT2LMHeadModel", "GPTNeoXForCausalLM", "FalconForCausalLM",
        "DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM", "OlmoForCausalLM", "Olmo2ForCausalLM",
        "StableLmForCausalLM", "Starcoder2ForCausalLM", "GraniteForCausalLM", "InternLM2ForCausalLM",
        "BaichuanForCausalLM", "ChatGLMModel", "CohereForCausalLM", "ExaoneForCausalLM", "GPTBigCodeForCausalLM",
        "GPTJForCausalLM", "OPTForCausalLM", "BloomForCausalLM", "MptForCausalLM", "Glm4ForCausalLM",
    }
)  # fmt: skip


@dataclass(frozen=True)
class Budget:
    gpu_memory_gib: float | None = None
    max_model_len: int = 4096
    batch: int = 1
    dtype_bytes: int = 2  # bfloat16 serving
    gpu_memory_utilization: float = 0.9


def pp_layer_split(num_layers: int, pp: int) -> list[int]:
    """Layers per pipeline stage, as vLLM's get_pp_indices spreads them."""
    per_stage = [num_layers // pp] * pp
    for index in range(2, num_layers % pp + 2):
        per_stage[-index] += 1
    return per_stage


def padded_vocab(vocab_size: int) -> int:
    return math.ceil(vocab_size / VOCAB_PADDING) * VOCAB_PADDING


def check_split_arithmetic(config, tp: int, pp: int) -> list[Check]:
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    intermediate = getattr(config, "intermediate_size", None)
    checks = []
    if heads % tp:
        checks.append(Check("tp_heads", FAIL, f"attention heads split over T={tp}",
                            f"{heads} heads are not divisible by {tp}"))  # fmt: skip
    else:
        checks.append(Check("tp_heads", PASS, f"attention heads split over T={tp}", f"{heads // tp} per GPU",
                            {"heads_per_gpu": heads // tp}))  # fmt: skip
    checks.append(_check_kv_heads(kv_heads, tp))
    if intermediate:
        checks.append(
            Check(
                "tp_intermediate",
                FAIL if intermediate % tp else PASS,
                f"MLP split over T={tp}",
                f"intermediate_size {intermediate} "
                + ("is not divisible" if intermediate % tp else "divides")
                + f" by {tp}",
            )  # fmt: skip
        )
    padded = padded_vocab(config.vocab_size)
    checks.append(
        Check(
            "tp_vocab",
            FAIL if padded % tp else PASS,
            f"vocabulary split over T={tp}",
            f"vocab {config.vocab_size}, padded to {padded}, "
            + (f"is not divisible by {tp}" if padded % tp else f"{padded // tp} rows per GPU"),
        )  # fmt: skip
    )
    layers = config.num_hidden_layers
    if pp > layers:
        checks.append(Check("pp_layers", FAIL, f"layers over P={pp} stages", f"only {layers} layers"))
    else:
        split = pp_layer_split(layers, pp)
        uneven = len(set(split)) > 1
        checks.append(
            Check("pp_layers", WARN if uneven else PASS, f"layers over P={pp} stages",
                  f"{split} layers per stage" + (" (uneven: vLLM gives the extra layers to the stages before "
                  "the last, which also holds the output head)" if uneven else ""), {"layers_per_stage": split})
        )  # fmt: skip
    return checks


def _check_kv_heads(kv_heads: int, tp: int) -> Check:
    """vLLM splits KV heads when there are at least T of them, else gives each GPU one (replicated)."""
    per_gpu = None
    if kv_heads >= tp:
        status = FAIL if kv_heads % tp else PASS
        per_gpu = None if status == FAIL else kv_heads // tp
        detail = (f"{kv_heads} KV heads are not divisible by {tp}" if status == FAIL
                  else f"{per_gpu} KV head(s) per GPU")  # fmt: skip
    elif tp % kv_heads == 0:
        status, per_gpu = WARN, 1
        detail = f"{kv_heads} KV heads replicated {tp // kv_heads}x (each GPU keeps one KV head)"
    else:
        status, detail = FAIL, f"T={tp} is neither a divisor nor a multiple of the {kv_heads} KV heads"
    data = {} if per_gpu is None else {"kv_heads_per_gpu": per_gpu}
    return Check("tp_kv_heads", status, f"KV heads split or replicated over T={tp}", detail, data)


def estimate_memory(config, tp: int, pp: int, budget: Budget) -> dict:
    """Bytes per GPU on the busiest stage: its share of the weights plus its KV cache."""
    hidden = config.hidden_size
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    intermediate = getattr(config, "intermediate_size", None) or 4 * hidden
    layer_params = hidden * head_dim * (2 * heads + 2 * kv_heads) + 3 * hidden * intermediate + 2 * hidden
    embedding = padded_vocab(config.vocab_size) * hidden
    head = 0 if getattr(config, "tie_word_embeddings", False) and pp == 1 else embedding
    split = pp_layer_split(config.num_hidden_layers, min(pp, config.num_hidden_layers))
    kv_heads_per_gpu = max(1, kv_heads // tp)
    per_token_per_layer = 2 * kv_heads_per_gpu * head_dim * budget.dtype_bytes
    stages = []
    for index, layers in enumerate(split):
        params = layers * layer_params / tp
        params += embedding / tp if index == 0 else 0
        params += head / tp if index == len(split) - 1 else 0
        weights = params * budget.dtype_bytes
        kv_cache = per_token_per_layer * layers * budget.max_model_len * budget.batch
        stages.append({"layers": layers, "weights_bytes": int(weights), "kv_cache_bytes": int(kv_cache)})
    busiest = max(stages, key=lambda s: s["weights_bytes"] + s["kv_cache_bytes"])
    return {"stages": stages, "busiest_bytes": busiest["weights_bytes"] + busiest["kv_cache_bytes"]}


def check_memory(config, tp: int, pp: int, budget: Budget) -> Check:
    estimate = estimate_memory(config, tp, pp, budget)
    gib = estimate["busiest_bytes"] / 2**30
    detail = (f"~{gib:.2f} GiB on the busiest GPU (weights + KV cache for {budget.batch} x {budget.max_model_len}"
              f" tokens)")  # fmt: skip
    if budget.gpu_memory_gib is None:
        return Check("memory", PASS, "fits in GPU memory", detail + "; no --gpu-memory given", estimate)
    usable = budget.gpu_memory_gib * budget.gpu_memory_utilization
    fits = gib <= usable
    return Check(
        "memory",
        PASS if fits else FAIL,
        "fits in GPU memory",
        detail + f" {'within' if fits else 'above'} {usable:.1f} GiB usable of {budget.gpu_memory_gib:g} GiB",
        estimate,
    )


def check_native(config, tp: int, pp: int, has_tp_plan: bool, has_pp_plan: bool) -> Check:
    architectures = list(getattr(config, "architectures", None) or [])
    native = [a for a in architectures if a in NATIVE_ARCHITECTURES]
    if native:
        return Check("vllm_native", PASS, f"vLLM {VLLM_VERSION} implementation", f"native: {native[0]}")
    lacking = [kind for kind, needed, present in (("tp", tp > 1, has_tp_plan), ("pp", pp > 1, has_pp_plan))
               if needed and not present]  # fmt: skip
    detail = f"{', '.join(architectures) or 'no architecture'} runs on vLLM's Transformers backend"
    if lacking:
        return Check("vllm_native", FAIL, f"vLLM {VLLM_VERSION} implementation",
                     detail + f", which needs the model's {' and '.join(lacking)} plan")  # fmt: skip
    return Check("vllm_native", WARN, f"vLLM {VLLM_VERSION} implementation", detail + " (using its HF plans)")
