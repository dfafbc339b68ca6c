"""The worker-process side of ``prepare``: one batch of raw stories cleaned, filtered and encoded
(:func:`work`), and the ordered, bounded pool that maps it over the corpus (:class:`Workers`).

Kept apart from the main process's bookkeeping so that what runs in a worker, and what a forked
worker inherits, is all in one place.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np

from gpt_study.config import SPECIALS
from gpt_study.data.clean import clean_words
from gpt_study.data.tokenizer import (
    ByteTokenizer,
    ChunkTable,
    load_tokenizer,
    spacy_tokenizer,
    split_chunks,
)
from gpt_study.runtime.errors import UserError

BATCH_STORIES = 256  # stories per worker task
BATCH_CHARS = 1 << 20  # ... or this many characters, whichever comes first
CHUNK_CACHE = 2_000_000  # chunks a worker remembers before it starts over (bounds its memory)
# word: the main process tokenizes this many characters itself before it forks the workers, which
# inherit its chunk cache. Frequent chunks are then tokenized once, not once per worker, and a
# small corpus never pays for a pool at all.
WARMUP_CHARS = 2_000_000


_W: dict[str, Any] = {}  # per-process worker state, set by _init_worker
# A worker marks story starts and ends with chunks that clean_text never leaves in a text (ftfy
# removes control characters), so one str.split cuts a whole batch, and gives them provisional ids
# of their own so that a literal "<sot>" inside a story cannot be mistaken for a story start.
_START, _END = "\x01", "\x02"
_START_ID, _END_ID = len(SPECIALS), len(SPECIALS) + 1


def _adopt_worker() -> None:
    """Pool initializer after a fork: keep the parent's warm state, under this process's key."""
    _W["key"] = os.getpid()


def _init_worker(kind: str, lowercase: bool, min_chars: int) -> None:
    _W.clear()
    _W.update(
        kind=kind,
        lowercase=lowercase,
        min_chars=min_chars,
        key=os.getpid(),
        # piece -> provisional id of this worker
        ids={s: i for i, s in enumerate((*SPECIALS, _START, _END))},
        # chunk -> provisional ids of its pieces
        chunks=ChunkTable({_START: [_START_ID], _END: [_END_ID]}),
    )
    if kind == "word":
        spacy_tokenizer()  # a no-op when inherited from the parent


def work(texts: list[str], bpe_path: str | None = None) -> dict[str, Any]:
    """Clean, filter and encode one batch of raw stories.

    ``bpe`` batches that arrive before the BPE is trained (``bpe_path`` None) come back as
    cleaned text for the main process to keep until it is; ``byte`` has nothing to train, so
    its batches always come back encoded; ``given`` (``--tokenizer_from``) encodes with the
    tokenizer saved at ``bpe_path`` from the first batch.
    """
    lowercase, min_chars, kind = _W["lowercase"], _W["min_chars"], _W["kind"]
    whole = kind != "word"  # bpe, byte, given: whole cleaned texts, not spaCy's pieces
    # clean_text, cut open: its words are also the word tokenizer's chunks, so no story is
    # joined and split again (tests compare with clean_text on every story).
    chunks = [_START]  # word: all chunks of the batch, every story between _START and _END
    kept: list[list[str]] = []  # bpe, byte: the words of each cleaned text
    chars, nbytes = [], []
    for raw in texts:
        if len(raw) < min_chars:  # the study's filter: on the raw text, before cleaning
            continue
        words = clean_words(raw, lowercase)
        n = sum(map(len, words)) + len(words) - 1 if words else 0
        chars.append(n)
        ascii_ = raw.isascii() and "&" not in raw  # then so is ftfy's output (no entities)
        nbytes.append(n if ascii_ else len(" ".join(words).encode("utf-8")))
        if whole:
            kept.append(words)
        else:
            chunks.extend(words)
            chunks.append(_END)
            chunks.append(_START)
    chunks.pop()
    out: dict[str, Any] = {
        "key": _W["key"],
        "read": len(texts),
        "short": len(texts) - len(chars),
        "chars": np.array(chars, dtype=np.int64),
        "bytes": np.array(nbytes, dtype=np.int64),
    }
    if kind == "byte":
        out["ids"], out["lengths"] = ByteTokenizer(lowercase).encode_words(kept)
        return out
    if whole:
        if bpe_path is None:
            out["texts"] = [" ".join(words) for words in kept]
        else:
            if _W.get("bpe_path") != bpe_path:
                _W["bpe"], _W["bpe_path"] = load_tokenizer(bpe_path), bpe_path
            out["ids"], out["lengths"] = _W["bpe"].encode_words(kept)
        return out
    ids: dict[str, int] = _W["ids"]
    table: ChunkTable = _W["chunks"]
    misses = set(chunks).difference(table.index)
    if len(table.index) + len(misses) > CHUNK_CACHE:
        table.clear()  # start over (bounds memory); provisional ids stay valid
        misses = set(chunks).difference(table.index)
    new: list[str] = []
    misses_sorted = sorted(misses)
    pieces_ids = []
    for pieces in split_chunks(misses_sorted):
        lids = []
        for p in pieces:
            i = ids.get(p)
            if i is None:
                i = ids[p] = len(ids)
                new.append(p)
            lids.append(i)
        pieces_ids.append(lids)
    table.add(misses_sorted, pieces_ids)
    local = table.gather(chunks)
    starts = np.flatnonzero(local == _START_ID)
    out["new"] = new
    out["ids"] = local
    out["lengths"] = np.diff(np.append(starts, len(local)))
    return out


class Workers:
    """Ordered, bounded map of :func:`work` over batches.

    The first ``warmup_chars`` characters are done in this process; then a pool of ``workers``
    processes takes over (with ``workers`` 1, everything is done here). Forked workers inherit
    this process's worker state, so :class:`Ids` must give their keys the parent's id table
    (``inherits``).
    """

    def __init__(self, workers: int, initargs: tuple[Any, ...], warmup_chars: int = 0) -> None:
        self.workers = workers
        self.initargs = initargs
        self.warmup_chars = warmup_chars
        self.pool: Any = None
        self.method = "fork" if sys.platform == "linux" else "spawn"
        self.inherits = False
        if initargs[0] == "word":
            spacy_tokenizer()  # load once here; forked workers inherit it
        _init_worker(*initargs)

    def _start_pool(self) -> None:
        # ProcessPoolExecutor, not multiprocessing.Pool: when a worker dies (killed, out of
        # memory) the executor breaks and says so, where a Pool silently loses the batch and hangs.
        ctx = mp.get_context(self.method)
        if self.method == "fork":
            self.inherits = True
            init, args = _adopt_worker, ()
        else:
            init, args = _init_worker, self.initargs
        self.pool = ProcessPoolExecutor(
            self.workers, mp_context=ctx, initializer=init, initargs=args
        )

    def map(self, items: Iterable[tuple[Any, tuple]]) -> Iterator[tuple[Any, dict[str, Any]]]:
        """Results of ``work(*args)`` for ``(tag, args)`` items, in order, with their tags."""
        done = 0
        pending: deque = deque()
        for tag, args in items:
            if self.pool is None and (self.workers <= 1 or done < self.warmup_chars):
                yield tag, work(*args)
                done += sum(map(len, args[0]))
                continue
            if self.pool is None:
                self._start_pool()
            pending.append((tag, self.pool.submit(work, *args)))
            if len(pending) > 2 * self.workers:  # stay only a few batches ahead of the writer
                tag0, res = pending.popleft()
                yield tag0, _result(res)
        while pending:
            tag0, res = pending.popleft()
            yield tag0, _result(res)

    def close(self, ok: bool) -> None:
        if self.pool is not None:
            if not ok:  # stop the workers now rather than after the queued batches
                for proc in list(getattr(self.pool, "_processes", {}).values()):
                    proc.terminate()
            self.pool.shutdown(wait=True, cancel_futures=not ok)


def _result(future: Any) -> dict[str, Any]:
    try:
        return future.result()
    except BrokenProcessPool:
        raise UserError(
            "a tokenization worker died (killed, or out of memory): "
            "run again, with --workers 1 to stay in one process"
        ) from None


def batches(stories: Iterable[str]) -> Iterator[list[str]]:
    batch: list[str] = []
    size = 0
    for s in stories:
        batch.append(s)
        size += len(s)
        if len(batch) >= BATCH_STORIES or size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def start_workers(n_workers: int, kind: str, lowercase: bool, min_chars: int) -> Workers:
    """The pool for one ``prepare`` run: ``word`` warms up here first, ``bpe`` and ``byte`` do
    not."""
    warmup = WARMUP_CHARS if kind == "word" else 0  # bpe: fork before any training
    return Workers(n_workers, (kind, lowercase, min_chars), warmup_chars=warmup)
