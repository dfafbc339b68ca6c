"""How a gpt-study model maps onto a transformers architecture: one table per layout.

A :class:`Layout` says which models it fits (:attr:`Layout.fits`), the transformers
``config.json`` it writes and the name of every weight. Only stock transformers classes are
used where one computes exactly what our model does; where none does, a small class of ours is
written into the folder beside the weights (transformers' ``auto_map``, loaded with
``trust_remote_code=True``).

Two layouts. ``gpt2`` (Radford et al. 2019) fits the study's model: learned positions,
pre-LayerNorm blocks, exact GELU, separate (untied) output layer. ``GPT2LMHeadModel`` has no bias
on its output layer and ours does, so a model whose head bias is not all zeros (every trained one)
is exported as ``GPTStudyForCausalLM`` from ``modeling_gpt_study.py``: ``GPT2LMHeadModel`` with
``lm_head = nn.Linear(..., bias=True)``, nothing else changed. ``llama`` (Touvron et al. 2023)
fits the modern options together: rotary positions, RMSNorm, SwiGLU, no head bias, tied or not;
``LlamaForCausalLM`` computes them exactly (the same "rotate half" rotary pairs and inverse
frequencies, RMSNorm eps 1e-5, ``down(silu(gate(x)) * up(x))``).

GPT-2 in transformers keeps its projections in ``Conv1D`` modules, whose weight is stored as
(in, out): the transpose of ``nn.Linear``'s (out, in). Those entries are marked ``transpose``.
Llama keeps q, k and v (and the SwiGLU gate and value) apart where we fuse them in one matmul:
an entry whose transformers name lists several names joined by ``|`` is cut along its output rows
into that many equal parts, in order (our ``qkv`` is [q; k; v], our SwiGLU ``fc`` [gate; value]).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from gpt_study.config import EOT_ID, SOT_ID, GPTConfig, SampleConfig
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

__all__ = [
    "LAYOUTS",
    "REMOTE_CLASS",
    "REMOTE_CONFIG",
    "REMOTE_FILE",
    "Layout",
    "choose_layout",
    "generation_config",
    "hf_config",
    "hf_weights",
    "needs_remote_code",
]

REMOTE_FILE = "modeling_gpt_study.py"
REMOTE_CLASS = "GPTStudyForCausalLM"
REMOTE_CONFIG = "GPTStudyConfig"


@dataclass(frozen=True)
class Layout:
    """One transformers architecture and how our weights map onto it."""

    name: str
    model_type: str  # transformers' model_type of the stock class
    stock_class: str  # the stock transformers class when no remote code is needed
    understood: frozenset[str]  # GPTConfig fields this layout reads (others must be defaults)
    fits: Callable[[GPTConfig], str | None]  # None, or why the model does not fit
    config: Callable[[GPT], dict[str, Any]]  # the architecture fields of config.json
    # (our name, their name(s) joined by "|", transpose), "{i}" standing for the block number
    weights: tuple[tuple[str, str, bool], ...]
    summary: str  # one sentence for the exported README


def _first_difference(cfg: GPTConfig, arch: str, **want: object) -> str | None:
    """The first option whose value is not the one ``arch`` has, said in a few words."""
    for name, value in want.items():
        have = getattr(cfg, name)
        if have != value:
            return f"{name} {have!r} ({arch} has {value!r})"
    return None


def _gpt2_fits(cfg: GPTConfig) -> str | None:
    """The study's model is GPT-2 shaped; the modern options are not."""
    if why := _first_difference(cfg, "GPT-2", positions="learned", norm="layernorm", mlp="gelu"):
        return why
    if cfg.tie_embeddings:
        return "tied embeddings (exported GPT-2 keeps the head separate)"
    if not (cfg.bias and cfg.norm_bias):
        return "no biases on the linears or norms (GPT-2 has them): train with --bias --norm_bias"
    return None


def _llama_fits(cfg: GPTConfig) -> str | None:
    """Llama is the modern options together; a head bias it has no place for."""
    if why := _first_difference(cfg, "Llama", positions="rope", norm="rmsnorm", mlp="swiglu"):
        return why
    if cfg.head_bias:
        return "a head bias (Llama's lm_head has none): train with --no-head_bias"
    return None


def _norm_eps(model: GPT, kind: type[nn.Module], arch: str) -> float:
    """The one eps of the model's norms of ``kind``: both architectures have a single one."""
    eps = {m.eps for m in model.modules() if isinstance(m, kind)}
    if len(eps) != 1:
        raise UserError(
            f"the model's {kind.__name__}s use different eps {sorted(eps)}: {arch} has one"
        )
    return eps.pop()


def _gpt2_config(model: GPT) -> dict[str, Any]:
    cfg = model.config
    return {
        "vocab_size": cfg.vocab_size,
        "n_positions": cfg.max_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layers,
        "n_head": cfg.n_heads,
        "n_inner": cfg.d_ff,
        "activation_function": "gelu",  # exact erf GELU, as F.gelu; "gelu_new" is tanh's
        "resid_pdrop": cfg.residual_drop,
        "embd_pdrop": cfg.embedding_drop,
        "attn_pdrop": cfg.attention_drop,
        "layer_norm_epsilon": _norm_eps(model, nn.LayerNorm, "GPT-2"),
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # softmax(q k^T / sqrt(head_dim)), as ours
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": False,
        "use_cache": True,
    }


def _llama_config(model: GPT) -> dict[str, Any]:
    cfg = model.config
    return {
        "vocab_size": cfg.vocab_size,
        "max_position_embeddings": cfg.max_len,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,  # every head has its own keys and values
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": _norm_eps(model, nn.RMSNorm, "Llama"),
        # transformers 5 reads rope_parameters; 4.x read rope_theta
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
        "rope_theta": cfg.rope_base,
        "attention_bias": cfg.bias,
        "mlp_bias": cfg.bias,
        "attention_dropout": cfg.attention_drop,
        "initializer_range": 0.02,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
    }


_GPT2_WEIGHTS = (
    ("tok_emb.weight", "transformer.wte.weight", False),
    ("pos_emb.weight", "transformer.wpe.weight", False),
    ("blocks.{i}.ln1.weight", "transformer.h.{i}.ln_1.weight", False),
    ("blocks.{i}.ln1.bias", "transformer.h.{i}.ln_1.bias", False),
    ("blocks.{i}.attn.qkv.weight", "transformer.h.{i}.attn.c_attn.weight", True),
    ("blocks.{i}.attn.qkv.bias", "transformer.h.{i}.attn.c_attn.bias", False),
    ("blocks.{i}.attn.proj.weight", "transformer.h.{i}.attn.c_proj.weight", True),
    ("blocks.{i}.attn.proj.bias", "transformer.h.{i}.attn.c_proj.bias", False),
    ("blocks.{i}.ln2.weight", "transformer.h.{i}.ln_2.weight", False),
    ("blocks.{i}.ln2.bias", "transformer.h.{i}.ln_2.bias", False),
    ("blocks.{i}.mlp.fc.weight", "transformer.h.{i}.mlp.c_fc.weight", True),
    ("blocks.{i}.mlp.fc.bias", "transformer.h.{i}.mlp.c_fc.bias", False),
    ("blocks.{i}.mlp.proj.weight", "transformer.h.{i}.mlp.c_proj.weight", True),
    ("blocks.{i}.mlp.proj.bias", "transformer.h.{i}.mlp.c_proj.bias", False),
    ("ln_f.weight", "transformer.ln_f.weight", False),
    ("ln_f.bias", "transformer.ln_f.bias", False),
    ("head.weight", "lm_head.weight", False),
    ("head.bias", "lm_head.bias", False),  # only GPTStudyForCausalLM has it
)

_ATTN = "model.layers.{i}.self_attn."
_LLAMA_WEIGHTS = (
    ("tok_emb.weight", "model.embed_tokens.weight", False),
    ("blocks.{i}.ln1.weight", "model.layers.{i}.input_layernorm.weight", False),
    ("blocks.{i}.attn.qkv.weight", "|".join(_ATTN + f"{n}_proj.weight" for n in "qkv"), False),
    ("blocks.{i}.attn.qkv.bias", "|".join(_ATTN + f"{n}_proj.bias" for n in "qkv"), False),
    ("blocks.{i}.attn.proj.weight", _ATTN + "o_proj.weight", False),
    ("blocks.{i}.attn.proj.bias", _ATTN + "o_proj.bias", False),
    ("blocks.{i}.ln2.weight", "model.layers.{i}.post_attention_layernorm.weight", False),
    (
        "blocks.{i}.mlp.fc.weight",
        "model.layers.{i}.mlp.gate_proj.weight|model.layers.{i}.mlp.up_proj.weight",
        False,
    ),
    (
        "blocks.{i}.mlp.fc.bias",
        "model.layers.{i}.mlp.gate_proj.bias|model.layers.{i}.mlp.up_proj.bias",
        False,
    ),
    ("blocks.{i}.mlp.proj.weight", "model.layers.{i}.mlp.down_proj.weight", False),
    ("blocks.{i}.mlp.proj.bias", "model.layers.{i}.mlp.down_proj.bias", False),
    ("ln_f.weight", "model.norm.weight", False),
    ("head.weight", "lm_head.weight", False),  # not written when tied: transformers ties it
)  # fmt: skip  (no head.bias: _llama_fits refuses a model that has one)

# Fields every layout understands: sizes, and dropout (training only; carried over as is).
_COMMON = frozenset(
    ("vocab_size", "max_len", "d_model", "d_ff", "n_layers", "n_heads")
    + ("attention_drop", "residual_drop", "embedding_drop")
)

LAYOUTS: tuple[Layout, ...] = (
    Layout(
        name="gpt2",
        model_type="gpt2",
        stock_class="GPT2LMHeadModel",
        understood=_COMMON
        | {"positions", "norm", "mlp", "tie_embeddings", "bias", "norm_bias", "head_bias"},
        fits=_gpt2_fits,
        config=_gpt2_config,
        weights=_GPT2_WEIGHTS,
        summary="GPT-2 layout: learned positions, pre-LayerNorm blocks, exact GELU "
        '(`activation_function: "gelu"`), a separate (untied) output layer',
    ),
    Layout(
        name="llama",
        model_type="llama",
        stock_class="LlamaForCausalLM",
        understood=_COMMON
        | {"positions", "rope_base", "norm", "mlp", "tie_embeddings", "bias", "norm_bias"}
        | {"head_bias"},
        fits=_llama_fits,
        config=_llama_config,
        weights=_LLAMA_WEIGHTS,
        summary="Llama layout: rotary positions, pre-RMSNorm blocks, SwiGLU feed-forward, "
        "no output bias",
    ),
)


def choose_layout(cfg: GPTConfig) -> Layout:
    """The first layout that computes exactly what ``cfg``'s model computes."""
    defaults = type(cfg)()  # the study's values of every field, options added later included
    why = []
    for layout in LAYOUTS:
        unknown = [
            f.name
            for f in fields(cfg)
            if f.name not in layout.understood and getattr(cfg, f.name) != getattr(defaults, f.name)
        ]
        reason = f"it does not know {', '.join(unknown)}" if unknown else layout.fits(cfg)
        if reason is None:
            return layout
        why.append(f"{layout.name}: {reason}")
    raise UserError(f"no transformers layout fits this model ({'; '.join(why)}): not exported")


def needs_remote_code(model: GPT) -> bool:
    """Whether the head has a bias that a stock class would drop (not all zeros)."""
    bias = getattr(model.head, "bias", None)
    return bias is not None and bool(bias.detach().ne(0).any())


def hf_weights(model: GPT, layout: Layout, remote: bool) -> dict[str, torch.Tensor]:
    """Our weights under the layout's names; every one of ours is used exactly once."""
    ours = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}
    for src, dst, transpose in layout.weights:
        layers = range(model.config.n_layers) if "{i}" in src else [None]
        for i in layers:
            key = src.format(i=i)
            if key not in ours:
                continue
            t = ours.pop(key)
            if key == "head.bias" and not remote:
                continue  # all zeros (needs_remote_code): the stock class computes the same
            if key == "head.weight" and model.config.tie_embeddings:
                continue  # the embedding itself, read both ways: transformers ties it again
            names = dst.format(i=i).split("|")
            for name, part in zip(names, t.chunk(len(names), dim=0), strict=True):
                out[name] = (part.t() if transpose else part).contiguous()  # (out, in) -> (in, out)
    if ours:
        raise UserError(f"layout {layout.name} has no place for weights {sorted(ours)[:3]}")
    return out


def hf_config(model: GPT, layout: Layout, remote: bool) -> dict[str, Any]:
    """``config.json``: the layout's fields, the specials, and the class that loads it."""
    cfg: dict[str, Any] = {
        "architectures": [REMOTE_CLASS if remote else layout.stock_class],
        "model_type": "gpt_study" if remote else layout.model_type,
        **layout.config(model),
        "bos_token_id": SOT_ID,
        "eos_token_id": EOT_ID,
        "pad_token_id": EOT_ID,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
    }
    if remote:
        cfg["auto_map"] = {
            "AutoConfig": f"{REMOTE_FILE.removesuffix('.py')}.{REMOTE_CONFIG}",
            "AutoModelForCausalLM": f"{REMOTE_FILE.removesuffix('.py')}.{REMOTE_CLASS}",
        }
    return cfg


def generation_config(sample: SampleConfig) -> dict[str, Any]:
    """``generation_config.json``: the checkpoint's decoding settings, ``<eot>`` as the end.

    transformers' repetition penalty is the same CTRL rule as ours, over prompt and output.
    The seed has no place here (transformers reads the global torch generator).
    """
    out: dict[str, Any] = {
        "bos_token_id": SOT_ID,
        "eos_token_id": EOT_ID,
        "pad_token_id": EOT_ID,
        "max_new_tokens": sample.max_new_tokens,
        "do_sample": not sample.greedy,
    }
    if not sample.greedy:
        out.update(
            temperature=sample.temperature,
            top_k=sample.top_k,  # 0: off, in both
            top_p=sample.top_p,
            repetition_penalty=sample.repetition_penalty,
        )
    return out
