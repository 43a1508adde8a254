"""Sequence-KD data generation: parquet rows → prompts → teacher completions, one JSONL file per chunk.

manifest.py lists the chunks from parquet footers; chunk.py generates one chunk, resumably; dataset.py merges
the chunks into the dataset and its summary; status.py tells what is done.
"""
