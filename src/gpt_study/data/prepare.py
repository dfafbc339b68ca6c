"""``gpt-study prepare``: a corpus -> cleaned stories -> vocabulary -> uint16 token streams.

One streaming pass over the stories, spread over all cores:

1. The main process reads raw stories (:mod:`gpt_study.data.sources`) in batches and hands them
   to worker processes, at most a few batches ahead, so memory stays flat.
2. A worker cleans each story (:func:`~gpt_study.data.clean.clean_text`), drops short ones and,
   for ``word``, splits it with spaCy once, caching the pieces of every space-free chunk. It
   encodes the pieces into its own provisional id space right away and sends back the ids plus
   the pieces it saw for the first time.
3. The main process maps provisional ids to corpus-wide ones (a numpy lookup), counts them and
   streams them to a temporary uint32 file. When the stream ends the frequency ranking gives the
   final vocabulary, and one numpy lookup per block turns the temporary file into ``train.bin``.
   So counting and encoding share one tokenization, as the issue asks; the study tokenized twice.

For ``bpe`` the workers only clean; the main process trains the byte-level BPE on the first
``--bpe_train_chars`` characters of the train split (a bounded sample) and encodes with the
``tokenizers`` library, which uses all cores itself.

Everything is written into a hidden temporary folder renamed into place at the end, so a killed
run leaves nothing that looks finished; a finished folder with the same inputs and settings is
reused (``--force`` redoes it).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from gpt_study import __version__
from gpt_study.config import (
    EOT_ID,
    SOT_ID,
    SPECIALS,
    DataConfig,
)
from gpt_study.data.clean import fix_text
from gpt_study.data.sources import (
    HUB_DATASET,
    Source,
    hub_fingerprint,
    iter_stories,
    load_hub_split,
    resolve_sources,
    sha256_file,
)
from gpt_study.data.tokenizer import (
    BPETokenizer,
    ChunkTable,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    spacy_tokenizer,
    split_chunks,
    train_bpe,
)
from gpt_study.errors import UserError
from gpt_study.io import write_json_atomic

SPLITS = ("train", "valid")
# Settings that change the output; the rest (--out, --workers, --force) do not.
SETTINGS_KEYS = (
    "tokenizer",
    "vocab_size",
    "min_freq",
    "min_chars",
    "lowercase",
    "valid_fraction",
    "bpe_train_chars",
)
BATCH_STORIES = 256  # stories per worker task
BATCH_CHARS = 1 << 20  # ... or this many characters, whichever comes first
CHUNK_CACHE = 2_000_000  # chunks a worker remembers before it starts over (bounds its memory)
# word: the main process tokenizes this many characters itself before it forks the workers, which
# inherit its chunk cache. Frequent chunks are then tokenized once, not once per worker, and a
# small corpus never pays for a pool at all.
WARMUP_CHARS = 2_000_000
BLOCK = 1 << 24  # tokens per block when rewriting provisional ids


# ----------------------------------------------------------------------------- workers

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


def _work(texts: list[str], bpe_path: str | None = None) -> dict[str, Any]:
    """Clean, filter and encode one batch of raw stories.

    ``bpe`` batches that arrive before the BPE is trained (``bpe_path`` None) come back as
    cleaned text for the main process to keep until it is.
    """
    lowercase, min_chars, bpe = _W["lowercase"], _W["min_chars"], _W["kind"] == "bpe"
    # clean_text, cut open: its whitespace split also gives the word tokenizer its chunks, so
    # no story is joined and split again (tests compare with clean_text on every story).
    chunks = [_START]  # word: all chunks of the batch, every story between _START and _END
    kept: list[list[str]] = []  # bpe: the words of each cleaned text
    chars, nbytes = [], []
    for raw in texts:
        fixed = fix_text(raw)
        words = (fixed.lower() if lowercase else fixed).split()
        n = sum(map(len, words)) + len(words) - 1 if words else 0
        if n < min_chars:
            continue
        chars.append(n)
        nbytes.append(n if fixed.isascii() else len(" ".join(words).encode("utf-8")))
        if bpe:
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
    if bpe:
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


class _Workers:
    """Ordered, bounded map of :func:`_work` over batches.

    The first ``warmup_chars`` characters are done in this process; then a pool of ``workers``
    processes takes over (with ``workers`` 1, everything is done here). Forked workers inherit
    this process's worker state, so :class:`_Ids` must give their keys the parent's id table
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
        """Results of ``_work(*args)`` for ``(tag, args)`` items, in order, with their tags."""
        done = 0
        pending: deque = deque()
        for tag, args in items:
            if self.pool is None and (self.workers <= 1 or done < self.warmup_chars):
                yield tag, _work(*args)
                done += sum(map(len, args[0]))
                continue
            if self.pool is None:
                self._start_pool()
            pending.append((tag, self.pool.submit(_work, *args)))
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


def _batches(stories: Iterable[str]) -> Iterator[list[str]]:
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


# ----------------------------------------------------------------------------- bookkeeping


class _Ids:
    """Provisional ids of every worker mapped to one corpus-wide id space, with counts."""

    def __init__(self, workers: _Workers) -> None:
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


class _SplitWriter:
    """Appends one split's token ids to a file and keeps its counts for meta.json."""

    def __init__(self, path: Path, dtype: type) -> None:
        self.path = path
        self.dtype = dtype
        self.f = open(path, "wb")
        self.stories = self.tokens = self.chars = self.bytes = 0

    def write(self, ids: np.ndarray, chars: np.ndarray, nbytes: np.ndarray) -> None:
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


class _Holdout:
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


def _progress(enabled: bool) -> Any:
    from tqdm import tqdm

    return tqdm(disable=not enabled, unit=" stories", desc="prepare", smoothing=0.1, leave=True)


# ---------------------------------------------------------------------------- the pass


def _tagged_batches(
    sources: list[Source], hub: dict[Source, Any]
) -> Iterator[tuple[tuple[str, int], list[str]]]:
    """(source split, source index) and a batch of raw stories; train sources first."""
    order = sorted(range(len(sources)), key=lambda i: sources[i].split != "train")
    for i in order:
        src = sources[i]
        for batch in _batches(iter_stories(src, hub.get(src))):
            yield (src.split, i), batch


def _run_word(
    cfg: DataConfig,
    sources: list[Source],
    hub: dict[Source, Any],
    tmp: Path,
    workers: _Workers,
    holdout: _Holdout,
    bar: Any,
    per_source: list[dict[str, int]],
) -> tuple[Tokenizer, dict[str, _SplitWriter]]:
    ids = _Ids(workers)
    writers = {s: _SplitWriter(tmp / f"{s}.ids32", np.uint32) for s in SPLITS}
    tasks = ((tag, (batch,)) for tag, batch in _tagged_batches(sources, hub))
    for (split, i), res in workers.map(tasks):
        gids = ids.to_global(res["key"], res["new"], res["ids"])
        lengths, chars, nbytes = res["lengths"], res["chars"], res["bytes"]
        per_source[i]["read"] += res["read"]
        per_source[i]["short"] += res["short"]
        mask = holdout.valid_mask(len(lengths)) if split == "train" else None
        for part, part_ids, part_chars, part_bytes in _route(
            split, mask, gids, lengths, chars, nbytes
        ):
            if part == "train":
                ids.count(part_ids)  # the vocabulary comes from the train split only
            writers[part].write(part_ids, part_chars, part_bytes)
        bar.update(res["read"])
        bar.set_postfix_str(f"{writers['train'].tokens + writers['valid'].tokens:,} tokens")
    for w in writers.values():
        w.close()
    _check_nonempty(cfg, writers, holdout)

    # The vocabulary: specials, then the most frequent train pieces (ties in code-point order).
    counts = ids.counts[: len(ids.words)]
    cand = [g for g in np.flatnonzero(counts >= cfg.min_freq).tolist() if g >= len(SPECIALS)]
    cand.sort(key=lambda g: (-counts[g], ids.words[g]))
    top = cand[: cfg.vocab_size - len(SPECIALS)]  # type: ignore[operator]
    remap = np.zeros(len(ids.words), dtype=np.uint16)  # everything else is <unk> = 0
    remap[: len(SPECIALS)] = np.arange(len(SPECIALS))
    remap[np.array(top, dtype=np.int64)] = np.arange(len(SPECIALS), len(SPECIALS) + len(top))
    tok = WordTokenizer(
        list(SPECIALS) + [ids.words[g] for g in top],
        lowercase=bool(cfg.lowercase),
        counts=[int(counts[g]) for g in range(len(SPECIALS))] + [int(counts[g]) for g in top],
    )

    finals = {}
    for split, w in writers.items():
        final = _SplitWriter(tmp / f"{split}.bin", np.uint16)
        unk = 0
        src = np.memmap(w.path, dtype=np.uint32, mode="r") if w.tokens else np.zeros(0, np.uint32)
        for start in range(0, len(src), BLOCK):
            block = remap[src[start : start + BLOCK]]
            unk += int(np.count_nonzero(block == 0))
            block.tofile(final.f)
        del src
        final.close()
        w.path.unlink()
        final.stories, final.tokens, final.chars, final.bytes = (
            w.stories,
            w.tokens,
            w.chars,
            w.bytes,
        )
        final.unk = unk  # type: ignore[attr-defined]
        finals[split] = final
    return tok, finals


def _run_bpe(
    cfg: DataConfig,
    sources: list[Source],
    hub: dict[Source, Any],
    tmp: Path,
    workers: _Workers,
    holdout: _Holdout,
    bar: Any,
    per_source: list[dict[str, int]],
) -> tuple[Tokenizer, dict[str, _SplitWriter]]:
    writers = {s: _SplitWriter(tmp / f"{s}.bin", np.uint16) for s in SPLITS}
    for w in writers.values():
        w.unk = 0  # type: ignore[attr-defined]
    tok: BPETokenizer | None = None
    trained: list[str | None] = [None]  # the saved BPE, once trained: later tasks encode too
    buffered: list[tuple[str, list[str], np.ndarray, np.ndarray]] = []  # until it is trained
    buffered_chars = 0

    def write(split: str, ids: np.ndarray, chars: np.ndarray, nbytes: np.ndarray) -> None:
        writers[split].unk += int(np.count_nonzero(ids == 0))  # type: ignore[attr-defined]
        writers[split].write(ids, chars, nbytes)

    def emit(split: str, texts: list[str], chars: np.ndarray, nbytes: np.ndarray) -> None:
        assert tok is not None
        write(split, tok.encode_stories(texts)[0], chars, nbytes)

    def train_now() -> None:
        nonlocal tok, buffered
        if not any(split == "train" and texts for split, texts, _, _ in buffered):
            return  # nothing to train on: _check_nonempty reports it
        sample = (t for split, texts, _, _ in buffered if split == "train" for t in texts)
        tok = train_bpe(sample, cfg.vocab_size, bool(cfg.lowercase), cfg.min_freq)  # type: ignore[arg-type]
        tok.save(tmp / "tokenizer.json")
        trained[0] = str(tmp / "tokenizer.json")
        for part in buffered:
            emit(*part)
        buffered = []

    tasks = ((tag, (batch, trained[0])) for tag, batch in _tagged_batches(sources, hub))
    for (split, i), res in workers.map(tasks):
        per_source[i]["read"] += res["read"]
        per_source[i]["short"] += res["short"]
        chars, nbytes = res["chars"], res["bytes"]
        mask = holdout.valid_mask(len(chars)) if split == "train" else None
        if "ids" in res:  # encoded by the worker
            for part in _route(split, mask, res["ids"], res["lengths"], chars, nbytes):
                write(*part)
        else:
            texts = res["texts"]
            if mask is None:
                parts = [(split, texts, chars, nbytes)]
            else:
                parts = [
                    ("train", [t for t, m in zip(texts, mask, strict=True) if not m]),
                    ("valid", [t for t, m in zip(texts, mask, strict=True) if m]),
                ]
                parts = [
                    (*parts[0], chars[~mask], nbytes[~mask]),
                    (*parts[1], chars[mask], nbytes[mask]),
                ]
            if tok is None and split != "train":
                train_now()
            for part in parts:
                if tok is not None:
                    emit(*part)
                    continue
                buffered.append(part)
                if part[0] == "train":
                    buffered_chars += int(part[2].sum())
            if tok is None and buffered_chars >= cfg.bpe_train_chars:
                train_now()
        bar.update(res["read"])
        bar.set_postfix_str(f"{writers['train'].tokens + writers['valid'].tokens:,} tokens")
    if tok is None:
        train_now()
    for w in writers.values():
        w.close()
    _check_nonempty(cfg, writers, holdout)
    assert tok is not None
    return tok, writers


def _route(
    split: str,
    mask: np.ndarray | None,
    ids: np.ndarray,
    lengths: np.ndarray,
    chars: np.ndarray,
    nbytes: np.ndarray,
) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray]]:
    """(split, ids, chars, bytes) parts of one batch: held-out stories (``mask``) to valid."""
    if mask is None:
        return [(split, ids, chars, nbytes)]
    tok_mask = np.repeat(mask, lengths)
    return [
        ("train", ids[~tok_mask], chars[~mask], nbytes[~mask]),
        ("valid", ids[tok_mask], chars[mask], nbytes[mask]),
    ]


def _check_nonempty(cfg: DataConfig, writers: dict[str, _SplitWriter], holdout: _Holdout) -> None:
    for split in SPLITS:
        if writers[split].stories == 0:
            where = "the train files" if split == "train" or holdout.every else "the valid files"
            raise UserError(
                f"no {split} story of at least --min_chars {cfg.min_chars} characters in {where}: "
                "lower --min_chars or pass more text"
            )


# ----------------------------------------------------------------------------- public API


def _describe_inputs(sources: list[Source], hub: dict[Source, Any]) -> list[dict[str, Any]]:
    out = []
    for src in sources:
        if src.path is not None:
            out.append(
                {
                    "split": src.split,
                    "path": str(src.path.resolve()),
                    "format": src.format,
                    "bytes": src.path.stat().st_size,
                    "sha256": sha256_file(src.path),
                }
            )
        else:
            ds = hub[src]
            out.append(
                {
                    "split": src.split,
                    "hub": HUB_DATASET,
                    "hub_split": src.hub_split,
                    "rows": len(ds),
                    "fingerprint": hub_fingerprint(ds),
                }
            )
    return out


def _fingerprint(inputs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """What makes two prepared folders the same: input contents (not paths) and settings."""
    key = {
        "inputs": [
            [i["split"], i.get("sha256") or i.get("fingerprint"), i.get("hub")] for i in inputs
        ],
        "settings": settings,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _existing_meta(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _complete(out: Path, meta: dict[str, Any]) -> bool:
    try:
        for split in SPLITS:
            if (out / f"{split}.bin").stat().st_size != 2 * meta["splits"][split]["tokens"]:
                return False
        return (out / "tokenizer.json").is_file()
    except (OSError, KeyError, TypeError):
        return False


def _remove_stale_temps(out: Path) -> None:
    """Delete temp folders of earlier runs that were killed (their process is gone)."""
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(f".{out.name}.tmp-*"):
        try:
            pid = int(p.name.rsplit("-", 1)[1])
            os.kill(pid, 0)  # still running: leave it alone
        except (ValueError, ProcessLookupError):
            shutil.rmtree(p, ignore_errors=True)
        except PermissionError:
            pass


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def prepare(cfg: DataConfig, progress: bool = True, log: Any = print) -> Path:
    """Run the data stage for ``cfg`` and return the prepared folder.

    A finished folder made from the same input contents and settings is reused unless
    ``cfg.force``; a folder holding anything else is never overwritten without ``--force``.
    """
    t0 = time.perf_counter()
    sources = resolve_sources(cfg.data)
    hub = {s: load_hub_split(str(s.hub_split)) for s in sources if s.path is None}
    out = cfg.output_dir()
    inputs = _describe_inputs(sources, hub)
    settings = {k: getattr(cfg, k) for k in SETTINGS_KEYS}
    fingerprint = _fingerprint(inputs, settings)

    if out.exists():
        meta = _existing_meta(out)
        if meta is not None and not cfg.force:
            if meta.get("fingerprint") == fingerprint and _complete(out, meta):
                log(f"prepare: {out} is up to date (same inputs and settings); --force redoes it")
                return out
            raise UserError(
                f"{out} already holds data prepared from other inputs or settings: "
                "pass --force to replace it, or --out to write elsewhere"
            )
        if meta is None and not cfg.force and (not out.is_dir() or any(out.iterdir())):
            raise UserError(
                f"{out} exists and is not a prepared folder: pass --out with a new folder, "
                "or --force to replace it"
            )

    n_workers = cfg.workers or _cores()
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(out)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as e:
        raise UserError(
            f"cannot write to {out.parent} ({e.strerror}): pick another --out"
        ) from None
    has_valid = any(s.split == "valid" for s in sources)
    holdout = _Holdout(None if has_valid else cfg.valid_fraction)
    per_source = [{"read": 0, "short": 0} for _ in sources]
    ok = False
    workers = None
    try:
        warmup = WARMUP_CHARS if cfg.tokenizer == "word" else 0  # bpe: fork before any training
        workers = _Workers(
            n_workers, (cfg.tokenizer, bool(cfg.lowercase), cfg.min_chars), warmup_chars=warmup
        )
        with _progress(progress) as bar:
            run = _run_word if cfg.tokenizer == "word" else _run_bpe
            tok, writers = run(cfg, sources, hub, tmp, workers, holdout, bar, per_source)
        ok = True
        if tok.vocab_size > 65536:
            raise UserError(
                f"vocabulary of {tok.vocab_size} does not fit uint16: lower --vocab_size"
            )
        tok.save(tmp / "tokenizer.json")
        splits = {}
        for split, w in writers.items():
            words = w.tokens - 2 * w.stories  # tokens without <sot>/<eot>
            splits[split] = {
                **w.stats(),
                "unk": w.unk,  # type: ignore[attr-defined]
                "unk_rate": w.unk / words if words else 0.0,  # type: ignore[attr-defined]
            }
        for info, counts in zip(inputs, per_source, strict=True):
            info["stories_read"] = counts["read"]
            info["dropped_short"] = counts["short"]
        elapsed = time.perf_counter() - t0
        meta = {
            "format": 1,
            "fingerprint": fingerprint,
            "package": "gpt-study",
            "version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "tokenizer": tok.kind,
            "vocab_size": tok.vocab_size,
            "lowercase": tok.lowercase,
            "dtype": "uint16",
            "specials": {s: i for i, s in enumerate(SPECIALS)},
            "sources": inputs,
            "valid_from": (
                "valid files"
                if has_valid
                else f"every {holdout.every}th kept train story, the first included"
            ),
            "dropped_short": sum(c["short"] for c in per_source),
            "splits": splits,
            "settings": {k: v for k, v in vars(cfg).items()},
            "workers": n_workers,
            "elapsed_s": round(elapsed, 3),
        }
        write_json_atomic(tmp / "meta.json", meta)
        if out.exists():  # --force: swap the old folder out, then delete it
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            if out.is_dir():
                os.replace(out, old)
            else:
                out.unlink()
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except OSError as e:  # disk full, permissions: the sources' own errors are UserErrors
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(
            f"writing {out} failed ({e.strerror or e}): free disk space or pick another --out"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if workers is not None:
            workers.close(ok)
    tr, va = splits["train"], splits["valid"]
    log(
        f"prepare: {out}: {tok.kind} vocab {tok.vocab_size:,}; train {tr['stories']:,} stories "
        f"{tr['tokens']:,} tokens, valid {va['stories']:,} stories {va['tokens']:,} tokens; "
        f"<unk> {tr['unk_rate']:.3%} / {va['unk_rate']:.3%}; dropped {meta['dropped_short']:,} "
        f"short; {elapsed:.1f} s"
    )
    return out
