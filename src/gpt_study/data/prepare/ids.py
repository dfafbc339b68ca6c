"""The main process's bookkeeping in ``prepare``: every worker's provisional ids mapped to one
corpus-wide id space with their counts (:class:`Ids`), the split files being written with their
counts for meta.json (:class:`SplitWriter`), and which train stories are held out (:class:`Holdout`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from gpt_study.config import EOT_ID, SOT_ID, SPECIALS
from gpt_study.data.prepare.workers import Workers
from gpt_study.data.tokenizer.base import join_stories


class Ids:
    """Provisional ids of every worker mapped to one corpus-wide id space, with counts."""

    def __init__(self, workers: Workers) -> None:
        self.workers = workers
        self.parent = os.getpid()  # the key of batches done in this process
        self.words: list[str] = list(SPECIALS)
        self.index: dict[str, int] = {s: i for i, s in enumerate(SPECIALS)}
        self.local: dict[int, np.ndarray] = {}  # worker -> its local id -> global id
        self.local_n: dict[int, int] = {}
        self.counts = np.zeros(1024, dtype=np.int64)  # train-split count of each global id

    def to_global(self, key: int, new: list[str], lids: np.ndarray) -> np.ndarray:
        table = self.local.get(key)
        if table is None and self.workers.inherits and self.parent in self.local:
            # a forked worker: its provisional ids start as this process's were at the fork
            table = self.local[key] = self.local[self.parent].copy()
            self.local_n[key] = self.local_n[self.parent]
        elif table is None:
            # a fresh worker's provisional ids: the specials and its story start / end marks
            table = self.local[key] = np.array([*range(len(SPECIALS)), SOT_ID, EOT_ID], np.uint32)
            self.local_n[key] = len(table)
        n = self.local_n[key]
        if n + len(new) > len(table):
            table = self.local[key] = np.resize(table, max(2 * len(table), n + len(new)))
        for w in new:
            g = self.index.get(w)
            if g is None:
                g = self.index[w] = len(self.words)
                self.words.append(w)
            table[n] = g
            n += 1
        self.local_n[key] = n
        return table[lids]

    def count(self, gids: np.ndarray) -> None:
        if len(self.words) > len(self.counts):
            self.counts = np.concatenate(
                [self.counts, np.zeros(len(self.words) + len(self.counts), dtype=np.int64)]
            )
        np.add.at(self.counts, gids, 1)  # unlike bincount, no vocabulary-sized temporary


class SplitWriter:
    """Appends one split's token ids to a file and keeps its counts for meta.json."""

    def __init__(self, path: Path, dtype: type, marker: int | None = None) -> None:
        self.path = path
        self.dtype = dtype
        self.f = open(path, "wb")
        self.stories = self.tokens = self.chars = self.bytes = 0
        self.marker = marker  # a token that plays both <sot> and <eot>: once between stories
        self.last: int | None = None  # the last token written

    def write(self, ids: np.ndarray, chars: np.ndarray, nbytes: np.ndarray) -> None:
        ids = join_stories(ids, self.marker, self.last)
        if len(ids):
            self.last = int(ids[-1])
        ids.astype(self.dtype, copy=False).tofile(self.f)
        self.tokens += len(ids)
        self.stories += len(chars)
        self.chars += int(chars.sum())
        self.bytes += int(nbytes.sum())

    def close(self) -> None:
        self.f.close()

    def stats(self) -> dict[str, int]:
        return {
            "stories": self.stories,
            "tokens": self.tokens,
            "chars": self.chars,
            "bytes": self.bytes,
        }


class Holdout:
    """Routes every ``every``-th kept train story (the first included) to valid."""

    def __init__(self, fraction: float | None) -> None:
        self.every = max(2, round(1 / fraction)) if fraction else 0
        self.seen = 0

    def valid_mask(self, n: int) -> np.ndarray | None:
        if not self.every:
            return None
        idx = self.seen + np.arange(n)
        self.seen += n
        return idx % self.every == 0
