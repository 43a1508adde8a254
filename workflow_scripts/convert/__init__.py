"""Conversions from training checkpoints to HF model folders, one module per source format."""
