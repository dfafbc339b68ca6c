"""The two things gpt-study's models can have that no stock transformers class computes.

- ``GPTStudyForCausalLM``: GPT-2 with a bias on its output layer (the study's model).
- ``GPTStudyLlamaForCausalLM``: Llama whose listed layers add a token table of their own to
  their attention values (``--value_embeds``: ``v = v_proj(h) + value_embed[token]``).

gpt-study's ``export`` copies this file into the exported folder; its ``config.json`` names the
classes in ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` loads them. Everything else (attention, cache, generation) is
``GPT2LMHeadModel``'s and ``LlamaForCausalLM``'s own code.
"""

import torch
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM


class GPTStudyConfig(GPT2Config):
    """GPT-2's configuration under its own model type, so the auto classes find ours."""

    model_type = "gpt_study"


class GPTStudyForCausalLM(GPT2LMHeadModel):
    """``GPT2LMHeadModel`` whose ``lm_head`` has a bias, as gpt-study's ``head`` has."""

    config_class = GPTStudyConfig

    def __init__(self, config: GPTStudyConfig) -> None:
        super().__init__(config)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.post_init()


class GPTStudyLlamaConfig(LlamaConfig):
    """Llama's configuration plus ``value_embed_layers``: the layers that have a value table."""

    model_type = "gpt_study_llama"

    def __init__(self, value_embed_layers: list[int] | None = None, **kwargs) -> None:
        self.value_embed_layers = list(value_embed_layers or [])
        super().__init__(**kwargs)


class ValueEmbedProjection(nn.Linear):
    """Llama's ``v_proj`` plus a token table: the values of the tokens in :attr:`ids`."""

    def __init__(self, in_features: int, out_features: int, bias: bool, vocab_size: int) -> None:
        super().__init__(in_features, out_features, bias=bias)
        self.value_embed = nn.Embedding(vocab_size, out_features)
        self.ids: torch.Tensor | None = None  # (B, T), set by the model before each forward

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.ids is None:
            raise ValueError("value embeddings need input_ids (inputs_embeds has no tokens)")
        return super().forward(hidden) + self.value_embed(self.ids).to(hidden.dtype)


class GPTStudyLlamaForCausalLM(LlamaForCausalLM):
    """``LlamaForCausalLM`` whose ``value_embed_layers`` add value embeddings."""

    config_class = GPTStudyLlamaConfig

    def __init__(self, config: GPTStudyLlamaConfig) -> None:
        super().__init__(config)
        for i in config.value_embed_layers:
            attn = self.model.layers[i].self_attn
            old = attn.v_proj
            attn.v_proj = ValueEmbedProjection(
                old.in_features, old.out_features, old.bias is not None, config.vocab_size
            )
        self.post_init()

    def forward(self, input_ids: torch.Tensor | None = None, **kwargs):
        for i in self.config.value_embed_layers:
            self.model.layers[i].self_attn.v_proj.ids = input_ids  # the new tokens only
        return super().forward(input_ids=input_ids, **kwargs)
