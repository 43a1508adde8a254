"""Internal Coherence Maximization (Wen et al. 2025, "Unsupervised Elicitation of Language Models"): labels for a
dataset without gold labels, found by searching for the labeling the model finds most mutually predictable and
logically consistent.

- `data`: the reference's testbeds (TruthfulQA, GSM8K verification, Alpaca comparisons) and a generic JSONL format;
- `consistency`: the logical relations between claims and the consistency-fix step;
- `prompts`: few-shot prompts as token ids, assembled from pieces tokenized once;
- `scoring`: the label's log-odds from the next token's top log-probabilities, one engine call per batch;
- `algorithm`: the search (simulated annealing over labelings), its state and resume;
- `job`: a job's settings (data, search, engine), declared once: its config entry, flags and argv;
- `run`: a job end to end, writing `labels.jsonl` and `report.json`.
"""
