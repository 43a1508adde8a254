"""The figures of `snakemake --report report.html`: HTML tables and SVG plots made from each stage's JSON artifacts.

Each module renders one stage's artifacts (`models.py`: verification.json and plans/*.json; `kd.py`: a KD job's
summary.json and dataset; `icm.py`: an ICM job's report.json and labels.jsonl) as self-contained files that
Snakemake's report embeds: no script, no stylesheet or font from a network, so the report renders offline.
"""
