"""Laying an HF model out as the training checkpoints users bring (`distillery lay-out`), to convert back.

Each layout is written by the format's writer (formats/) from the HF folder's tensors one at a time, staged and
renamed into place with provenance.json (run.py); the product's converters read it back, and verification
compares the result with the HF folder it came from.
"""
