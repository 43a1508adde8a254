"""Do a model's tensor- and pipeline-parallel plans fit its real modules?

The plans are the ones HF transformers (and Forgather) attach to a model: `_tp_plan` / `base_model_tp_plan`
(module glob -> split style, `*` standing for a layer index), `_pp_plan` / `base_model_pp_plan` (module ->
(inputs, outputs)), and `_no_split_modules` (class names). vLLM's Transformers backend splits a model by them,
so a pattern that matches nothing, a Linear left out, or a column split not closed by a row split in the same
block shows up only as wrong outputs or a crash at `--tensor-parallel-size` > 1. These checks find them first.
"""

from __future__ import annotations

import difflib
import inspect
import re
from collections import defaultdict

from torch import nn

from ..verify.report import FAIL, PASS, SKIP, WARN, Check

# transformers' ALL_PARALLEL_STYLES at 5.23, kept for when it cannot be imported.
KNOWN_STYLES = (
    "embedding_rowwise", "embedding_colwise", "colwise_gather_output", "colwise_rep", "colwise", "rowwise",
    "rowwise_split_input", "rowwise_rep", "packed_colwise", "packed_rowwise", "sequence_parallel",
    "replicated_with_grad_allreduce", "mla_kv_a_proj", "all_reduce", "moe_tp_experts", "moe_identity_expert",
    "local_params", "replicate", "grouped_gemm", "ep_dispatch_experts", "gather", "isolated", "local_colwise",
    "local_rowwise", "local",
)  # fmt: skip
# Styles that split a Linear's output features and leave the result sharded: a row split must follow.
_OPENS_SHARD = {"colwise", "packed_colwise", "local_colwise"}
# Styles that take sharded input features and reduce them: a column split must precede.
_CLOSES_SHARD = {"rowwise", "packed_rowwise", "local_rowwise", "rowwise_split_input"}
# Inputs a pipeline stage may take from the model rather than from the previous stage.
_MODEL_PROVIDED = {"attention_mask", "position_ids", "position_embeddings", "cache_position", "past_key_values"}
_SAME_TENSOR = {"inputs_embeds": "hidden_states"}


def valid_styles() -> set[str]:
    try:
        from transformers.integrations.tensor_parallel import ALL_PARALLEL_STYLES

        return set(ALL_PARALLEL_STYLES) | set(KNOWN_STYLES)
    except ImportError:
        return set(KNOWN_STYLES)


def model_plans(model: nn.Module) -> tuple[dict[str, str], dict[str, tuple], list[str]]:
    """(tp plan, pp plan, no-split classes) with full module names, as the model declares them."""
    tp_plan = dict(getattr(model, "_tp_plan", None) or {})
    pp_plan = dict(getattr(model, "_pp_plan", None) or {})
    config = getattr(model, "config", None)
    prefix = getattr(model, "base_model_prefix", "") or ""
    # Plans declared on the config apply to the base model; add them where the model did not merge them.
    for key, value in (getattr(config, "base_model_tp_plan", None) or {}).items():
        tp_plan.setdefault(f"{prefix}.{key}" if prefix and hasattr(model, prefix) else key, value)
    for key, value in (getattr(config, "base_model_pp_plan", None) or {}).items():
        pp_plan.setdefault(f"{prefix}.{key}" if prefix and hasattr(model, prefix) else key, value)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    return tp_plan, pp_plan, no_split


def pattern_regex(pattern: str) -> re.Pattern:
    return re.compile("^" + re.escape(pattern).replace(r"\*", r"[^.]+") + "$")


def _is_linear_like(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return isinstance(module, nn.Linear) or (
        weight is not None and getattr(weight, "dim", lambda: 0)() == 2 and not isinstance(module, nn.Embedding)
    )


def _nearest(name: str, candidates: list[str]) -> list[str]:
    generalised = sorted({re.sub(r"\.\d+\.", ".*.", c) for c in candidates})
    return difflib.get_close_matches(name, generalised, n=3, cutoff=0.4)


def check_tp_plan(model: nn.Module, tp_plan: dict[str, str]) -> list[Check]:
    modules = dict(model.named_modules())
    names = [name for name in modules if name]
    if not tp_plan:
        return [Check("tp_plan", WARN, "tensor-parallel plan", "the model declares none (vLLM needs a native "
                      "implementation to split it)")]  # fmt: skip
    matched = {pattern: [name for name in names if pattern_regex(pattern).match(name)] for pattern in tp_plan}
    style_of = {name: tp_plan[pattern] for pattern, found in matched.items() for name in found}
    return [
        _check_tp_patterns(tp_plan, matched, names),
        _check_tp_styles(tp_plan),
        _check_tp_coverage(model, modules, style_of),
        _check_tp_pairing(style_of),
    ]


def _check_tp_patterns(tp_plan: dict[str, str], matched: dict[str, list[str]], names: list[str]) -> Check:
    unmatched = [f"{pattern} (nearest: {', '.join(_nearest(pattern, names)) or 'none'})"
                 for pattern, found in matched.items() if not found]  # fmt: skip
    summary = {pattern: {"style": tp_plan[pattern], "matched": len(found), "examples": found[:3]}
               for pattern, found in matched.items()}  # fmt: skip
    return Check(
        "tp_patterns",
        FAIL if unmatched else PASS,
        "every TP pattern matches a module",
        f"match nothing: {'; '.join(unmatched)}" if unmatched else f"{len(tp_plan)} patterns matched",
        {"patterns": summary},
    )


def _check_tp_styles(tp_plan: dict[str, str]) -> Check:
    styles = valid_styles()
    bad_styles = [f"{pattern}: {style!r}" for pattern, style in tp_plan.items() if style not in styles]
    return Check(
        "tp_styles",
        FAIL if bad_styles else PASS,
        "TP styles are ones transformers defines",
        f"unknown: {', '.join(bad_styles)}" if bad_styles else "",
    )


def _check_tp_coverage(model: nn.Module, modules: dict[str, nn.Module], style_of: dict[str, str]) -> Check:
    layer_stack = _repeated_block_prefixes(model)
    uncovered = sorted(
        name
        for name, module in modules.items()
        if _is_linear_like(module)
        and any(name.startswith(prefix) for prefix in layer_stack)
        and name not in style_of
        and not any(name.startswith(covered + ".") for covered in style_of)
    )
    return Check(
        "tp_coverage",
        FAIL if uncovered else PASS,
        "every Linear in the layers is split",
        f"not in the plan (each GPU would hold it whole): {', '.join(_generalise(uncovered))}" if uncovered else "",
        {"uncovered": uncovered},
    )


def _check_tp_pairing(style_of: dict[str, str]) -> Check:
    by_block: dict[str, set[str]] = defaultdict(set)
    for name, style in style_of.items():
        parent = name.rsplit(".", 1)[0] if "." in name else ""
        by_block[parent].add(style)
    unpaired = []
    for block, block_styles in sorted(by_block.items()):
        opens, closes = block_styles & _OPENS_SHARD, block_styles & _CLOSES_SHARD
        if opens and not closes:
            unpaired.append(f"{block}: a column split ({', '.join(sorted(opens))}) is never closed by a row split")
        if closes and not opens:
            unpaired.append(f"{block}: a row split ({', '.join(sorted(closes))}) has no column split feeding it")
    return Check(
        "tp_pairing",
        FAIL if unpaired else PASS,
        "column splits feed row splits within each block",
        "; ".join(_generalise(unpaired)) if unpaired else "",
    )


def _generalise(items: list[str], limit: int = 5) -> list[str]:
    """Fold per-layer repeats (layers.0.x, layers.1.x) into one `layers.*.x` entry."""
    folded = list(dict.fromkeys(re.sub(r"\.\d+(\.|:)", r".*\1", item) for item in items))
    return folded[:limit] + ([f"and {len(folded) - limit} more"] if len(folded) > limit else [])


def _repeated_block_prefixes(model: nn.Module) -> list[str]:
    """Name prefixes of the repeated blocks (the ModuleLists of layers): where every Linear must be split."""
    return [f"{name}." for name, module in model.named_modules() if isinstance(module, nn.ModuleList) and len(module)]


def check_pp_plan(model: nn.Module, pp_plan: dict[str, tuple]) -> list[Check]:
    if not pp_plan:
        return [Check("pp_plan", WARN, "pipeline-parallel plan", "the model declares none")]
    modules = dict(model.named_modules())
    order = {name: index for index, name in enumerate(modules)}
    problems = []
    missing = [name for name in pp_plan if name not in modules]
    for name in missing:
        problems.append(f"{name} is not a module (nearest: {', '.join(_nearest(name, list(modules))) or 'none'})")
    stages = sorted((name for name in pp_plan if name in modules), key=order.get)
    available: set[str] = {"input_ids", "inputs_embeds"}
    for name in stages:
        inputs, outputs = pp_plan[name]
        needed = [_SAME_TENSOR.get(i, i) for i in inputs if i not in _MODEL_PROVIDED]
        have = {_SAME_TENSOR.get(a, a) for a in available} | {"input_ids"}
        lacking = [i for i in needed if i not in have]
        if lacking:
            problems.append(f"{name} takes {', '.join(lacking)}, which no earlier stage produces")
        signature_problem = _forward_accepts(modules[name], [i for i in inputs if i not in _MODEL_PROVIDED])
        if signature_problem:
            problems.append(f"{name}: {signature_problem}")
        available |= set(outputs)
    if stages and "logits" not in {o for s in stages for o in pp_plan[s][1]} and "hidden_states" not in available:
        problems.append("no stage produces hidden_states or logits")
    return [
        Check(
            "pp_plan",
            FAIL if problems else PASS,
            "pipeline stages exist and chain their inputs and outputs",
            "; ".join(problems) if problems else " -> ".join(stages),
            {"stages_in_model_order": stages},
        )
    ]


def _forward_accepts(module: nn.Module, inputs: list[str]) -> str | None:
    target = module[0] if isinstance(module, nn.ModuleList) and len(module) else module
    if type(target).__module__.startswith("torch.nn"):
        return None  # built-in layers take one positional tensor; the plan's names are labels for it
    parameters = inspect.signature(target.forward).parameters
    if any(p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) for p in parameters.values()):
        return None
    names = [name for name in parameters if name != "self"]
    unknown = [i for i in inputs if i not in names]
    if unknown and len(names) < len(inputs):
        return f"{type(target).__name__}.forward({', '.join(names)}) cannot take {', '.join(unknown)}"
    return None


def check_no_split(model: nn.Module, no_split: list[str]) -> Check:
    classes = {type(module).__name__ for module in model.modules()}
    missing = [name for name in no_split if name not in classes]
    title = "_no_split_modules name classes of the model"
    if not no_split:
        return Check("no_split_modules", SKIP, title, "none declared")
    if missing:
        nearest = difflib.get_close_matches(missing[0], sorted(classes), n=3, cutoff=0.3)
        detail = f"no module of class {', '.join(missing)} (nearest: {', '.join(nearest) or 'none'})"
        return Check("no_split_modules", FAIL, title, detail)
    return Check("no_split_modules", PASS, title, ", ".join(no_split))
