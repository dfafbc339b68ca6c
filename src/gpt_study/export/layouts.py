"""How a gpt-study model maps onto a transformers architecture: one table per layout, read both
ways (``export`` writes a folder from it, ``import`` reads one back through it).

A :class:`Layout` is data: the options it implies (:attr:`Layout.implied`), its ``config.json``
entries (:class:`Option`: a gpt-study option under transformers' key, with the values that are
named differently; :class:`Fixed`: a value the architecture always has, which export writes and
import requires) and the name of every weight. The functions below are the two directions of
that one table: :func:`to_hf_config` / :func:`from_hf_config` and :func:`to_hf_weights` /
:func:`from_hf_weights`. Nothing else in gpt-study names a transformers key or weight.

Two layouts. ``gpt2`` (Radford et al. 2019): learned positions, pre-LayerNorm blocks, GELU (exact,
or GPT-2's own tanh approximation ``gelu_new``: ``--mlp gelu_tanh``), biases, tied head or not.
``GPT2LMHeadModel`` has no bias on its output layer and ours does, so a model whose head bias is
not all zeros is exported as ``GPTStudyForCausalLM`` from ``modeling_gpt_study.py``:
``GPT2LMHeadModel`` with ``lm_head = nn.Linear(..., bias=True)``, nothing else changed. ``llama``
(Touvron et al. 2023): rotary positions, RMSNorm, SwiGLU, no head bias, tied or not;
``LlamaForCausalLM`` computes them exactly (the same "rotate half" rotary pairs and inverse
frequencies, RMSNorm eps 1e-5, ``down(silu(gate(x)) * up(x))``); with value embeddings, our
``GPTStudyLlamaForCausalLM`` (:mod:`~gpt_study.export.remote`).

GPT-2 in transformers keeps its projections in ``Conv1D`` modules, whose weight is stored as
(in, out): the transpose of ``nn.Linear``'s (out, in). Those entries are marked ``transpose``.
Llama keeps q, k and v (and the SwiGLU gate and value) apart where we fuse them in one matmul:
an entry whose transformers name lists several names joined by ``|`` is cut along its output rows
into that many equal parts, in order (our ``qkv`` is [q; k; v], our SwiGLU ``fc`` [gate; value]),
and joined again on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from gpt_study.config import GPTConfig
from gpt_study.config.model import INIT_ONLY
from gpt_study.export.remote import GPT2_REMOTE, LLAMA_REMOTE, REMOTE_FILE, Remote
from gpt_study.model.gpt import NORM_EPS
from gpt_study.runtime.errors import UserError

__all__ = ["LAYOUTS", "REMOTE_FILE", "Fixed", "Layout", "Option", "Remote"]
__all__ += ["from_hf_config", "from_hf_weights", "to_hf_config", "to_hf_weights"]


@dataclass(frozen=True)
class Option:
    """A gpt-study option (``ours``, a GPTConfig field) held by transformers' key ``theirs``
    (dotted for a nested one). ``values``: (ours, theirs) pairs where the two name a value
    differently: export writes the first pair of our value, import reads any pair of theirs.
    ``absent``: the value a config without the key (or with ``None``) means, from the others.
    ``why``: what a value that differs from another key of the same option would compute."""

    ours: str
    theirs: str
    values: tuple[tuple[Any, Any], ...] = ()
    absent: Callable[[dict[str, Any]], Any] | None = None
    why: str = ""


@dataclass(frozen=True)
class Fixed:
    """A ``config.json`` value the layout always has, what our model computes there (a constant,
    or derived from the options): export writes it; import refuses a model whose value differs,
    with ``why`` (what that value would compute). ``check`` False: written, never read (it
    changes nothing gpt-study computes, as the initializer's spread)."""

    theirs: str
    value: Callable[[GPTConfig], Any]
    why: str = ""
    check: bool = True


@dataclass(frozen=True)
class Layout:
    """One transformers architecture and how our model maps onto it, both ways."""

    name: str
    arch: str  # its name in words, for messages
    model_type: str  # transformers' model_type of the stock class
    stock_class: str  # the stock transformers class when no remote code is needed
    # (option, value, why not, or "" for the plain "<option> <value> (<arch> has ...)")
    implied: tuple[tuple[str, Any, str], ...]
    options: tuple[Option, ...]
    fixed: tuple[Fixed, ...]
    # (our name, their name(s) joined by "|", transpose), "{i}" standing for the block number
    weights: tuple[tuple[str, str, bool], ...]
    summary: str  # one sentence for the exported README
    # options it leaves as they are on export (training only) and sets so on import
    tolerated: dict[str, Any] = field(default_factory=dict)
    # the class names it reads, and the options each one implies besides
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote: Remote | None = None  # our class, for what the stock one does not compute

    @property
    def understood(self) -> frozenset[str]:
        """GPTConfig fields this layout reads (others must be at their defaults to export)."""
        return frozenset(
            {o.ours for o in self.options}
            | {name for name, _, _ in self.implied}
            | set(self.tolerated)
            | set(INIT_ONLY)
            | {k for v in self.classes.values() for k in v}
        )


def _const(value: Any) -> Callable[[GPTConfig], Any]:
    return lambda _cfg: value


_GPT2 = Layout(
    name="gpt2",
    arch="GPT-2",
    model_type="gpt2",
    stock_class="GPT2LMHeadModel",
    implied=(
        ("positions", "learned", ""),
        ("norm", "layernorm", ""),
        ("bias", True, "no biases on the linears (GPT-2 has them): train with --bias --norm_bias"),
        ("norm_bias", True, "no biases on the norms (GPT-2 has them): train with --norm_bias"),
    ),
    options=(
        Option("vocab_size", "vocab_size"),
        Option("max_len", "n_positions"),
        Option("d_model", "n_embd"),
        Option("n_layers", "n_layer"),
        Option("n_heads", "n_head"),
        Option("d_ff", "n_inner", absent=lambda c: 4 * c["n_embd"]),
        # exact erf GELU is F.gelu; "gelu_new" (and torch's "gelu_pytorch_tanh") is tanh's
        Option(
            "mlp",
            "activation_function",
            (("gelu", "gelu"), ("gelu_tanh", "gelu_new"), ("gelu_tanh", "gelu_pytorch_tanh")),
        ),
        Option("residual_drop", "resid_pdrop"),
        Option("embedding_drop", "embd_pdrop"),
        Option("attention_drop", "attn_pdrop"),
        Option("tie_embeddings", "tie_word_embeddings"),
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
    ),
    weights=(
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
        ("head.bias", "lm_head.bias", False),  # only the remote class has it
    ),
    summary="GPT-2 layout: learned positions, pre-LayerNorm blocks, GELU (exact, "
    '`activation_function: "gelu"`, or tanh\'s, `"gelu_new"`), the output layer tied or not',
    # GPT-2's feed-forward has no inner dropout: an imported model fine-tunes without one
    tolerated={"inner_drop": 0.0},
    classes={
        "GPT2LMHeadModel": {"head_bias": False},
        GPT2_REMOTE.model_class: {"head_bias": True},
    },
    remote=GPT2_REMOTE,
)

_ATTN = "model.layers.{i}.self_attn."
_MLP = "model.layers.{i}.mlp."
_LLAMA = Layout(
    name="llama",
    arch="Llama",
    model_type="llama",
    stock_class="LlamaForCausalLM",
    implied=(
        ("positions", "rope", ""),
        ("norm", "rmsnorm", ""),
        ("mlp", "swiglu", ""),
        ("head_bias", False, "a head bias (Llama's lm_head has none): train with --no-head_bias"),
    ),
    options=(
        Option("vocab_size", "vocab_size"),
        Option("max_len", "max_position_embeddings"),
        Option("d_model", "hidden_size"),
        Option("d_ff", "intermediate_size"),
        Option("n_layers", "num_hidden_layers"),
        Option("n_heads", "num_attention_heads"),
        Option(
            "n_heads",
            "num_key_value_heads",
            why="grouped-query attention; gpt-study gives every head its own keys and values",
        ),
        # transformers 5 reads rope_parameters; 4.x read rope_theta
        Option("rope_base", "rope_parameters.rope_theta"),
        Option("rope_base", "rope_theta"),
        Option("bias", "attention_bias"),
        Option("bias", "mlp_bias"),
        Option("attention_drop", "attention_dropout"),
        Option("tie_embeddings", "tie_word_embeddings"),
    ),
    fixed=(
        Fixed("head_dim", lambda cfg: cfg.head_dim, "heads narrower or wider than d_model/n_heads"),
        Fixed("hidden_act", _const("silu"), "another gate activation than SiLU"),
        Fixed("rms_norm_eps", _const(NORM_EPS), "another RMSNorm eps"),
        Fixed("rope_parameters.rope_type", _const("default"), "scaled rotary positions"),
        Fixed("pretraining_tp", _const(1), "tensor-parallel slices of the projections"),
        # our class only (None: not written): the layers that add value embeddings
        Fixed(
            "value_embed_layers",
            lambda c: list(c.value_embed_layers) or None,
            "value embeddings in other layers",
        ),
        Fixed("initializer_range", _const(0.02), check=False),
        Fixed("use_cache", _const(True), check=False),
    ),
    weights=(
        ("tok_emb.weight", "model.embed_tokens.weight", False),
        ("blocks.{i}.ln1.weight", "model.layers.{i}.input_layernorm.weight", False),
        ("blocks.{i}.attn.qkv.weight", "|".join(_ATTN + f"{n}_proj.weight" for n in "qkv"), False),
        ("blocks.{i}.attn.qkv.bias", "|".join(_ATTN + f"{n}_proj.bias" for n in "qkv"), False),
        ("blocks.{i}.attn.proj.weight", _ATTN + "o_proj.weight", False),
        ("blocks.{i}.attn.proj.bias", _ATTN + "o_proj.bias", False),
        ("blocks.{i}.ln2.weight", "model.layers.{i}.post_attention_layernorm.weight", False),
        ("blocks.{i}.mlp.fc.weight", f"{_MLP}gate_proj.weight|{_MLP}up_proj.weight", False),
        ("blocks.{i}.mlp.fc.bias", f"{_MLP}gate_proj.bias|{_MLP}up_proj.bias", False),
        ("blocks.{i}.mlp.proj.weight", _MLP + "down_proj.weight", False),
        ("blocks.{i}.mlp.proj.bias", _MLP + "down_proj.bias", False),
        ("ln_f.weight", "model.norm.weight", False),
        ("head.weight", "lm_head.weight", False),  # not written when tied: transformers ties it
        ("value_embeds.{i}.weight", _ATTN + "v_proj.value_embed.weight", False),  # remote only
    ),  # no head.bias: the layout implies none
    summary="Llama layout: rotary positions, pre-RMSNorm blocks, SwiGLU feed-forward, "
    "no output bias",
    # Llama drops only attention weights; the study's other dropouts stay in the checkpoint
    tolerated={"residual_drop": 0.0, "embedding_drop": 0.0, "inner_drop": 0.0, "norm_bias": True},
    classes={
        "LlamaForCausalLM": {"value_embeds": False},
        LLAMA_REMOTE.model_class: {"value_embeds": True},
    },
    remote=LLAMA_REMOTE,
)

LAYOUTS: tuple[Layout, ...] = (_GPT2, _LLAMA)

# ------------------------------------------------------------------------ config.json


def _get(d: dict[str, Any], key: str) -> Any:
    """``d``'s value at a dotted ``key``, or None where any part is missing."""
    for part in key.split("."):
        if not isinstance(d, dict):
            return None
        d = d.get(part)  # type: ignore[assignment]
    return d


def _put(d: dict[str, Any], key: str, value: Any) -> None:
    *outer, last = key.split(".")
    for part in outer:
        d = d.setdefault(part, {})
    d[last] = value


def to_hf_config(cfg: GPTConfig, layout: Layout) -> dict[str, Any]:
    """The architecture fields of ``config.json`` for a model of ``cfg`` (which fits ``layout``)."""
    out: dict[str, Any] = {}
    for o in layout.options:
        ours = getattr(cfg, o.ours)
        theirs = next((t for v, t in o.values if v == ours), ours) if o.values else ours
        _put(out, o.theirs, theirs)
    for f in layout.fixed:
        if (value := f.value(cfg)) is not None:  # None: a key only some models have
            _put(out, f.theirs, value)
    return out


def option_difference(cfg: GPTConfig, layout: Layout) -> str | None:
    """Why a model of ``cfg`` does not fit ``layout`` (its first difference), or None."""
    for name, value, why in layout.implied:
        have = getattr(cfg, name)
        if have != value:
            return why or f"{name} {have!r} ({layout.arch} has {value!r})"
    for o in layout.options:
        if o.values and getattr(cfg, o.ours) not in {v for v, _ in o.values}:
            known = " or ".join(repr(v) for v in dict(o.values))
            return f"{o.ours} {getattr(cfg, o.ours)!r} ({layout.arch} has {known})"
    return None


def from_hf_config(d: dict[str, Any], layout: Layout, cls: str) -> GPTConfig:
    """The options of a transformers model's config (``d``, every key filled in, as
    ``AutoConfig``'s ``to_dict`` gives it) of class ``cls``; a value no option computes is
    refused in one line naming it."""
    values: dict[str, Any] = {name: value for name, value, _ in layout.implied}
    values.update(layout.tolerated)
    values.update(layout.classes[cls])
    read_from: dict[str, str] = {}
    for o in layout.options:
        have = _get(d, o.theirs)
        if have is None and o.absent is not None:
            have = o.absent(d)
        if have is None:
            if o.ours in read_from:
                continue  # another key holds it (rope_theta, read before rope_parameters)
            raise UserError(f"config.json has no {o.theirs}")
        ours = have
        if o.values:
            ours = next((v for v, t in o.values if t == have), None)
            if ours is None:
                known = ", ".join(repr(t) for _, t in o.values)
                raise UserError(f"{o.theirs} {have!r} (gpt-study computes {known})")
        if o.ours in read_from and values[o.ours] != ours:
            first = read_from[o.ours]
            why = f" ({o.why})" if o.why else ""
            raise UserError(
                f"{o.theirs} {have!r} but {first} {_get(d, first)!r}{why}: gpt-study's one "
                f"--{o.ours} sets both"
            )
        values[o.ours], read_from[o.ours] = ours, o.theirs
    cfg = GPTConfig(**values)
    for f in layout.fixed:
        have = _get(d, f.theirs)
        if f.check and have is not None and have != f.value(cfg):
            raise UserError(f"{f.theirs} {have!r} ({f.why}; gpt-study computes {f.value(cfg)!r})")
    return cfg


# ------------------------------------------------------------------------ weights


def _entries(layout: Layout, n_layers: int) -> list[tuple[str, list[str], bool]]:
    """(our name, their names, transpose) of every weight of a model of ``n_layers`` blocks."""
    out = []
    for src, dst, transpose in layout.weights:
        for i in range(n_layers) if "{i}" in src else [None]:
            out.append((src.format(i=i), dst.format(i=i).split("|"), transpose))
    return out


def to_hf_weights(ours: dict[str, torch.Tensor], layout: Layout, n_layers: int) -> dict[str, Any]:
    """``ours`` under the layout's names; every one of ours is used exactly once."""
    ours = dict(ours)
    out: dict[str, torch.Tensor] = {}
    for key, names, transpose in _entries(layout, n_layers):
        if key not in ours:
            continue
        t = ours.pop(key)
        for name, part in zip(names, t.chunk(len(names), dim=0), strict=True):
            out[name] = (part.t() if transpose else part).contiguous()  # (out, in) -> (in, out)
    if ours:
        raise UserError(f"layout {layout.name} has no place for weights {sorted(ours)[:3]}")
    return out


def from_hf_weights(
    theirs: dict[str, torch.Tensor], layout: Layout, n_layers: int
) -> dict[str, torch.Tensor]:
    """:func:`to_hf_weights` backwards: their weights under our names (split parts joined
    again, transposes undone); a weight the table has no place for is refused."""
    theirs = dict(theirs)
    out: dict[str, torch.Tensor] = {}
    for key, names, transpose in _entries(layout, n_layers):
        found = [n for n in names if n in theirs]
        if not found:
            continue  # a weight this model does not have (no biases, a tied head)
        if len(found) != len(names):
            missing = sorted(set(names) - set(found))[0]
            raise UserError(f"the weights have {found[0]} but not {missing}")
        parts = [theirs.pop(n) for n in names]
        parts = [p.t() if transpose else p for p in parts]  # (in, out) -> (out, in)
        out[key] = torch.cat(parts, dim=0).contiguous()
    if theirs:
        raise UserError(
            f"the weights hold {', '.join(sorted(theirs)[:3])}, which no gpt-study option has"
        )
    return out
