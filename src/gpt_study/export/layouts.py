"""How a gpt-study model maps onto a transformers architecture: one table per layout, read both
ways (``export`` writes a folder from it, ``import`` reads one back through it).

A :class:`Layout` is data: the options it implies (:attr:`Layout.implied`), its ``config.json``
entries (:class:`Option`: a gpt-study option under transformers' key, with the values that are
named differently; :class:`Fixed`: a value the architecture always has, which export writes and
import requires) and the name of every weight. The functions below are the two directions of
that one table: :func:`to_hf_config` / :func:`from_hf_config` and :func:`to_hf_weights` /
:func:`from_hf_weights`. Nothing else in gpt-study names a transformers key or weight.

The tables themselves are in :mod:`~gpt_study.export.tables`.

GPT-2 in transformers keeps its projections in ``Conv1D`` modules, whose weight is stored as
(in, out): the transpose of ``nn.Linear``'s (out, in). Those entries are marked ``TRANSPOSED``.
Llama keeps q, k and v (and the SwiGLU gate and value) apart where we fuse them in one matmul:
an entry whose transformers name lists several names joined by ``|`` is cut along its output rows
into that many equal parts, in order (our ``qkv`` is [q; k; v], our SwiGLU ``fc`` [gate; value]),
and joined again on import.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import torch

from gpt_study.config import GPTConfig
from gpt_study.config.model import INIT_ONLY
from gpt_study.export.remote import REMOTE_FILE, Remote
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

__all__ = ["AS_IS", "BY_HEAD", "REMOTE_FILE", "TRANSPOSED", "Fixed", "Layout", "Option", "Remote"]
__all__ += ["from_hf_config", "from_hf_weights", "to_hf_config", "to_hf_weights", "zero_filled"]


@dataclass(frozen=True)
class Option:
    """A gpt-study option (``ours``, a GPTConfig field) held by transformers' key ``theirs``
    (dotted for a nested one). ``values``: (ours, theirs) pairs where the two name a value
    differently: export writes the first pair of our value, import reads any pair of theirs (a
    value of theirs may stand for several of ours where two keys hold one option between them:
    import takes the one both keys allow).
    ``absent``: the value a config without the key (or with ``None``) means, from the others.
    ``why``: what a value that differs from another key of the same option would compute.
    ``optional``: a key only our class reads, written only where it differs from ``absent``."""

    ours: str
    theirs: str
    values: tuple[tuple[Any, Any], ...] = ()
    absent: Callable[[dict[str, Any]], Any] | None = None
    why: str = ""
    optional: bool = False


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
    # (our name, their name(s) joined by "|", how it is stored: AS_IS, TRANSPOSED or BY_HEAD),
    # "{i}" standing for the block number; a fourth element, a test of the GPTConfig, where the
    # weight's place depends on an option (Llama's feed-forward, gated or plain)
    weights: tuple[tuple[Any, ...], ...]
    summary: str  # one sentence for the exported README
    # options a model may hold at any value on export, as none changes what the class computes
    # (dropouts: training only), and import sets so
    tolerated: dict[str, Any] = field(default_factory=dict)
    # the class names it reads, and the options each one implies whatever config.json says (a
    # value, or a function of config.json's dict): a stock class computes none of ours
    classes: dict[str, dict[str, Any]] = field(default_factory=dict)
    remote: Remote | None = None  # our class, for what the stock one does not compute
    # bias options whose biases the stock class always has: a model trained without them is
    # written with zeros there, which compute what no bias does; import reads them back as
    # biases that are zero, the option on (which biases an option adds: :func:`zero_filled`)
    zero_filled: tuple[str, ...] = ()
    # weight-name prefixes a newer transformers gives its modules where the table writes the
    # older name (which every version loads): import reads either
    renamed: dict[str, str] = field(default_factory=dict)
    # an import-only layout (:data:`~gpt_study.export.tables.IMPORT_ONLY`), whose class computes
    # our model by other means: what its weights need beyond the table (in place, after it), and
    # the line that says so when a model is imported (given config.json's dict)
    adapt: Callable[[dict[str, torch.Tensor], GPTConfig], None] | None = None
    note: Callable[[dict[str, Any], GPTConfig], str | None] | None = None

    @property
    def understood(self) -> frozenset[str]:
        """GPTConfig fields this layout reads (others must be at their defaults to export)."""
        return frozenset(
            {o.ours for o in self.options}
            | {name for name, _, _ in self.implied}
            | set(self.tolerated)
            | set(self.zero_filled)
            | set(INIT_ONLY)
            | {k for v in self.classes.values() for k in v}
        )


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
        if not (o.optional and o.absent is not None and theirs == o.absent(out)):
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
    values.update(dict.fromkeys(layout.zero_filled, True))
    read_from: dict[str, str] = {}
    for o in layout.options:
        have = _get(d, o.theirs)
        if have is None and o.absent is not None:
            have = o.absent(d)
        if have is None:
            if o.ours in read_from:
                continue  # another key holds it (rope_theta, read before rope_parameters)
            raise UserError(f"config.json has no {o.theirs}")
        # our values that ``have`` may stand for (several where a key holds part of an option,
        # as GPT-2's gated_mlp: false for every plain activation)
        could = [v for v, t in o.values if t == have] if o.values else [have]
        if not could:
            known = ", ".join(repr(t) for t in dict.fromkeys(t for _, t in o.values))
            raise UserError(f"{o.theirs} {have!r} (gpt-study computes {known})")
        ours = values[o.ours] if o.ours in read_from and values[o.ours] in could else could[0]
        if o.ours in read_from and values[o.ours] != ours:
            first = read_from[o.ours]
            why = f" ({o.why})" if o.why else ""
            raise UserError(
                f"{o.theirs} {have!r} but {first} {_get(d, first)!r}{why}: gpt-study's one "
                f"--{o.ours} sets both"
            )
        values[o.ours], read_from[o.ours] = ours, o.theirs
    values.update({k: v(d) if callable(v) else v for k, v in layout.classes[cls].items()})
    cfg = GPTConfig(**values)
    for f in layout.fixed:
        have = _get(d, f.theirs)
        if f.check and have is not None and have != f.value(cfg):
            raise UserError(f"{f.theirs} {have!r} ({f.why}; gpt-study computes {f.value(cfg)!r})")
    return cfg


# ------------------------------------------------------------------------ weights

AS_IS = "as is"
TRANSPOSED = "transposed"  # GPT-2's Conv1D: (in, out)
BY_HEAD = "by head"  # our [q; k; v] rows as GPT-NeoX's [q_h; k_h; v_h] for each head h in turn


def _theirs(t: torch.Tensor, how: str, n_heads: int) -> torch.Tensor:
    """Our tensor ``t`` as the layout stores it."""
    if how == TRANSPOSED:
        return t.t()  # (out, in) -> (in, out)
    if how == BY_HEAD:  # (3C, ...) -> (3, H, hd, ...) -> (H, 3, hd, ...) -> (3C, ...)
        return t.view(3, n_heads, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    return t


def _ours(t: torch.Tensor, how: str, n_heads: int) -> torch.Tensor:
    """:func:`_theirs` undone."""
    if how == TRANSPOSED:
        return t.t()  # (in, out) -> (out, in)
    if how == BY_HEAD:  # (3C, ...) -> (H, 3, hd, ...) -> (3, H, hd, ...) -> (3C, ...)
        return t.view(n_heads, 3, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)
    return t


def zero_filled(cfg: GPTConfig, layout: Layout, remote: bool) -> dict[str, set[str]]:
    """The biases the exported class always has (the layout's, and its class of ours' with
    ``remote``) that a model of ``cfg`` lacks, by bias option: they are written as zeros. The
    model itself says which weights an option adds (built on the meta device, no memory, with
    the option on and as it is), so an RMSNorm adds none whatever ``--norm_bias`` says."""
    ours = layout.remote.zero_filled if remote and layout.remote is not None else ()
    out = {}
    for option in (o for o in (*layout.zero_filled, *ours) if not getattr(cfg, o)):
        with torch.device("meta"):
            names = set(GPT(replace(cfg, **{option: True})).state_dict())
            names -= set(GPT(cfg).state_dict())
        if names:
            out[option] = names
    return out


def _entries(layout: Layout, cfg: GPTConfig) -> list[tuple[str, list[str], str]]:
    """(our name, their names, how stored) of every weight of a model of ``cfg``: an entry with a
    fourth element is the place of that weight only where it holds for ``cfg``."""
    out = []
    for src, dst, how, *when in layout.weights:
        if when and not when[0](cfg):
            continue
        for i in range(cfg.n_layers) if "{i}" in src else [None]:
            out.append((src.format(i=i), dst.format(i=i).split("|"), how))
    return out


def to_hf_weights(
    ours: dict[str, torch.Tensor], layout: Layout, cfg: GPTConfig, remote: bool = False
) -> dict[str, Any]:
    """``ours`` under the layout's names; every one of ours is used exactly once, and a bias the
    layout's class always has but ours lacks (:attr:`Layout.zero_filled`, and with ``remote``
    :attr:`Remote.zero_filled`) is written as zeros."""
    ours = dict(ours)
    for key in {name for names in zero_filled(cfg, layout, remote).values() for name in names}:
        if key not in ours:  # (out,) zeros beside the (out, in) or (out,) weight it belongs to
            weight = ours.get(key.removesuffix(".bias") + ".weight", ours["tok_emb.weight"])
            ours[key] = torch.zeros(weight.size(0), dtype=weight.dtype)  # (a tied head: tok_emb)
    out: dict[str, torch.Tensor] = {}
    for key, names, how in _entries(layout, cfg):
        if key not in ours:
            continue
        t = ours.pop(key)
        for name, part in zip(names, t.chunk(len(names), dim=0), strict=True):
            out[name] = _theirs(part, how, cfg.n_heads).contiguous()
    if ours:
        raise UserError(f"layout {layout.name} has no place for weights {sorted(ours)[:3]}")
    return out


def _older_name(name: str, layout: Layout) -> str:
    """``name`` as the table writes it (:attr:`Layout.renamed`)."""
    for new, old in layout.renamed.items():
        if name.startswith(new):
            return old + name.removeprefix(new)
    return name


def from_hf_weights(
    theirs: dict[str, torch.Tensor], layout: Layout, cfg: GPTConfig
) -> dict[str, torch.Tensor]:
    """:func:`to_hf_weights` backwards: their weights under our names (split parts joined
    again, transposes and head orders undone); a weight the table has no place for is refused."""
    theirs = {_older_name(k, layout): v for k, v in theirs.items()}
    out: dict[str, torch.Tensor] = {}
    for key, names, how in _entries(layout, cfg):
        found = [n for n in names if n in theirs]
        if not found:
            continue  # a weight this model does not have (no biases, a tied head)
        if len(found) != len(names):
            missing = sorted(set(names) - set(found))[0]
            raise UserError(f"the weights have {found[0]} but not {missing}")
        parts = [theirs.pop(n) for n in names]
        out[key] = torch.cat([_ours(p, how, cfg.n_heads) for p in parts], dim=0).contiguous()
    if theirs:
        raise UserError(
            f"the weights hold {', '.join(sorted(theirs)[:3])}, which no gpt-study option has"
        )
    if layout.adapt is not None:
        layout.adapt(out, cfg)
    return out
