"""Will it shard? Module structure, tensor/pipeline-parallel plan checks and vLLM's split arithmetic."""
