"""Reading a prepared folder: memory-mapped uint16 token streams plus their metadata.

A prepared folder (written by ``gpt-study prepare``) holds::

    train.bin, valid.bin   every story as <sot> ... <eot>, concatenated, uint16 little-endian
    tokenizer.json         the vocabulary (gpt_study.data.tokenizer.load_tokenizer)
    meta.json              settings, sources and counts; meta["splits"][split] has
                           "stories", "tokens", "chars", "bytes", "unk" (count of <unk> tokens)

Nothing is read into memory here: training draws rows straight from the memory map, so a corpus
larger than RAM still works.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt_study.errors import UserError

SPLITS = ("train", "valid")


@dataclass
class PreparedData:
    folder: Path
    meta: dict[str, Any]

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / "tokenizer.json"

    def tokens(self, split: str) -> np.ndarray:
        """The whole token stream of ``split`` as a read-only uint16 memory map."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        path = self.folder / f"{split}.bin"
        return np.memmap(path, dtype=np.uint16, mode="r")

    def split_meta(self, split: str) -> dict[str, Any]:
        return self.meta["splits"][split]


def open_prepared(folder: str | os.PathLike) -> PreparedData:
    """Open and sanity-check a prepared folder; a clear error says how to make one."""
    folder = Path(folder)
    hint = f"run `gpt-study prepare --out {folder}` first"
    if not folder.is_dir():
        raise UserError(f"no prepared data folder at {folder}: {hint}")
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise UserError(
            f"{folder} has no meta.json, so it is not a finished prepared folder: {hint}"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{meta_path} is damaged (not JSON): {hint} with --force") from None
    for name in ("train.bin", "valid.bin", "tokenizer.json"):
        if not (folder / name).exists():
            raise UserError(f"{folder} lacks {name}: {hint} with --force")
    data = PreparedData(folder, meta)
    for split in SPLITS:
        want = data.split_meta(split)["tokens"]
        have = (folder / f"{split}.bin").stat().st_size // 2
        if want != have:
            raise UserError(
                f"{folder}/{split}.bin holds {have} tokens, meta.json says {want}: {hint} with --force"
            )
    return data
