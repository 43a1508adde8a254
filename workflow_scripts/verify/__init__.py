"""The verification report: files, headers, config, tensors, numerics and parallel plans of a model folder."""
