"""GPT-Neo (Black et al. 2021), the architecture of the TinyStories paper's models: a layout that
``import`` reads and ``export`` never writes.

``GPTNeoForCausalLM`` is GPT-2's model (learned positions, pre-LayerNorm blocks, biases, GELU's
tanh approximation, a tied head without a bias) but for three things, each of which gpt-study's
model already computes, so the layout needs no model option of its own:

- its attention divides no score by sqrt(head_dim): import multiplies the queries' weights by
  sqrt(head_dim), so our q k^T / sqrt(head_dim) is its q k^T (the same scores within rounding;
  only the queries themselves, which no view shows, are sqrt(head_dim) times GPT-Neo's);
- its q, k and v projections have no biases where its other linears have them: ours are zeros;
- some of its layers attend locally, to the last ``window_size`` positions. Over the first
  ``window_size`` positions that is every earlier position, as in a global layer, so a model with
  local layers keeps its first ``window_size`` learned positions (the TinyStories models: 256 of
  2,048) and every command refuses a longer window, as for any model with learned positions.

``export`` writes such a checkpoint as GPT-2, whose stock class computes it from then on.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from gpt_study.config import GPTConfig
from gpt_study.export.layouts import AS_IS, Fixed, Layout, Option
from gpt_study.export.tables import ACTIVATIONS
from gpt_study.model.gpt import NORM_EPS
from gpt_study.runtime.errors import UserError

__all__ = ["IMPORT_ONLY"]

_KINDS = ("global", "local")


def _positions(d: dict[str, Any]) -> int:
    """The positions gpt-study keeps of a GPT-Neo of config.json ``d`` (see the module text)."""
    kinds = list(d.get("attention_layers") or [])
    other = sorted(set(kinds) - set(_KINDS))
    if other:
        raise UserError(
            f"attention_layers {other[0]!r} (gpt-study computes {' and '.join(_KINDS)})"
        )
    n = int(d["max_position_embeddings"])
    return min(n, int(d["window_size"])) if "local" in kinds else n


def _note(d: dict[str, Any], cfg: GPTConfig) -> str | None:
    n = int(d["max_position_embeddings"])
    if cfg.max_len == n:
        return None
    return (
        f"its local attention layers see the last {d['window_size']} positions, which within "
        f"the first {cfg.max_len} is every earlier one: the checkpoint keeps those {cfg.max_len} "
        f"of its {n} learned positions (a longer --window is refused)"
    )


def _adapt(weights: dict[str, torch.Tensor], cfg: GPTConfig) -> None:
    """GPT-Neo's unscaled scores and bias-free q, k and v, as our model computes them, and the
    positions it keeps (in place)."""
    C = cfg.d_model
    for i in range(cfg.n_layers):
        qkv = weights[f"blocks.{i}.attn.qkv.weight"]  # (3C, C): [q; k; v], a new tensor
        qkv[:C] *= math.sqrt(cfg.head_dim)  # q k^T / sqrt(hd) is then GPT-Neo's q k^T
        weights[f"blocks.{i}.attn.qkv.bias"] = torch.zeros(3 * C, dtype=qkv.dtype)
    weights["pos_emb.weight"] = weights["pos_emb.weight"][: cfg.max_len].contiguous()


_BLOCK = "transformer.h.{i}."
_ATTN = _BLOCK + "attn.attention."
_NEO = Layout(
    name="gpt_neo",
    arch="GPT-Neo",
    model_type="gpt_neo",
    stock_class="GPTNeoForCausalLM",
    implied=(
        ("positions", "learned", ""),
        ("norm", "layernorm", ""),
        ("head_bias", False, ""),
        ("bias", True, ""),
        ("norm_bias", True, ""),
    ),
    options=(
        Option("vocab_size", "vocab_size"),
        Option("d_model", "hidden_size"),
        Option("n_layers", "num_layers"),
        Option("n_heads", "num_heads"),
        Option("d_ff", "intermediate_size", absent=lambda d: 4 * d["hidden_size"]),
        Option("mlp", "activation_function", ACTIVATIONS),
        Option("residual_drop", "resid_dropout"),
        Option("embedding_drop", "embed_dropout"),
        Option("attention_drop", "attention_dropout"),
        Option("tie_embeddings", "tie_word_embeddings"),
    ),
    fixed=(Fixed("layer_norm_epsilon", lambda _cfg: NORM_EPS, "another LayerNorm eps"),),
    weights=(
        ("tok_emb.weight", "transformer.wte.weight", AS_IS),
        ("pos_emb.weight", "transformer.wpe.weight", AS_IS),  # then cut to the kept positions
        ("blocks.{i}.ln1.weight", _BLOCK + "ln_1.weight", AS_IS),
        ("blocks.{i}.ln1.bias", _BLOCK + "ln_1.bias", AS_IS),
        ("blocks.{i}.attn.qkv.weight", "|".join(_ATTN + f"{n}_proj.weight" for n in "qkv"), AS_IS),
        ("blocks.{i}.attn.proj.weight", _ATTN + "out_proj.weight", AS_IS),
        ("blocks.{i}.attn.proj.bias", _ATTN + "out_proj.bias", AS_IS),
        ("blocks.{i}.ln2.weight", _BLOCK + "ln_2.weight", AS_IS),
        ("blocks.{i}.ln2.bias", _BLOCK + "ln_2.bias", AS_IS),
        ("blocks.{i}.mlp.fc.weight", _BLOCK + "mlp.c_fc.weight", AS_IS),
        ("blocks.{i}.mlp.fc.bias", _BLOCK + "mlp.c_fc.bias", AS_IS),
        ("blocks.{i}.mlp.proj.weight", _BLOCK + "mlp.c_proj.weight", AS_IS),
        ("blocks.{i}.mlp.proj.bias", _BLOCK + "mlp.c_proj.bias", AS_IS),
        ("ln_f.weight", "transformer.ln_f.weight", AS_IS),
        ("ln_f.bias", "transformer.ln_f.bias", AS_IS),
        ("head.weight", "lm_head.weight", AS_IS),
    ),
    summary="GPT-Neo layout (import only): GPT-2's model with unscaled attention scores, no "
    "q, k, v biases, and local attention in some layers",
    # GPT-Neo's feed-forward has no inner dropout, as GPT-2's
    tolerated={"inner_drop": 0.0},
    classes={"GPTNeoForCausalLM": {"max_len": _positions}},
    adapt=_adapt,
    note=_note,
)

# layouts import reads after LAYOUTS, and export never chooses
IMPORT_ONLY: tuple[Layout, ...] = (_NEO,)
