"""Closed sets of names offered by the CLI and the config, kept here so importing them costs nothing."""

OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
CONSOLIDATE_INPUT_TYPES = ("deepspeed", "hf_sharded", "auto")
TINY_ARCHITECTURES = ("llama", "qwen3")
TINY_LAYOUTS = ("safetensors", "safetensors_sharded", "bin", "bin_sharded", "bin_nested")
ORIGINAL_DTYPE = "original"  # keep each tensor's stored dtype
CONVERSION_DTYPES = (*OUTPUT_DTYPES, ORIGINAL_DTYPE)
WEIGHTS_FORMATS = ("safetensors", "pytorch_bin")
# Training checkpoint formats `distillery lay-out` writes an HF model as (layouts/).
LAYOUTS = ("hf-bin-sharded", "titan-dcp", "deepspeed-zero", "maxtext")
ZERO_STAGES = (2, 3)
