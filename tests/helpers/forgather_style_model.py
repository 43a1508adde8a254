"""A custom model in Forgather's style, with its own module names and its own parallel plans.

Forgather names its layers semantically (`layer_stack.layers.N.attention.query_linear`, `feedforward.up_proj`)
and declares `_tp_plan`, `_pp_plan` and `_no_split_modules` on the model class; the plan tests use it with
correct, missing and wrong plans.
"""

from __future__ import annotations

from torch import nn
from transformers import PretrainedConfig, PreTrainedModel

TP_PLAN = {
    "model.layer_stack.layers.*.attention.query_linear": "colwise",
    "model.layer_stack.layers.*.attention.key_linear": "colwise",
    "model.layer_stack.layers.*.attention.value_linear": "colwise",
    "model.layer_stack.layers.*.attention.output_linear": "rowwise",
    "model.layer_stack.layers.*.feedforward.gate_proj": "colwise",
    "model.layer_stack.layers.*.feedforward.up_proj": "colwise",
    "model.layer_stack.layers.*.feedforward.down_proj": "rowwise",
}
PP_PLAN = {
    "model.input_encoder": (["input_ids"], ["hidden_states"]),
    "model.layer_stack": (["hidden_states", "attention_mask"], ["hidden_states"]),
    "model.output_decoder": (["hidden_states"], ["logits"]),
}


class ForgatherConfig(PretrainedConfig):
    model_type = "forgather_dynamic_causal_lm"

    def __init__(
        self,
        hidden_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=128,
        num_hidden_layers=2,
        vocab_size=512,
        **kwargs,
    ):
        self.hidden_size = hidden_size
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.vocab_size = vocab_size
        kwargs.setdefault("architectures", ["DynamicCausalLM"])
        super().__init__(**kwargs)


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        head_dim = config.hidden_size // config.num_attention_heads
        self.query_linear = nn.Linear(config.hidden_size, config.hidden_size, bias=False)
        self.key_linear = nn.Linear(config.hidden_size, config.num_key_value_heads * head_dim, bias=False)
        self.value_linear = nn.Linear(config.hidden_size, config.num_key_value_heads * head_dim, bias=False)
        self.output_linear = nn.Linear(config.hidden_size, config.hidden_size, bias=False)


class FeedForward(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)


class PreLNLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm1 = nn.LayerNorm(config.hidden_size)
        self.attention = Attention(config)
        self.norm2 = nn.LayerNorm(config.hidden_size)
        self.feedforward = FeedForward(config)

    def forward(self, hidden_states, attention_mask=None):
        return hidden_states


class LayerStack(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList(PreLNLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states, attention_mask=None):
        for layer in self.layers:
            hidden_states = layer(hidden_states, attention_mask)
        return hidden_states


class InputEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.hidden_size)

    def forward(self, input_ids):
        return self.embedding(input_ids)


class OutputDecoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.output_projection = nn.Linear(config.hidden_size, config.vocab_size, bias=False)

    def forward(self, hidden_states):
        return self.output_projection(hidden_states)


class CausalLM(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.input_encoder = InputEncoder(config)
        self.layer_stack = LayerStack(config)
        self.output_decoder = OutputDecoder(config)


class DynamicCausalLM(PreTrainedModel):
    config_class = ForgatherConfig
    base_model_prefix = "model"
    _no_split_modules = ["PreLNLayer"]

    def __init__(self, config, tp_plan=None, pp_plan=None, no_split=None):
        super().__init__(config)
        self.model = CausalLM(config)
        self.post_init()
        # Set after post_init, which may rebuild the plans from the class and the config.
        self._tp_plan = dict(TP_PLAN if tp_plan is None else tp_plan)
        self._pp_plan = dict(PP_PLAN if pp_plan is None else pp_plan)
        if no_split is not None:
            self._no_split_modules = no_split
