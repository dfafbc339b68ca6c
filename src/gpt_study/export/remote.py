"""Classes of ours for what no stock transformers class computes, one per layout.

``export`` copies :data:`REMOTE_FILE` into a folder whose model needs its layout's class (a
head bias that is not all zeros, value embeddings, the other norm, a gated feed-forward in GPT-2,
soft-capped logits, residual scalars)
and names the class in ``config.json``'s ``auto_map``; ``import`` reads such a folder with
gpt-study's own copy of the file. A :class:`Remote` says which class that is and, feature by
feature, when a model needs it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["LLAMA_REMOTE", "GPT2_REMOTE", "REMOTE_FILE", "Feature", "Remote"]

REMOTE_FILE = "modeling_gpt_study.py"


@dataclass(frozen=True)
class Feature:
    """One thing a class of ours computes that its stock class does not."""

    what: str  # what a model that needs it has, in words
    change: str  # how the class computes it, in Markdown, for the README
    needed: Callable[[Any], bool]  # given the GPT


@dataclass(frozen=True)
class Remote:
    """A class of ours in :data:`REMOTE_FILE`, for the models of a layout that its stock class
    would compute otherwise: export writes the file into the folder when :meth:`needed`."""

    model_class: str
    config_class: str
    model_type: str
    features: tuple[Feature, ...]
    # as Layout.zero_filled: bias options whose biases the class always has
    zero_filled: tuple[str, ...] = ()

    def needed(self, model: Any) -> bool:
        return any(f.needed(model) for f in self.features)

    def what(self, model: Any) -> str:
        """What ``model`` has that the stock class lacks, in words."""
        return " and ".join(f.what for f in self.features if f.needed(model))

    def detail(self, stock_class: str) -> str:
        """The class in a Markdown sentence, for the README: ``stock_class`` (its layout's) and
        what it adds."""
        changes = "; ".join(f.change for f in self.features)
        return f"`{stock_class}` with {changes}; nothing else changed."


def _biased_head(model: Any) -> bool:
    """A head bias that is not all zeros: the stock GPT-2 class would drop it."""
    bias = getattr(model.head, "bias", None)
    return bias is not None and bool(bias.detach().ne(0).any())


# The logits capped as gpt_study.model.gpt.softcap caps them, in both classes of ours.
SOFTCAP = Feature(
    "the logits are soft-capped",
    "the logits capped to `final_logit_softcapping * tanh(logits / final_logit_softcapping)` "
    "where that is above 0 (`lm_head` computes it, so loss and generation read them)",
    lambda model: model.config.logit_softcap > 0,
)


def _value_embeds(table: str, adds_to: str) -> Feature:
    """--value_embeds, in the class whose ``table`` adds to ``adds_to``."""
    return Feature(
        "the model has value embeddings",
        f"the layers listed in `value_embed_layers` adding the token's row of a table of their "
        f"own (`{table}`) to {adds_to}",
        lambda model: model.config.value_embeds,
    )


# --norm where the stock class has the other norm: torch's own in each norm's place
RMS_NORMS = Feature(
    "the norms are RMSNorms",
    'each LayerNorm an `nn.RMSNorm` of the same eps where `norm_type` is `"rms_norm"`',
    lambda model: model.config.norm == "rmsnorm",
)
LAYER_NORMS = Feature(
    "the norms are LayerNorms",
    "each RMSNorm an `nn.LayerNorm` of the same eps, with a bias, where `norm_type` is "
    '`"layer_norm"`',
    lambda model: model.config.norm == "layernorm",
)
# --mlp swiglu in a class whose feed-forward is plain
GATED = Feature(
    "the feed-forward is gated (SwiGLU)",
    "each feed-forward's first projection twice as wide, making [gate; value], and "
    "`act(gate) * value` after it where `gated_mlp` is true (`act` the `activation_function`, "
    '`"silu"`: SwiGLU)',
    lambda model: model.config.mlp == "swiglu",
)

PLAIN = Feature(
    "the feed-forward has no gate",
    "each feed-forward `down_proj(act(up_proj(x)))` (no `gate_proj`; `act` the `hidden_act`) "
    "where `gated_mlp` is false",
    lambda model: model.config.mlp != "swiglu",
)

# --qk_norm, in both (Qwen3's stock class has it with Llama's other options only)
QK_NORM = Feature(
    "each head's queries and keys are RMS-normalised",
    "each head's queries and keys RMS-normalised by the attention's `q_norm` and `k_norm` (a "
    "hook on the projection that makes them) where `qk_norm` is true",
    lambda model: model.config.qk_norm,
)

# --residual_scalars, in both: the stock layers read the scalars' mix through hooks.
SCALARS = Feature(
    "the blocks have residual scalars",
    "layer i reading `scalars.resid_scale[i] * h + scalars.x0_scale[i] * x0` (x0: the "
    "embeddings) where `residual_scalars` is true",
    lambda model: model.config.residual_scalars,
)
GPT2_REMOTE = Remote(
    "GPTStudyForCausalLM",
    "GPTStudyConfig",
    "gpt_study",
    (
        Feature(
            "the output layer has a bias",
            "`lm_head = nn.Linear(n_embd, vocab_size, bias=True)` (zeros where the model has none)",
            _biased_head,
        ),
        _value_embeds("attn.c_attn.value_embed", "the values `c_attn` makes"),
        RMS_NORMS,
        GATED,
        QK_NORM,
        SOFTCAP,
        SCALARS,
    ),
    zero_filled=("head_bias",),
)
LLAMA_REMOTE = Remote(
    "GPTStudyLlamaForCausalLM",
    "GPTStudyLlamaConfig",
    "gpt_study_llama",
    (
        Feature(  # any head bias, zeros too: the stock class's config cannot say it has one
            "the output layer has a bias",
            "`lm_head` with a bias where `lm_head_bias` is true",
            lambda model: model.config.head_bias,
        ),
        _value_embeds("v_proj.value_embed", "`v_proj`'s output"),
        LAYER_NORMS,
        PLAIN,
        QK_NORM,
        SOFTCAP,
        SCALARS,
    ),
    zero_filled=("norm_bias",),
)
