"""Metadata of config fields: the help text of each flag, and the meaningful range of every
numeric setting, checked when a config is built.

A value outside its range (NaN and infinities included) is refused with one line that names the
flag, the value and the range, before anything is written. Each config dataclass lists its
ranges in a ``RANGES`` table beside its fields and calls :func:`check_ranges` first thing in
``__post_init__``, then :func:`check_choices`: a value outside a field's ``choices`` metadata is
refused by :func:`check_choice`, the one check of allowed values, whether they come from a flag
(checked as soon as it is parsed), a library call or a saved config.json.
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, fields
from typing import Any

from gpt_study.runtime.errors import UserError


def doc(text: str, **kw: Any) -> dict[str, Any]:
    """Field metadata: ``text`` becomes the flag's ``--help``; ``kw`` are extra argparse options."""
    return {"doc": text, **kw}


def thread_count(text: str) -> int:
    """``--threads``'s argparse type: a count, or ``auto``, stored as 0 so that the field stays an
    int and configs saved with 0 (torch's default, before auto existed) get the tuning too."""
    if text.strip().lower() == "auto":
        return 0
    try:
        return int(text)
    except ValueError:
        raise ValueError(text) from None  # argparse: "invalid thread_count value: 'x'"


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


def check_ranges(obj: Any, table: dict[str, Range]) -> None:
    """Refuse the first field of ``obj`` whose value (or any element of a tuple/list value) is
    outside its range in ``table``; ``None`` means "not set" and passes."""
    for name, allowed in table.items():
        value = getattr(obj, name)
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
