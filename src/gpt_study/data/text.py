"""A prepared split as text: the stories ``prepare`` encoded, and the bytes bits per byte divides by.

One definition for every scorer, gpt-study's own and a published model's (``evaluate --hf``):

* **The text** of a split is its stories in ``prepare``'s order, each the cleaned story
  (:func:`~gpt_study.data.clean.clean_text` of a raw story that passed ``--min_chars``), exactly
  what ``prepare`` encoded between ``<sot>`` and ``<eot>``.
* **The end of a story** is a marker, not text: ``<eot>`` (with ``<sot>`` before the next story)
  for gpt-study, the model's own end-of-sequence token for a transformers model. A marker is
  predicted like any token (its NLL counts) but stands for no bytes.
* **The bytes** are the UTF-8 bytes of the stories' text, markers excluded:
  :func:`text_bytes`, the number ``prepare`` records as ``meta.json``'s ``bytes`` per split and
  the denominator of every bits-per-byte figure.

:func:`split_stories` gets the text back: decoded from the token stream where the tokenizer is
lossless (``bpe``, ``byte``), else (``word``: ``<unk>``, spaCy's pieces) read again from the
folder's recorded sources (:func:`source_stories`, as ``prepare`` read them). Either way it is
checked against ``meta.json``: the same number of stories and exactly its bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from gpt_study.data.clean import clean_text
from gpt_study.data.dataset import PreparedData, positions_of
from gpt_study.data.folder import redo_hint
from gpt_study.data.prepare.ids import Holdout
from gpt_study.data.sources import Source, iter_stories
from gpt_study.data.tokenizer import LOSSLESS, load_tokenizer
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import sha256_file


def text_bytes(texts: Iterable[str]) -> int:
    """The bytes a text stands for: UTF-8 bytes of its stories, end-of-story markers excluded."""
    return sum(len(t.encode("utf-8")) for t in texts)


def split_bytes(data: PreparedData, split: str = "valid") -> int:
    """The bytes every bits-per-byte figure of ``split`` divides by: :func:`text_bytes` of its
    stories, as ``prepare`` counted them into ``meta.json`` (0 where a hand-made folder has none;
    :func:`split_stories` checks that its text has exactly these bytes)."""
    return int(data.split_meta(split).get("bytes") or 0)


def split_stories(data: PreparedData, split: str = "valid") -> list[str]:
    """The split's stories as text (see the module docstring), checked against ``meta.json``."""
    kind = data.meta.get("tokenizer") or data.meta.get("settings", {}).get("tokenizer")
    if kind in LOSSLESS:
        texts = decoded_stories(data, split)
        how = "decoded from"
    else:
        lowercase = bool(data.meta.get("lowercase", data.meta.get("settings", {}).get("lowercase")))
        texts = source_stories(data.meta, split, lowercase, check=True)
        how = "read from the recorded sources of"
        if texts is None:
            raise UserError(
                f"{data.folder} holds a {kind} vocabulary, which cannot give its text back "
                f"(<unk>, spaCy's pieces), and its {split} stories' sources are not on this "
                "machine: prepare the same corpus with --tokenizer bpe or byte and pass that"
            )
    meta = data.split_meta(split)
    want_n, want_bytes = meta.get("stories"), meta.get("bytes")
    have = text_bytes(texts)
    if (want_n is not None and want_n != len(texts)) or (
        want_bytes is not None and want_bytes != have
    ):
        raise UserError(
            f"the {split} stories {how} {data.folder} ({len(texts)} stories, {have:,} bytes) "
            f"do not match its meta.json ({want_n} stories, {want_bytes} bytes): "
            f"{redo_hint(data.folder)}"
        )
    return texts


def decoded_stories(data: PreparedData, split: str) -> list[str]:
    """Each ``<sot> ... <eot>`` of the split's stream decoded with the folder's tokenizer."""
    tokens = data.tokens(split)
    tok = load_tokenizer(data.tokenizer_path)  # its special ids, not the word vocabulary's
    starts = positions_of(tok.sot_id, tokens, len(tokens))
    ends = positions_of(tok.eot_id, tokens, len(tokens))
    if len(starts) != len(ends) or np.any(ends <= starts):
        raise UserError(
            f"{data.folder / f'{split}.bin'} is not a run of <sot> ... <eot> stories: "
            f"{redo_hint(data.folder)}"
        )
    return [tok.decode(tokens[s + 1 : e].tolist()) for s, e in zip(starts, ends, strict=True)]


def _recorded_sources(meta: dict[str, Any], split: str) -> tuple[list[dict[str, Any]], Any]:
    """The sources that fed ``split`` and, when valid was held out of train, its share."""
    sources = [s for s in meta.get("sources", []) if isinstance(s, dict)]
    own = [s for s in sources if s.get("split") == split]
    if split == "train" or own:
        return own, None
    fraction = meta.get("settings", {}).get("valid_fraction")
    return [s for s in sources if s.get("split") == "train"], fraction


def source_stories(
    meta: dict[str, Any], split: str, lowercase: bool, limit: int = 0, check: bool = False
) -> list[str] | None:
    """The split's cleaned stories read again from the sources ``meta.json`` records, as
    ``prepare`` read them (the raw ``--min_chars`` filter, then cleaning; every n-th kept train
    story when valid was held out of train); at most ``limit`` (0: all). ``None`` when a source
    is not a local file that is still there (or, with ``check``, no longer has its recorded
    sha256)."""
    sources, fraction = _recorded_sources(meta, split)
    paths = [Path(s["path"]) for s in sources if s.get("path")]
    if not paths or len(paths) != len(sources) or not all(p.is_file() for p in paths):
        return None
    if check and any(_changed(p, s.get("sha256")) for p, s in zip(paths, sources, strict=True)):
        return None
    min_chars = int(meta.get("settings", {}).get("min_chars") or 0)
    held = Holdout(fraction) if fraction else None
    texts: list[str] = []
    for path in paths:
        for raw in iter_stories(Source("train" if held is not None else split, path)):
            if len(raw) < min_chars:
                continue  # prepare's filter, on the raw text
            if held is not None and not held.valid_mask(1)[0]:  # type: ignore[index]
                continue  # a train story: prepare held out every n-th kept one
            texts.append(clean_text(raw, lowercase))
            if len(texts) == limit:
                return texts
    return texts


def _changed(path: Path, sha256: Any) -> bool:
    return isinstance(sha256, str) and sha256_file(path) != sha256
