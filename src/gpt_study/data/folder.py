"""The prepared folder's ``meta.json`` as typed values, checked once when it is read.

``gpt-study prepare`` (:mod:`gpt_study.data.prepare`) writes the folder and
:mod:`gpt_study.data.dataset` reads it; :data:`SPLITS` and the shape of ``meta.json`` are defined
here so that both agree. A ``meta.json`` that lacks a key or holds a value of the wrong type is
reported in one line that names the file and says how to redo it, not as a ``KeyError`` later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt_study.runtime.errors import UserError

SPLITS = ("train", "valid")

# meta["splits"][split]: prepare writes all of these; only "tokens" is required on reading (hand-
# made folders, as in the tests, may leave out the rest).
_SPLIT_INTS = ("stories", "tokens", "chars", "bytes", "unk")
_SPLIT_REQUIRED = ("tokens",)


def redo_hint(folder: str | Path) -> str:
    """How to rebuild a damaged prepared folder (prepare replaces it: it holds only its files)."""
    return f"re-run `gpt-study prepare --data <your corpus> --out {folder} --force`"


def _damaged(path: str | Path, what: str) -> UserError:
    return UserError(f"{path} is damaged ({what}): {redo_hint(Path(path).parent)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True)
class SplitMeta:
    """Counts of one split (``meta["splits"][split]``); ``None`` where meta.json has none.

    ``unk`` counts ``<unk>`` tokens, ``unk_rate`` is ``unk`` over the tokens without
    ``<sot>``/``<eot>``; ``bytes`` is the UTF-8 size of the cleaned stories (for bits per byte).
    """

    tokens: int
    stories: int | None = None
    chars: int | None = None
    bytes: int | None = None
    unk: int | None = None
    unk_rate: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # keys this version does not know

    @classmethod
    def from_dict(cls, d: Any, path: str | Path, split: str) -> SplitMeta:
        where = f'"splits"."{split}"'
        if not isinstance(d, dict):
            raise _damaged(path, f"{where} is not an object")
        for key in _SPLIT_REQUIRED:
            if key not in d:
                raise _damaged(path, f'{where} lacks "{key}"')
        values: dict[str, Any] = {}
        for key in _SPLIT_INTS:
            if key in d:
                if not _is_int(d[key]) or d[key] < 0:
                    raise _damaged(path, f'{where}."{key}" is not a count')
                values[key] = d[key]
        if "unk_rate" in d:
            rate = d["unk_rate"]
            if not isinstance(rate, (int, float)) or isinstance(rate, bool):
                raise _damaged(path, f'{where}."unk_rate" is not a number')
            values["unk_rate"] = float(rate)
        extra = {k: v for k, v in d.items() if k not in values}
        return cls(**values, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in (*_SPLIT_INTS, "unk_rate"):
            value = getattr(self, key)
            if value is not None:
                out[key] = value
        out.update(self.extra)
        return out


@dataclass(frozen=True)
class Meta:
    """A prepared folder's ``meta.json``: the settings it was made with, the counts of each split,
    the inputs it was made from (``sources``), and every other key as it was (``rest``: format,
    fingerprint, tokenizer, vocab_size, created, ...)."""

    splits: dict[str, SplitMeta]
    settings: dict[str, Any] = field(default_factory=dict)
    sources: list[dict[str, Any]] = field(default_factory=list)
    rest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: Any, path: str | Path) -> Meta:
        """Check and type ``d``, read from ``path``; a :class:`UserError` names what is wrong."""
        if not isinstance(d, dict):
            raise _damaged(path, "not a JSON object")
        if "splits" not in d:
            raise _damaged(path, 'no "splits"')
        if not isinstance(d["splits"], dict):
            raise _damaged(path, '"splits" is not an object')
        splits = {}
        for split in SPLITS:
            if split not in d["splits"]:
                raise _damaged(path, f'"splits" lacks "{split}"')
        for split, value in d["splits"].items():
            splits[split] = SplitMeta.from_dict(value, path, split)
        settings = d.get("settings", {})
        if not isinstance(settings, dict):
            raise _damaged(path, '"settings" is not an object')
        sources = d.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, dict) for s in sources):
            raise _damaged(path, '"sources" is not a list of objects')
        rest = {k: v for k, v in d.items() if k not in ("splits", "settings", "sources")}
        return cls(splits=splits, settings=settings, sources=sources, rest=rest)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object again (``from_dict(m.to_dict(), p) == m``)."""
        return {
            **self.rest,
            "sources": self.sources,
            "splits": {split: s.to_dict() for split, s in self.splits.items()},
            "settings": self.settings,
        }
