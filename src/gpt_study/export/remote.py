"""Classes of ours for what no stock transformers class computes, one per layout.

``export`` copies :data:`REMOTE_FILE` into a folder whose model needs its layout's class (a
GPT-2 head bias that is not all zeros, a Llama with value embeddings) and names the class in
``config.json``'s ``auto_map``; ``import`` reads such a folder with gpt-study's own copy of the
file. A :class:`Remote` says which class that is and when a model needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LLAMA_REMOTE", "GPT2_REMOTE", "REMOTE_FILE", "Remote"]

REMOTE_FILE = "modeling_gpt_study.py"


@dataclass(frozen=True)
class Remote:
    """A class of ours in :data:`REMOTE_FILE`, for the models of a layout that its stock class
    would compute otherwise: export writes the file into the folder when ``needed(model)``."""

    model_class: str
    config_class: str
    model_type: str
    what: str  # what the model has that the stock class lacks, in words
    adds: str  # the class in words: the stock class and what it adds
    detail: str  # the same for the README, a sentence in Markdown
    needed: Callable[[Any], bool]  # given the GPT


def _biased_head(model: Any) -> bool:
    """A head bias that is not all zeros: the stock GPT-2 class would drop it."""
    bias = getattr(model.head, "bias", None)
    return bias is not None and bool(bias.detach().ne(0).any())


GPT2_REMOTE = Remote(
    "GPTStudyForCausalLM",
    "GPTStudyConfig",
    "gpt_study",
    "the output layer has a bias",
    "GPT2LMHeadModel with a biased lm_head",
    "`GPT2LMHeadModel` with `lm_head = nn.Linear(n_embd, vocab_size, bias=True)`, nothing else "
    "changed.",
    _biased_head,
)
LLAMA_REMOTE = Remote(
    "GPTStudyLlamaForCausalLM",
    "GPTStudyLlamaConfig",
    "gpt_study_llama",
    "the model has value embeddings",
    "LlamaForCausalLM whose value_embed_layers add a token table to v_proj",
    "`LlamaForCausalLM` whose layers listed in `value_embed_layers` add the token's row of a "
    "table of their own (`v_proj.value_embed`) to `v_proj`'s output, nothing else changed.",
    lambda model: model.config.value_embeds,
)
