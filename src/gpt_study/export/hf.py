"""How a gpt-study model maps onto a transformers architecture: one table per layout.

A :class:`Layout` says which models it fits (:attr:`Layout.fits`), the transformers
``config.json`` it writes and the name of every weight. Only stock transformers classes are
used where one computes exactly what our model does; where none does, a small class of ours is
written into the folder beside the weights (transformers' ``auto_map``, loaded with
``trust_remote_code=True``).

Today one layout fits the study's model, ``gpt2`` (Radford et al. 2019): learned positions,
pre-LayerNorm blocks, exact GELU, separate (untied) output layer. ``GPT2LMHeadModel`` has no bias
on its output layer and ours does, so a model whose head bias is not all zeros (every trained one)
is exported as ``GPTStudyForCausalLM`` from ``modeling_gpt_study.py``: ``GPT2LMHeadModel`` with
``lm_head = nn.Linear(..., bias=True)``, nothing else changed. A ``llama`` layout (RoPE, RMSNorm,
SwiGLU) is one more entry in :data:`LAYOUTS` once the model has those options.

GPT-2 in transformers keeps its projections in ``Conv1D`` modules, whose weight is stored as
(in, out): the transpose of ``nn.Linear``'s (out, in). Those entries are marked ``transpose``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import nn

from gpt_study.config import EOT_ID, SOT_ID, GPTConfig, SampleConfig
from gpt_study.errors import UserError
from gpt_study.model import GPT

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
    # (our name, their name, transpose), "{i}" standing for the block number
    weights: tuple[tuple[str, str, bool], ...]


def _gpt2_fits(cfg: GPTConfig) -> str | None:
    """The study's model is GPT-2 shaped; options added to GPTConfig later must say otherwise."""
    for name, want in (("position", "learned"), ("norm", "layernorm"), ("activation", "gelu")):
        have = getattr(cfg, name, want)
        if have != want:
            return f"{name} {have!r} (GPT-2 has {want!r})"
    if getattr(cfg, "tie_embeddings", False):
        return "tied embeddings (exported GPT-2 keeps the head separate)"
    return None


def _layer_norm_eps(model: GPT) -> float:
    eps = {m.eps for m in model.modules() if isinstance(m, nn.LayerNorm)}
    if len(eps) != 1:
        raise UserError(f"the model's LayerNorms use different eps {sorted(eps)}: GPT-2 has one")
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
        "layer_norm_epsilon": _layer_norm_eps(model),
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # softmax(q k^T / sqrt(head_dim)), as ours
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": False,
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
        understood=_COMMON | {"position", "norm", "activation", "tie_embeddings"},
        fits=_gpt2_fits,
        config=_gpt2_config,
        weights=_GPT2_WEIGHTS,
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
            out[dst.format(i=i)] = (
                t.t() if transpose else t
            ).contiguous()  # (out, in) -> (in, out)
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
