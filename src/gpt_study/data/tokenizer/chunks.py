"""spaCy access and the per-chunk caches that make tokenizing a corpus fast.

spaCy splits text at spaces first and then tokenizes each space-free chunk on its own, so the
pieces (``word``) or ids (``bpe``, whose byte-level split also cuts before every space) of a chunk
never depend on its neighbours: running text repeats its chunks so often that caching them skips
most of the work. ``prepare``'s workers use these directly as well as the tokenizers.
"""

from __future__ import annotations

import sys
from functools import lru_cache
from itertools import chain
from typing import Any

import numpy as np

from gpt_study.config import SPECIALS


def _import_spacy() -> Any:
    """``import spacy``, without letting thinc (under spaCy) import torch when torch is not loaded.

    thinc imports torch only to offer torch-backed layers; the tokenizer needs none of them, and
    torch would add seconds to every ``gpt-study prepare`` and every worker start (docs/train.md,
    "Measurements"). A later ``import torch`` works as usual.
    """
    if "spacy" in sys.modules or "torch" in sys.modules:
        import spacy

        return spacy
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail fast
    try:
        import spacy
    finally:
        del sys.modules["torch"]
    return spacy


@lru_cache(maxsize=1)
def spacy_tokenizer() -> Any:
    """spaCy's English rule-based tokenizer, with the specials kept whole (``<eot>``, not
    ``<``, ``eot``, ``>``)."""
    spacy = _import_spacy()
    from spacy.symbols import ORTH

    tok = spacy.blank("en").tokenizer
    for s in SPECIALS:
        tok.add_special_case(s, [{ORTH: s}])
    return tok


def split_chunks(chunks: list[str]) -> list[list[str]]:
    """spaCy's pieces of each space-free chunk, from one spaCy call for the whole list.

    Joining the chunks with single spaces and cutting spaCy's output at the tokens followed by a
    space gives what tokenizing each chunk alone would: spaCy only looks inside a chunk.
    """
    if not chunks:
        return []
    doc = spacy_tokenizer()(" ".join(chunks))
    out: list[list[str]] = []
    cur: list[str] = []
    for t in doc:
        cur.append(t.text)
        if t.whitespace_:
            out.append(cur)
            cur = []
    out.append(cur)
    if len(out) != len(chunks):  # a chunk holding whitespace: fall back to one call per chunk
        return [[t.text for t in spacy_tokenizer()(c)] for c in chunks]
    return out


class ChunkTable:
    """Space-free chunk -> its token ids, as flat numpy arrays, for encoding in bulk.

    Encoding a batch is then one dict lookup per chunk (to a chunk number) and a few numpy
    operations that expand chunk numbers into ids, instead of a Python step per token. The arrays
    grow by doubling, so adding chunks costs amortized constant time.
    """

    def __init__(self, initial: dict[str, list[int]] | None = None) -> None:
        self.initial = dict(initial or {})
        self.clear()

    def clear(self) -> None:
        """Forget every chunk except the initial ones (bounds memory on huge corpora)."""
        self.index: dict[str, int] = {}  # chunk -> chunk number
        self.start = np.zeros(1024, dtype=np.int64)  # chunk number -> first slot in ids
        self.count = np.zeros(1024, dtype=np.int64)  # chunk number -> how many ids
        self.ids = np.zeros(4096, dtype=np.uint32)
        self.used = 0  # slots of ids in use
        self.add(list(self.initial), list(self.initial.values()))

    @staticmethod
    def _fit(a: np.ndarray, size: int) -> np.ndarray:
        return a if size <= len(a) else np.resize(a, max(size, 2 * len(a)))

    def add(self, chunks: list[str], ids: list[list[int]]) -> None:
        if not chunks:
            return
        n, k = len(self.index), len(chunks)
        counts = np.array([len(p) for p in ids], dtype=np.int64)
        total = int(counts.sum())
        self.start, self.count = self._fit(self.start, n + k), self._fit(self.count, n + k)
        self.ids = self._fit(self.ids, self.used + total)
        self.start[n : n + k] = self.used + np.cumsum(counts) - counts
        self.count[n : n + k] = counts
        self.ids[self.used : self.used + total] = np.fromiter(
            chain.from_iterable(ids), dtype=np.uint32, count=total
        )
        self.used += total
        self.index.update(zip(chunks, range(n, n + k), strict=True))

    def gather(self, chunks: list[str]) -> np.ndarray:
        """The ids of ``chunks`` (all in the table), concatenated (uint32)."""
        if not chunks:
            return np.zeros(0, dtype=np.uint32)
        nums = np.fromiter(map(self.index.__getitem__, chunks), dtype=np.int64, count=len(chunks))
        counts = self.count[nums]
        ends = np.cumsum(counts)
        # slot of output position j: its chunk's first slot + (j - where that chunk's output starts)
        offset = np.repeat(self.start[nums] - (ends - counts), counts)
        return self.ids[np.arange(int(ends[-1])) + offset]


class ChunkSplitter:
    """Splits cleaned text into spaCy word pieces, caching the pieces of each chunk.

    ``max_cache`` bounds memory on huge corpora: the cache is emptied when it grows past it.
    """

    def __init__(self, max_cache: int = 2_000_000) -> None:
        self.cache: dict[str, tuple[str, ...]] = {}
        self.max_cache = max_cache

    def lookup_many(self, chunks: list[str]) -> None:
        """Make sure every chunk of ``chunks`` is in the cache (one spaCy call for the misses)."""
        cache = self.cache
        misses = list(dict.fromkeys(c for c in chunks if c not in cache))
        if not misses:
            return
        if len(cache) + len(misses) > self.max_cache:
            cache.clear()
        for c, pieces in zip(misses, split_chunks(misses), strict=True):
            cache[c] = tuple(pieces)

    def split(self, text: str) -> list[str]:
        chunks = text.split()
        self.lookup_many(chunks)
        cache = self.cache
        out: list[str] = []
        for c in chunks:
            out.extend(cache[c])
        return out
