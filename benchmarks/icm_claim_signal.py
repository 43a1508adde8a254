"""Where a small model has signal: zero-shot log P(True) - log P(False) on each candidate claim set.

Workload: every claim of each set of `workflow_scripts/icm/claim_sets.py` (44 groups of 2), scored with no
demonstrations through the transformers engine, exactly as ICM scores a query (`PromptBuilder`, top-20
`label_margin`). Per set: the zero-shot accuracy against gold (True where the margin is positive), the share
answered True, and the AUROC of the margin against gold (0.5 is no signal, whatever the bias). Anchor, in the
same run: the old prompt building, whose query ends in the trailing space as its own token.

    PYTHONPATH=. python benchmarks/icm_claim_signal.py --model /work/scratch/smollm2-hf      (CPU; about 2 min)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def auroc(margins: list[float], gold: list[int]) -> float:
    """Probability that a true claim scores above a false one (ties count half)."""
    true = [m for m, g in zip(margins, gold, strict=True) if g == 1]
    false = [m for m, g in zip(margins, gold, strict=True) if g == 0]
    wins = sum((t > f) + 0.5 * (t == f) for t in true for f in false)
    return wins / (len(true) * len(false))


def zero_shot(engine, builder, examples) -> dict:
    from workflow_scripts.icm.prompts import Query
    from workflow_scripts.icm.scoring import label_margin

    prompts = [builder.token_ids(Query(example.uid, ())) for example in examples]
    margins = [label_margin(candidates) for candidates in engine.next_token_logprobs(prompts, 20)]
    gold = [example.gold for example in examples]
    answers = [int(margin > 0) for margin in margins]
    return {
        "claims": len(examples),
        "accuracy": round(sum(a == g for a, g in zip(answers, gold, strict=True)) / len(gold), 4),
        "answered_true": round(sum(answers) / len(answers), 4),
        "auroc": round(auroc(margins, gold), 4),
        "no_label_in_top_20": sum(margin == 0.0 for margin in margins),
        "margins": [round(m, 4) for m in margins],
    }


# Prompts for a claim: the generic format's default, and two closer to the reference's TruthfulQA prompt.
TEMPLATES = {
    "plain": "{text}\nI think this claim is ",
    "claim": "Claim: {text}\nI think this claim is ",
    "question": "Question: Is this claim true or false?\nClaim: {text}\nI think this claim is ",
    "answer": "True or false? {text}\nAnswer: ",
    "statement": "Statement: {text}\nThis statement is ",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path, help="an HF model folder (SmolLM2-135M-Instruct)")
    parser.add_argument("--out", type=Path, default=HERE / "results")
    parser.add_argument("--sets", nargs="+", help="claim sets to score (default: all)")
    parser.add_argument("--templates", nargs="+", choices=TEMPLATES, help="templates to try (default: all)")
    args = parser.parse_args()

    from harness import new_record, save_result
    from old_prompts import TrailingSpacePromptBuilder

    from workflow_scripts.engines import EngineSettings, open_engine
    from workflow_scripts.icm.claim_sets import CLAIM_SETS, write_claim_set
    from workflow_scripts.icm.data import load_dataset
    from workflow_scripts.icm.prompts import PromptBuilder

    engine = open_engine(EngineSettings(kind="transformers", model_path=str(args.model), dtype="float32"))
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.sets or CLAIM_SETS:
            path = write_claim_set(name, Path(folder) / f"{name}.jsonl")
            for template_name in args.templates or TEMPLATES:
                template = TEMPLATES[template_name]
                examples = load_dataset(path, "generic", template).examples
                results[f"{name}/{template_name}"] = {
                    "query_cut_at_the_label": zero_shot(engine, PromptBuilder(engine.tokenizer, examples), examples),
                    "old_query_with_trailing_space": zero_shot(
                        engine, TrailingSpacePromptBuilder(engine.tokenizer, examples), examples
                    ),
                }
    print("| claim set / template | prompts | zero-shot accuracy | answered True | AUROC | no label in top 20 |")
    print("|---|---|---|---|---|---|")
    for name, by_builder in results.items():
        for builder, row in by_builder.items():
            print(f"| {name} | {builder} | {row['accuracy']:.1%} | {row['answered_true']:.1%} | "
                  f"{row['auroc']:.3f} | {row['no_label_in_top_20']} |")  # fmt: skip
    record = new_record("icm_claim_signal", model=str(args.model), templates=TEMPLATES, results=results)
    save_result(args.out, "icm_claim_signal", record)


if __name__ == "__main__":
    main()
