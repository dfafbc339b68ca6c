"""GPT-2 with a bias on its output layer: the one thing gpt-study's model has that no stock
transformers class does.

gpt-study's ``export`` copies this file into the exported folder; its ``config.json`` names these
classes in ``auto_map``, so ``AutoModelForCausalLM.from_pretrained(folder,
trust_remote_code=True)`` loads them. Everything else (attention, cache, generation) is
``GPT2LMHeadModel``'s own code.
"""

from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel


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
