"""The layouts' tables: how each transformers architecture holds a gpt-study model, as data that
:mod:`~gpt_study.export.layouts` reads both ways (export and import). The first table that fits
a model is the one it is exported as (:func:`~gpt_study.export.hf.choose_layout`): a layout whose
stock class computes a model comes before one whose class of ours would compute it too.

Four layouts. ``gpt2`` (Radford et al. 2019): learned positions, pre-LayerNorm blocks, GELU (exact,
or GPT-2's own tanh approximation ``gelu_new``: ``--mlp gelu_tanh``) or ReLU² (transformers'
``relu2``), biases, tied head or not. ``llama`` (Touvron et al. 2023): rotary positions, RMSNorm,
SwiGLU, no head bias; ``LlamaForCausalLM`` computes them exactly (the same "rotate half" rotary
pairs and inverse frequencies, RMSNorm eps 1e-5, ``down(silu(gate(x)) * up(x))``). ``qwen3``
(Qwen team 2025): Llama whose heads' queries and keys are RMS-normalised before the rotary
positions (``--qk_norm``: ``q_norm``, ``k_norm``) and whose feed-forward has no biases.
``gpt_neox`` (Black et al. 2022, Pythia's): rotary positions with LayerNorm and a plain
feed-forward, blocks one after the other, rotary on whole heads; its fused ``query_key_value``
holds each head's q, k and v together (``BY_HEAD``). Whatever a stock GPT-2 or Llama lacks (a
head bias, the other norm, a gated or plain feed-forward, qk-norm, value embeddings, capped
logits, residual scalars) their classes of ours add (:mod:`~gpt_study.export.remote`), so every
combination of model options has a layout.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

from gpt_study.config import GPTConfig
from gpt_study.export.layouts import AS_IS, BY_HEAD, TRANSPOSED, Fixed, Layout, Option
from gpt_study.export.remote import GPT2_REMOTE, LLAMA_REMOTE
from gpt_study.model.gpt import NORM_EPS

__all__ = ["ACTIVATIONS", "LAYOUTS"]


def _const(value: Any) -> Callable[[GPTConfig], Any]:
    return lambda _cfg: value


# our classes' options (the cap under Gemma 2's name), read from our classes only (Layout.classes)
_SOFTCAP = Option("logit_softcap", "final_logit_softcapping", absent=lambda _d: 0.0, optional=True)
_SCALARS = Option("residual_scalars", "residual_scalars", absent=lambda _d: False, optional=True)
_QK_NORM = Option("qk_norm", "qk_norm", absent=lambda _d: False, optional=True)
# what a stock class computes (Qwen3's qk_norm is implied by its own layout)
_STOCK = {"logit_softcap": 0.0, "residual_scalars": False, "qk_norm": False}
# our classes only (None: not written): the layers that add value embeddings, which import
# reads as --value_embeds (and the check, as the layers that option gives)
_VALUE_EMBED_LAYERS = Fixed(
    "value_embed_layers",
    lambda c: list(c.value_embed_layers) or None,
    "value embeddings in other layers",
)


def _has_value_embeds(d: dict[str, Any]) -> bool:
    return bool(d.get("value_embed_layers"))


# --norm under our classes' key (absent: the stock class's own norm)
_NORM_TYPES = (("layernorm", "layer_norm"), ("rmsnorm", "rms_norm"))


def _norm_type(stock: str) -> Option:
    return Option("norm", "norm_type", _NORM_TYPES, absent=lambda _d: stock, optional=True)


_SCALAR_WEIGHTS = (
    ("resid_scale", "scalars.resid_scale", AS_IS),  # our classes only
    ("x0_scale", "scalars.x0_scale", AS_IS),
)

# the feed-forward activations GPT-2, GPT-NeoX and GPT-Neo read from transformers' ACT2FN: exact erf
# GELU is F.gelu; "gelu_new" (and torch's "gelu_pytorch_tanh") is tanh's; "relu2" squares a ReLU
ACTIVATIONS = (
    ("gelu", "gelu"),
    ("gelu_tanh", "gelu_new"),
    ("gelu_tanh", "gelu_pytorch_tanh"),
    ("relu2", "relu2"),
)
# the biases of a class that always has them on its linears and norms (GPT-2, GPT-NeoX)
_EVERY_BIAS = ("bias", "norm_bias")

# --mlp under two keys: the activation (SwiGLU's is "silu") and whether it gates (our classes'
# gated_mlp: in GPT-2 a c_fc twice as wide making [gate; value], in Llama up_proj alone)
_GATED = (("swiglu", True), *((v, False) for v, _ in ACTIVATIONS))


def _mlp(key: str, stock_gated: bool) -> tuple[Option, Option]:
    why = "a gate on another activation than SiLU, or SiLU without a gate"
    return (
        Option("mlp", key, (*ACTIVATIONS, ("swiglu", "silu"))),
        Option("mlp", "gated_mlp", _GATED, absent=lambda _d: stock_gated, why=why, optional=True),
    )


def _gated(cfg: GPTConfig) -> bool:
    return cfg.mlp == "swiglu"


def _plain(cfg: GPTConfig) -> bool:
    return cfg.mlp != "swiglu"


_GPT2 = Layout(
    name="gpt2",
    arch="GPT-2",
    model_type="gpt2",
    stock_class="GPT2LMHeadModel",
    implied=(("positions", "learned", ""),),
    options=(
        Option("vocab_size", "vocab_size"),
        Option("max_len", "n_positions"),
        Option("d_model", "n_embd"),
        Option("n_layers", "n_layer"),
        Option("n_heads", "n_head"),
        Option("d_ff", "n_inner", absent=lambda c: 4 * c["n_embd"]),
        *_mlp("activation_function", stock_gated=False),
        _norm_type("layer_norm"),
        Option("residual_drop", "resid_pdrop"),
        Option("embedding_drop", "embd_pdrop"),
        Option("attention_drop", "attn_pdrop"),
        Option("tie_embeddings", "tie_word_embeddings"),
        _QK_NORM,
        _SOFTCAP,
        _SCALARS,
    ),
    fixed=(
        Fixed("layer_norm_epsilon", _const(NORM_EPS), "another LayerNorm eps"),
        Fixed("scale_attn_weights", _const(True), "attention without the 1/sqrt(head_dim) scale"),
        Fixed(
            "scale_attn_by_inverse_layer_idx", _const(False), "attention scaled by 1/layer number"
        ),
        Fixed("add_cross_attention", _const(False), "cross-attention to an encoder"),
        Fixed("reorder_and_upcast_attn", _const(False), check=False),  # the same in fp32
        Fixed("initializer_range", _const(0.02), check=False),
        Fixed("use_cache", _const(True), check=False),
        _VALUE_EMBED_LAYERS,
    ),
    weights=(
        ("tok_emb.weight", "transformer.wte.weight", AS_IS),
        ("pos_emb.weight", "transformer.wpe.weight", AS_IS),
        ("blocks.{i}.ln1.weight", "transformer.h.{i}.ln_1.weight", AS_IS),
        ("blocks.{i}.ln1.bias", "transformer.h.{i}.ln_1.bias", AS_IS),
        ("blocks.{i}.attn.qkv.weight", "transformer.h.{i}.attn.c_attn.weight", TRANSPOSED),
        ("blocks.{i}.attn.qkv.bias", "transformer.h.{i}.attn.c_attn.bias", AS_IS),
        ("blocks.{i}.attn.proj.weight", "transformer.h.{i}.attn.c_proj.weight", TRANSPOSED),
        ("blocks.{i}.attn.proj.bias", "transformer.h.{i}.attn.c_proj.bias", AS_IS),
        ("blocks.{i}.ln2.weight", "transformer.h.{i}.ln_2.weight", AS_IS),
        ("blocks.{i}.ln2.bias", "transformer.h.{i}.ln_2.bias", AS_IS),
        ("blocks.{i}.mlp.fc.weight", "transformer.h.{i}.mlp.c_fc.weight", TRANSPOSED),
        ("blocks.{i}.mlp.fc.bias", "transformer.h.{i}.mlp.c_fc.bias", AS_IS),
        ("blocks.{i}.mlp.proj.weight", "transformer.h.{i}.mlp.c_proj.weight", TRANSPOSED),
        ("blocks.{i}.mlp.proj.bias", "transformer.h.{i}.mlp.c_proj.bias", AS_IS),
        ("blocks.{i}.attn.q_norm.weight", "transformer.h.{i}.attn.q_norm.weight", AS_IS),  # ours
        ("blocks.{i}.attn.k_norm.weight", "transformer.h.{i}.attn.k_norm.weight", AS_IS),
        ("ln_f.weight", "transformer.ln_f.weight", AS_IS),
        ("ln_f.bias", "transformer.ln_f.bias", AS_IS),
        ("head.weight", "lm_head.weight", AS_IS),
        ("head.bias", "lm_head.bias", AS_IS),  # only the remote class has it
        ("value_embeds.{i}.weight", "transformer.h.{i}.attn.c_attn.value_embed.weight", AS_IS),
        *_SCALAR_WEIGHTS,
    ),
    summary="GPT-2 layout: learned positions, pre-LayerNorm blocks, GELU (exact, "
    '`activation_function: "gelu"`, or tanh\'s, `"gelu_new"`) or ReLU² (`"relu2"`), the output '
    "layer tied or not",
    # GPT-2's feed-forward has no inner dropout: an imported model fine-tunes without one. It
    # always has biases: a model without them (nanoGPT's default) is GPT-2 with zeros there.
    tolerated={"inner_drop": 0.0},
    zero_filled=_EVERY_BIAS,
    classes={
        "GPT2LMHeadModel": {
            "head_bias": False,
            "value_embeds": False,
            "norm": "layernorm",
            **_STOCK,
        },
        # (a zero head bias where the model had none)
        GPT2_REMOTE.model_class: {"head_bias": True, "value_embeds": _has_value_embeds},
    },
    remote=GPT2_REMOTE,
)

# the sizes under the names Llama, Qwen3 and GPT-NeoX share
_SIZES = (
    Option("vocab_size", "vocab_size"),
    Option("max_len", "max_position_embeddings"),
    Option("d_model", "hidden_size"),
    Option("d_ff", "intermediate_size"),
    Option("n_layers", "num_hidden_layers"),
    Option("n_heads", "num_attention_heads"),
)
# transformers 5 reads rope_parameters; 4.x read rope_theta
_ROPE_BASE = (Option("rope_base", "rope_parameters.rope_theta"), Option("rope_base", "rope_theta"))
_ATTN = "model.layers.{i}.self_attn."
_MLP = "model.layers.{i}.mlp."
_LLAMA = Layout(
    name="llama",
    arch="Llama",
    model_type="llama",
    stock_class="LlamaForCausalLM",
    implied=(("positions", "rope", ""),),
    options=(
        *_SIZES,
        Option(
            "n_heads",
            "num_key_value_heads",
            why="grouped-query attention; gpt-study gives every head its own keys and values",
        ),
        *_ROPE_BASE,
        Option("bias", "attention_bias"),
        Option("bias", "mlp_bias"),
        Option("attention_drop", "attention_dropout"),
        Option("tie_embeddings", "tie_word_embeddings"),
        Option("head_bias", "lm_head_bias", absent=lambda _d: False, optional=True),
        *_mlp("hidden_act", stock_gated=True),
        _norm_type("rms_norm"),
        _QK_NORM,
        _SOFTCAP,
        _SCALARS,
    ),
    fixed=(
        Fixed("head_dim", lambda cfg: cfg.head_dim, "heads narrower or wider than d_model/n_heads"),
        Fixed("rms_norm_eps", _const(NORM_EPS), "another RMSNorm eps"),
        Fixed("rope_parameters.rope_type", _const("default"), "scaled rotary positions"),
        Fixed("pretraining_tp", _const(1), "tensor-parallel slices of the projections"),
        _VALUE_EMBED_LAYERS,
        Fixed("initializer_range", _const(0.02), check=False),
        Fixed("use_cache", _const(True), check=False),
    ),
    weights=(
        ("tok_emb.weight", "model.embed_tokens.weight", AS_IS),
        ("blocks.{i}.ln1.weight", "model.layers.{i}.input_layernorm.weight", AS_IS),
        ("blocks.{i}.ln1.bias", "model.layers.{i}.input_layernorm.bias", AS_IS),  # LayerNorm's
        ("blocks.{i}.attn.qkv.weight", "|".join(_ATTN + f"{n}_proj.weight" for n in "qkv"), AS_IS),
        ("blocks.{i}.attn.qkv.bias", "|".join(_ATTN + f"{n}_proj.bias" for n in "qkv"), AS_IS),
        ("blocks.{i}.attn.q_norm.weight", _ATTN + "q_norm.weight", AS_IS),  # Qwen3's, our class
        ("blocks.{i}.attn.k_norm.weight", _ATTN + "k_norm.weight", AS_IS),
        ("blocks.{i}.attn.proj.weight", _ATTN + "o_proj.weight", AS_IS),
        ("blocks.{i}.attn.proj.bias", _ATTN + "o_proj.bias", AS_IS),
        ("blocks.{i}.ln2.weight", "model.layers.{i}.post_attention_layernorm.weight", AS_IS),
        ("blocks.{i}.ln2.bias", "model.layers.{i}.post_attention_layernorm.bias", AS_IS),
        ("blocks.{i}.mlp.fc.weight", f"{_MLP}gate_proj.weight|{_MLP}up_proj.weight", AS_IS, _gated),
        ("blocks.{i}.mlp.fc.bias", f"{_MLP}gate_proj.bias|{_MLP}up_proj.bias", AS_IS, _gated),
        ("blocks.{i}.mlp.fc.weight", _MLP + "up_proj.weight", AS_IS, _plain),  # our class
        ("blocks.{i}.mlp.fc.bias", _MLP + "up_proj.bias", AS_IS, _plain),
        ("blocks.{i}.mlp.proj.weight", _MLP + "down_proj.weight", AS_IS),
        ("blocks.{i}.mlp.proj.bias", _MLP + "down_proj.bias", AS_IS),
        ("ln_f.weight", "model.norm.weight", AS_IS),
        ("ln_f.bias", "model.norm.bias", AS_IS),
        ("head.weight", "lm_head.weight", AS_IS),  # not written when tied: transformers ties it
        ("head.bias", "lm_head.bias", AS_IS),  # our class only, as the norms' biases
        ("value_embeds.{i}.weight", _ATTN + "v_proj.value_embed.weight", AS_IS),  # remote only
        *_SCALAR_WEIGHTS,
    ),
    summary="Llama layout: rotary positions, pre-RMSNorm blocks, SwiGLU feed-forward, "
    "no output bias",
    # Llama drops only attention weights; the study's other dropouts stay in the checkpoint
    tolerated={"residual_drop": 0.0, "embedding_drop": 0.0, "inner_drop": 0.0, "norm_bias": True},
    classes={
        "LlamaForCausalLM": {
            "value_embeds": False,
            "head_bias": False,
            "norm": "rmsnorm",
            "mlp": "swiglu",
            **_STOCK,
        },
        LLAMA_REMOTE.model_class: {"value_embeds": _has_value_embeds},
    },
    remote=LLAMA_REMOTE,
)

# Llama's table with its options, checks and weights where Qwen3 has them, and the heads' norms.
# Our --bias puts biases on the feed-forward too, which Qwen3's never has: so none at all here.
_LLAMA_ONLY = {"mlp_bias", "attention_bias", "pretraining_tp", "value_embed_layers"}
_REMOTE_ONLY = {w for w in _LLAMA.weights if w[0].startswith("value_embeds.")} | {*_SCALAR_WEIGHTS}
_LLAMA_ONLY |= {_SOFTCAP.theirs, _SCALARS.theirs, "norm_type", "lm_head_bias", "qk_norm"}
_LLAMA_ONLY |= {"hidden_act", "gated_mlp"}  # Qwen3's feed-forward is SwiGLU (a check below)
_QWEN3 = replace(
    _LLAMA,
    name="qwen3",
    arch="Qwen3",
    model_type="qwen3",
    stock_class="Qwen3ForCausalLM",
    implied=(
        *_LLAMA.implied,
        ("norm", "rmsnorm", ""),
        ("mlp", "swiglu", ""),
        ("head_bias", False, "a head bias (Qwen3's lm_head has none): train with --no-head_bias"),
        ("qk_norm", True, ""),
        ("bias", False, "biases (Qwen3's feed-forward has none): train with --no-bias"),
    ),
    options=tuple(o for o in _LLAMA.options if o.theirs not in _LLAMA_ONLY),
    fixed=(
        *(f for f in _LLAMA.fixed if f.theirs not in _LLAMA_ONLY),
        Fixed("hidden_act", _const("silu"), "another gate activation than SiLU"),
        Fixed("attention_bias", _const(False), "biases on the attention's projections only"),
        Fixed("use_sliding_window", _const(False), "sliding-window attention"),
        Fixed(
            "layer_types",
            lambda c: ["full_attention"] * c.n_layers,
            "sliding-window attention in some layers",
        ),
    ),
    weights=(
        # (the entries of a plain feed-forward never hold: Qwen3 implies SwiGLU)
        *(w for w in _LLAMA.weights if not w[0].endswith(".bias") and w not in _REMOTE_ONLY),
    ),
    summary="Qwen3 layout: rotary positions, pre-RMSNorm blocks, each head's queries and keys "
    "RMS-normalised, SwiGLU feed-forward, no biases",
    classes={"Qwen3ForCausalLM": {}},
    remote=None,
)

_NEOX_LAYER = "gpt_neox.layers.{i}."
_NEOX = Layout(
    name="gpt_neox",
    arch="GPT-NeoX",
    model_type="gpt_neox",
    stock_class="GPTNeoXForCausalLM",
    implied=(
        ("positions", "rope", ""),
        ("norm", "layernorm", ""),
        (
            "head_bias",
            False,
            "a head bias (GPT-NeoX's embed_out has none): train with --no-head_bias",
        ),
    ),
    options=(
        *_SIZES,
        Option("mlp", "hidden_act", ACTIVATIONS),
        *_ROPE_BASE,
        Option("rope_base", "rotary_emb_base"),  # transformers 4.x's GPT-NeoX reads these two
        Option("residual_drop", "hidden_dropout"),
        Option("attention_drop", "attention_dropout"),
        Option("tie_embeddings", "tie_word_embeddings"),
    ),
    fixed=(
        Fixed("layer_norm_eps", _const(NORM_EPS), "another LayerNorm eps"),
        Fixed(
            "use_parallel_residual",
            _const(False),
            "attention and feed-forward side by side on one norm's input (Pythia's parallel blocks)",
        ),
        Fixed(
            "rope_parameters.partial_rotary_factor",
            _const(1.0),
            "rotary positions on part of each head",
        ),
        Fixed("rotary_pct", _const(1.0), "rotary positions on part of each head"),
        Fixed("rope_parameters.rope_type", _const("default"), "scaled rotary positions"),
        Fixed(
            "attention_bias",
            _const(True),
            "attention without biases and a feed-forward with them; gpt-study's --bias sets both",
        ),
        Fixed("initializer_range", _const(0.02), check=False),
        Fixed("use_cache", _const(True), check=False),
    ),
    weights=(
        ("tok_emb.weight", "gpt_neox.embed_in.weight", AS_IS),
        ("blocks.{i}.ln1.weight", _NEOX_LAYER + "input_layernorm.weight", AS_IS),
        ("blocks.{i}.ln1.bias", _NEOX_LAYER + "input_layernorm.bias", AS_IS),
        ("blocks.{i}.attn.qkv.weight", _NEOX_LAYER + "attention.query_key_value.weight", BY_HEAD),
        ("blocks.{i}.attn.qkv.bias", _NEOX_LAYER + "attention.query_key_value.bias", BY_HEAD),
        ("blocks.{i}.attn.proj.weight", _NEOX_LAYER + "attention.dense.weight", AS_IS),
        ("blocks.{i}.attn.proj.bias", _NEOX_LAYER + "attention.dense.bias", AS_IS),
        ("blocks.{i}.ln2.weight", _NEOX_LAYER + "post_attention_layernorm.weight", AS_IS),
        ("blocks.{i}.ln2.bias", _NEOX_LAYER + "post_attention_layernorm.bias", AS_IS),
        ("blocks.{i}.mlp.fc.weight", _NEOX_LAYER + "mlp.dense_h_to_4h.weight", AS_IS),
        ("blocks.{i}.mlp.fc.bias", _NEOX_LAYER + "mlp.dense_h_to_4h.bias", AS_IS),
        ("blocks.{i}.mlp.proj.weight", _NEOX_LAYER + "mlp.dense_4h_to_h.weight", AS_IS),
        ("blocks.{i}.mlp.proj.bias", _NEOX_LAYER + "mlp.dense_4h_to_h.bias", AS_IS),
        ("ln_f.weight", "gpt_neox.final_layer_norm.weight", AS_IS),
        ("ln_f.bias", "gpt_neox.final_layer_norm.bias", AS_IS),
        ("head.weight", "embed_out.weight", AS_IS),  # not written when tied
    ),
    summary="GPT-NeoX layout: rotary positions on whole heads, pre-LayerNorm blocks one after "
    "the other (no parallel residual), GELU or ReLU², no output bias",
    # its hidden_dropout also drops the embeddings; ours are held apart and training-only
    tolerated={"embedding_drop": 0.0, "inner_drop": 0.0},
    zero_filled=_EVERY_BIAS,
    renamed={"lm_head.": "embed_out."},  # transformers 5's name; 4.x and the files: embed_out
    classes={"GPTNeoXForCausalLM": {}},
    remote=None,
)

# GPT-NeoX and Qwen3 before Llama: a model one of their stock classes computes is exported so,
# though our Llama class would compute it too
LAYOUTS: tuple[Layout, ...] = (_GPT2, _NEOX, _QWEN3, _LLAMA)
