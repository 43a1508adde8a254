"""Model architectures: what a config implies (tensor names and shapes, ties), and tiny models for tests."""
