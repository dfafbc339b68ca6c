"""Flags from the config dataclasses: one ``--<field>`` per field, its help the field's ``doc``.

A field's ``choices`` appear in ``--help`` but are not argparse's to refuse: the config's own
check (:func:`gpt_study.config.fields.check_choice`) does, with the same line for a flag, a library
call and a saved config.json.

The study's flag names stay flat (``--lr``, ``--n_layers``, ...): every flag is a setting of exactly
one config, named once across its sections (:func:`gpt_study.config.fields.flat_fields`), so
:func:`dataclass_overrides` can hand each config the values the user typed, by flat name.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import fields
from typing import Any

from gpt_study.config.fields import check_choice, flat_fields, sections


def _argparse_type(hint: Any) -> tuple[Any, bool]:
    """(element type, is_bool) for a field's type hint, unwrapping Optional / list / tuple."""
    origin = typing.get_origin(hint)
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if origin in (typing.Union, getattr(types, "UnionType", None)) and args:
        return _argparse_type(args[0])
    if origin in (list, tuple) and args:
        return _argparse_type(args[0])
    return hint, hint is bool


def add_dataclass_args(
    parser: argparse.ArgumentParser,
    cls: type,
    skip: tuple[str, ...] = (),
    presets: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Add one ``--<field>`` flag per setting of ``cls``, each section's in a group of its own.

    Defaults are suppressed so that only flags the user gave override the preset / dataclass.
    """
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(cls.__name__, (cls.__doc__ or "").strip().splitlines()[0])
    for f in fields(cls):
        if f.name in sections(cls):
            add_dataclass_args(parser, hints[f.name], skip, presets)
            continue
        meta = dict(f.metadata)
        if f.name in skip or meta.pop("cli", True) is False:
            continue
        text = meta.pop("doc", "")
        meta.pop("resume", None)  # the config's, not argparse's
        typ, is_bool = _argparse_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        shown = [f"default: {default}"] if default not in (None, [], ()) else []
        shown += [f"{name}: {v[f.name]}" for name, v in (presets or {}).items() if f.name in v]
        help_text = f"{text} ({'; '.join(shown)})" if shown else text
        if is_bool:
            group.add_argument(
                f"--{f.name}",
                action=argparse.BooleanOptionalAction,
                default=argparse.SUPPRESS,
                help=help_text,
            )
        else:
            meta.setdefault("type", typ)  # a field's doc may give its own parser (--threads)
            choices = meta.pop("choices", None)  # shown here; fields.check_choice refuses
            if choices is not None:
                meta.setdefault("metavar", "{" + ",".join(map(str, choices)) + "}")
            group.add_argument(f"--{f.name}", default=argparse.SUPPRESS, help=help_text, **meta)


def dataclass_overrides(
    ns: argparse.Namespace, cls: type, skip: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The settings of ``cls`` that the user set on the command line, by flat name, each checked
    against its choices now: before anything else (a data folder, say) can fail first. A flag
    this module added is absent unless given (its default is suppressed); one of the same name
    added elsewhere with a default of ``None`` (evaluate's story flags) was not given either."""
    given = [
        f
        for _, f in flat_fields(cls).values()
        if f.name not in skip
        and f.metadata.get("cli", True)
        and getattr(ns, f.name, None) is not None
    ]
    for f in given:
        check_choice(f, getattr(ns, f.name))
    return {f.name: getattr(ns, f.name) for f in given}
