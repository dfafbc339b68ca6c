"""Metadata of config fields: the help text of each flag, and the meaningful range of every
numeric setting, checked when a config is built.

A value outside its range (NaN and infinities included) is refused with one line that names the
flag, the value and the range, before anything is written. Each config dataclass lists its
ranges in a ``RANGES`` table beside its fields and calls :func:`check_ranges` first thing in
``__post_init__``, then :func:`check_choices`: a value outside a field's ``choices`` metadata is
refused by :func:`check_choice`, the one check of allowed values, whether they come from a flag
(checked as soon as it is parsed), a library call or a saved config.json.

A config may hold sections, fields that are dataclasses themselves (``TrainConfig.optim``). Every
setting keeps a name of its own across them, the study's flag name, so :func:`flat_fields` maps
each flat name to its section: flags, presets and config.json files written before the sections
name settings that way.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from dataclasses import Field, dataclass, fields
from typing import Any, ClassVar

from gpt_study.runtime.errors import UserError


def doc(text: str, **kw: Any) -> dict[str, Any]:
    """Field metadata: ``text`` becomes the flag's ``--help``; ``kw`` are extra argparse options,
    except ``choices`` (refused by :func:`check_choice`), ``cli=False`` (no flag),
    ``resume="free"`` (may change on ``--resume``: :func:`free_on_resume`) and ``resume="fixed"``
    (may not: :func:`fixed_on_resume`)."""
    return {"doc": text, **kw}


def free_on_resume(f: Field[Any]) -> bool:
    """Whether setting ``f`` may change on ``--resume`` without the resumed run computing
    something else: its ``doc(..., resume="free")`` says so, beside the field, so that a new
    field is not free until someone decides it is."""
    return f.metadata.get("resume") == "free"


def fixed_on_resume(f: Field[Any]) -> bool:
    """Whether setting ``f`` says how a run starts, so that ``--resume`` (which continues from the
    run's own ``last/``) cannot apply a new value: refused, not warned of."""
    return f.metadata.get("resume") == "fixed"


def thread_count(text: str) -> int | None:
    """``--threads``'s argparse type: a count, or ``auto`` (None, what the command picks). ``0``
    is auto as well, in every command: configs saved before auto had a name store 0."""
    if text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise ValueError(text) from None  # argparse: "invalid thread_count value: 'x'"
    return None if n == 0 else n


@functools.cache
def sections(cls: type) -> dict[str, type]:
    """The fields of dataclass ``cls`` that are sections (dataclasses themselves), by name."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in fields(cls) if dataclasses.is_dataclass(hints[f.name])}


@functools.cache
def flat_fields(cls: type) -> dict[str, tuple[str | None, Field[Any]]]:
    """Every setting of dataclass ``cls`` by its flat name: (its section, None at the top level;
    its field). Derived from the dataclasses, so a new field is mapped without a list to keep;
    a name used twice is a programming error, refused here."""
    out: dict[str, tuple[str | None, Field[Any]]] = {}
    parts = sections(cls)
    for f in fields(cls):
        leaves = [(f.name, g) for g in fields(parts[f.name])] if f.name in parts else [(None, f)]
        for section, g in leaves:
            if g.name in out or g.name in parts:
                raise TypeError(f"{cls.__name__} names the setting {g.name} twice")
            out[g.name] = (section, g)
    return out


def flatten(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` for ``cls`` with each section given as a dict lifted to flat names; a flat name
    given beside its section wins. Checks nothing: the config's constructor does."""
    parts = sections(cls)
    out: dict[str, Any] = {}
    for name, value in values.items():
        if name in parts and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if k not in values})
        else:
            out[name] = value
    return out


@dataclass(frozen=True)
class Range:
    """``lo`` and ``hi`` bounds (None: unbounded); ``*_open`` excludes the bound itself."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    why: str = ""  # said in the message, e.g. why a bound exists

    def __contains__(self, v: float) -> bool:
        if not math.isfinite(v):
            return False
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def __str__(self) -> str:
        if self.lo is not None and self.hi is not None:
            left, right = "(" if self.lo_open else "[", ")" if self.hi_open else "]"
            return f"in {left}{_num(self.lo)}, {_num(self.hi)}{right}"
        if self.lo is not None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.hi is not None:
            return f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        return "that is a finite number"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


POSITIVE = Range(0, None, lo_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_1 = Range(1)
PROBABILITY = Range(0, 1, hi_open=True)  # dropout, smoothing, betas: 1 would be degenerate
SEED = Range(0, 2**64 - 1, why="torch's generators take 64-bit seeds")


def check_ranges(obj: Any, table: dict[str, Range], flags: dict[str, str] | None = None) -> None:
    """Refuse the first field of ``obj`` whose value has another type than its annotation says
    (:func:`check_types`), then the first whose value (or any element of a tuple/list value) is
    outside its range in ``table``; ``None`` means "not set" and passes where the field allows
    it. The message names the field's flag: ``--<field>``, or ``flags``' name for it."""
    check_types(obj)
    for field, allowed in table.items():
        value = getattr(obj, field)
        name = (flags or {}).get(field, field)
        values = value if isinstance(value, (list, tuple)) else [value]
        for v in values:
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise UserError(f"--{name} {v!r} is not a number: use a value {allowed}")
            if v not in allowed:
                shown = " ".join(str(x) for x in values)
                why = f" ({allowed.why})" if allowed.why else ""
                raise UserError(f"--{name} {shown} is out of range{why}: use a value {allowed}")


_SCALARS = {int: "a whole number", float: "a number", str: "text", bool: "true or false"}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _accepts(hint: Any, value: Any) -> bool:
    """Whether ``value`` fits annotation ``hint`` (scalars, Optional, list/tuple of scalars)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(a, value) for a in args)
    if hint is type(None):
        return value is None
    if origin in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(
            any(_accepts(a, v) for a in inner) for v in value
        )
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    return True  # a section (a dataclass of its own checks) or anything else


def _what(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None) and a is not Ellipsis]
    if typing.get_origin(hint) in (list, tuple):
        return f"a list of {_what(args[0])}" if args else "a list"
    if args:
        return _what(args[0])
    return _SCALARS.get(hint, getattr(hint, "__name__", str(hint)))


def check_types(obj: Any) -> None:
    """Refuse the first field of dataclass ``obj`` whose value is not of its annotated type: a
    ``null`` or a string from a hand-edited config.json is one line here, not a traceback later
    in the model or the loop."""
    hints = _hints(type(obj))
    for f in fields(obj):
        value = getattr(obj, f.name)
        if not _accepts(hints[f.name], value):
            raise UserError(f"--{f.name} {value!r} is not {_what(hints[f.name])}: use one")


def check_choices(obj: Any) -> None:
    """Refuse the first field of dataclass ``obj`` whose value is not among its metadata's
    ``choices``. Reading every field's metadata, not a list, means a new field with choices
    cannot go unchecked."""
    for f in fields(obj):
        check_choice(f, getattr(obj, f.name))


def check_choice(f: Field[Any], value: Any) -> None:
    """Refuse ``value`` (or any element of a tuple/list value) for field ``f`` unless it is one
    of ``f``'s ``choices``; ``None`` means "not set" and passes, as does a field without any."""
    allowed = f.metadata.get("choices")
    if allowed is None:
        return
    for v in value if isinstance(value, (list, tuple)) else [value]:
        if v is not None and v not in allowed:
            names = [str(a) for a in allowed]
            shown = " or ".join([", ".join(names[:-1]), names[-1]] if names[1:] else names)
            raise UserError(f"unknown --{f.name} {v!r}: use {shown}")


class Section:
    """A config section's own checks, run when it is built: its ``RANGES`` and its fields'
    choices."""

    RANGES: ClassVar[dict[str, Range]] = {}

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)
        check_choices(self)
