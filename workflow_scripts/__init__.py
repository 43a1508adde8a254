"""distillery: training checkpoints to vLLM-ready teacher models, and from them to data."""

__version__ = "0.1.0"
