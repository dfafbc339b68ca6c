"""The model's architecture settings, one section of :class:`~gpt_study.config.Config`.

Every option defaults to the study's choice, so the ``seed`` preset stays the study's model
(19,672,880 parameters at 30,000 words, the same outputs for the same weights). The others are
there to be studied; each names its paper in ``docs/options.md``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from gpt_study.config.fields import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    check_choices,
    check_ranges,
    doc,
)
from gpt_study.runtime.errors import UserError

POSITIONS = ("learned", "rope")
NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "swiglu", "relu2", "gelu_tanh")
# Settings that change only the initial weights, never what trained weights compute: an export or
# an import need not know them.
INIT_ONLY = ("zero_init",)


@dataclass
class GPTConfig:
    """Architecture of the decoder (the study's defaults: 19,672,880 parameters at 30,000 words)."""

    vocab_size: int = field(
        default=30000, metadata=doc("set from the tokenizer when training", cli=False)
    )
    max_len: int = field(
        default=256, metadata=doc("longest context: rows of the learned position table")
    )
    d_model: int = field(default=256, metadata=doc("width of the residual stream"))
    d_ff: int = field(default=512, metadata=doc("hidden width of the feed-forward layer"))
    n_layers: int = field(default=8, metadata=doc("decoder blocks"))
    n_heads: int = field(default=16, metadata=doc("attention heads (must divide d_model)"))
    attention_drop: float = field(default=0.1, metadata=doc("dropout on attention weights"))
    residual_drop: float = field(default=0.1, metadata=doc("dropout on each residual branch"))
    embedding_drop: float = field(default=0.1, metadata=doc("dropout after the embeddings"))
    inner_drop: float | None = field(
        default=None,
        metadata=doc(
            "dropout on the feed-forward's hidden activations (unset: --residual_drop, the "
            "study's; 0: none, as GPT-2, nanoGPT and Llama)"
        ),
    )
    positions: str = field(
        default="learned",
        metadata=doc("learned (the study) or rope (rotary, relative)", choices=list(POSITIONS)),
    )
    rope_base: float = field(default=10000.0, metadata=doc("rope: base of the rotation periods"))
    norm: str = field(
        default="layernorm",
        metadata=doc("layernorm (the study) or rmsnorm", choices=list(NORMS)),
    )
    mlp: str = field(
        default="gelu",
        metadata=doc(
            "gelu (the study), swiglu (gated, 3 matrices), relu2 (squared ReLU) or gelu_tanh "
            "(GELU's tanh approximation, GPT-2's)",
            choices=list(MLPS),
        ),
    )
    tie_embeddings: bool = field(
        default=False, metadata=doc("the output layer shares the token embedding's weights")
    )
    bias: bool = field(default=True, metadata=doc("biases in the attention and MLP linears"))
    norm_bias: bool = field(default=True, metadata=doc("biases of the LayerNorms"))
    head_bias: bool = field(default=True, metadata=doc("a bias on the output layer (the study)"))
    qk_norm: bool = field(default=False, metadata=doc("RMS-normalise each head's queries and keys"))
    zero_init: bool = field(
        default=False,
        metadata=doc("start each block's output projections at zero: blocks begin as identities"),
    )
    residual_scalars: bool = field(
        default=False,
        metadata=doc(
            "two learned scalars per block: block i reads a_i x + b_i x0, x0 the embeddings "
            "(a from 1, b from 0: nanochat's resid_lambdas and x0_lambdas)"
        ),
    )

    value_embeds: bool = field(
        default=False,
        metadata=doc(
            "value embeddings: every other block, the last included, adds a token embedding "
            "table of its own to its attention values (modded-nanogpt, nanochat)"
        ),
    )
    logit_softcap: float = field(
        default=0.0,
        metadata=doc(
            "cap the output logits smoothly at +-c: c * tanh(z / c) (Gemma 2, modded-nanogpt); "
            "0: off"
        ),
    )

    RANGES: ClassVar[dict[str, Range]] = {
        "vocab_size": Range(4, 65535, why="it does not fit uint16 token ids"),
        **dict.fromkeys(("max_len", "d_model", "d_ff", "n_layers", "n_heads"), AT_LEAST_1),
        **dict.fromkeys(
            ("attention_drop", "residual_drop", "embedding_drop", "inner_drop"), PROBABILITY
        ),
        "rope_base": POSITIVE,
        "logit_softcap": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)
        check_choices(self)
        if self.d_model % self.n_heads:
            raise UserError(
                f"--n_heads {self.n_heads} does not divide --d_model {self.d_model}: "
                "pick a head count that divides the width"
            )
        if self.positions == "rope" and (self.d_model // self.n_heads) % 2:
            raise UserError(
                f"--positions rope rotates pairs of dimensions, but a head has "
                f"{self.d_model // self.n_heads}: pick --n_heads so that d_model / n_heads is even"
            )

    @property
    def inner_dropout(self) -> float:
        """The feed-forward's inner dropout: ``inner_drop``, or ``residual_drop`` when unset."""
        return self.residual_drop if self.inner_drop is None else self.inner_drop

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def value_embed_layers(self) -> tuple[int, ...]:
        """The blocks that add value embeddings (``--value_embeds``): every other one, counted
        back from the last, as nanochat places them."""
        if not self.value_embeds:
            return ()
        return tuple(range((self.n_layers - 1) % 2, self.n_layers, 2))
