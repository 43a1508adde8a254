"""Readers and writers of checkpoint formats, one module per format."""
