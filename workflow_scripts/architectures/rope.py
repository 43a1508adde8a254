"""Rotary-embedding settings shared by the Llama families that MaxText and TorchTitan train."""

# Llama 3.1's frequency scaling, as HF's `llama3` rope type names it (MaxText's
# LLaMARotaryEmbedding._apply_scaling_factor and TorchTitan's Llama 3 use the same constants).
LLAMA3_ROPE_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
