"""Closed sets of names offered by the CLI and the config, kept here so importing them costs nothing."""

OUTPUT_DTYPES = ("float32", "float16", "bfloat16")
CONSOLIDATE_INPUT_TYPES = ("deepspeed", "hf_sharded", "auto")
TINY_ARCHITECTURES = ("llama", "qwen3")
TINY_LAYOUTS = ("safetensors", "safetensors_sharded", "bin", "bin_sharded", "bin_nested")
