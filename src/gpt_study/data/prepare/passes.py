"""The tokenization passes of ``prepare``: one streaming pass over every source, for ``word``
(:func:`run_word`), ``bpe`` (:func:`run_bpe`), ``byte`` (:func:`run_byte`) or a checkpoint's own
tokenizer (``--tokenizer_from``: :func:`run_given`), each returning the tokenizer and the written
splits.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from gpt_study.config import SPECIALS, UNK_ID, DataConfig
from gpt_study.data.folder import SPLITS
from gpt_study.data.prepare.ids import Holdout, Ids, SplitWriter
from gpt_study.data.prepare.workers import Workers, batches
from gpt_study.data.sources import Source, iter_stories
from gpt_study.data.tokenizer import (
    BPETokenizer,
    ByteTokenizer,
    Tokenizer,
    WordTokenizer,
    load_tokenizer,
    train_bpe,
)
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.progress import progress_bar

BLOCK = 1 << 24  # tokens per block when rewriting provisional ids


def stories_bar(enabled: bool | None) -> Any:
    return progress_bar(enabled, unit=" stories", desc="prepare", smoothing=0.1)


def _tagged_batches(
    sources: list[Source], hub: dict[Source, Any]
) -> Iterator[tuple[tuple[str, int], list[str]]]:
    """(source split, source index) and a batch of raw stories; train sources first."""
    order = sorted(range(len(sources)), key=lambda i: sources[i].split != "train")
    for i in order:
        src = sources[i]
        for batch in batches(iter_stories(src, hub.get(src))):
            yield (src.split, i), batch


@dataclasses.dataclass
class Pass:
    """What every pass reads and fills: the settings, the sources and their workers, the held-out
    split, the progress bar, and the per-source counts the report gives and errors name."""

    cfg: DataConfig
    sources: list[Source]
    hub: dict[Source, Any]
    tmp: Path
    workers: Workers
    holdout: Holdout
    bar: Any
    per_source: list[dict[str, int]]

    def results(
        self, extra: Callable[[], tuple[Any, ...]] = tuple
    ) -> Iterator[tuple[str, np.ndarray | None, dict[str, Any]]]:
        """Each batch's worker result with its source split and held-out mask (None outside the
        train sources), counted per source; ``extra()``: what a worker needs beside the batch,
        asked as each task is sent (BPE's tokenizer exists only once it is trained)."""
        tasks = ((tag, (batch, *extra())) for tag, batch in _tagged_batches(self.sources, self.hub))
        for (split, i), res in self.workers.map(tasks):
            self.per_source[i]["read"] += res["read"]
            self.per_source[i]["short"] += res["short"]
            mask = self.holdout.valid_mask(len(res["chars"])) if split == "train" else None
            yield split, mask, res

    def progress(self, read: int, writers: dict[str, SplitWriter]) -> None:
        self.bar.update(read)
        self.bar.set_postfix_str(f"{writers['train'].tokens + writers['valid'].tokens:,} tokens")

    def finish(self, writers: dict[str, SplitWriter]) -> None:
        """Close the splits and refuse an empty one (:func:`_check_nonempty`)."""
        for w in writers.values():
            w.close()
        _check_nonempty(self.cfg, writers, self.holdout, self.sources, self.per_source)


def run_word(p: Pass) -> tuple[Tokenizer, dict[str, SplitWriter]]:
    cfg, tmp = p.cfg, p.tmp
    ids = Ids(p.workers)
    writers = {s: SplitWriter(tmp / f"{s}.ids32", np.uint32) for s in SPLITS}
    for split, mask, res in p.results():
        gids = ids.to_global(res["key"], res["new"], res["ids"])
        for part, part_ids, part_chars, part_bytes in _route(
            split, mask, gids, res["lengths"], res["chars"], res["bytes"]
        ):
            if part == "train":
                ids.count(part_ids)  # the vocabulary comes from the train split only
            writers[part].write(part_ids, part_chars, part_bytes)
        p.progress(res["read"], writers)
    p.finish(writers)

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
        final = SplitWriter(tmp / f"{split}.bin", np.uint16)
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


def run_bpe(p: Pass) -> tuple[Tokenizer, dict[str, SplitWriter]]:
    cfg, tmp = p.cfg, p.tmp
    writers = _direct_writers(tmp)
    tok: BPETokenizer | None = None
    trained: list[str | None] = [None]  # the saved BPE, once trained: later tasks encode too
    buffered: list[tuple[str, list[str], np.ndarray, np.ndarray]] = []  # until it is trained
    buffered_chars = 0

    def emit(split: str, texts: list[str], chars: np.ndarray, nbytes: np.ndarray) -> None:
        assert tok is not None
        _write(writers, split, tok.encode_stories(texts)[0], chars, nbytes)

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

    for split, mask, res in p.results(lambda: (trained[0],)):
        chars, nbytes = res["chars"], res["bytes"]
        if "ids" in res:  # encoded by the worker
            _write_encoded(writers, split, mask, res)
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
        p.progress(res["read"], writers)
    if tok is None:
        train_now()
    p.finish(writers)
    assert tok is not None
    return tok, writers


def run_byte(p: Pass) -> tuple[Tokenizer, dict[str, SplitWriter]]:
    """:func:`run_bpe` without the training: the bytes are the vocabulary, so the workers encode
    every batch from the first and the main process only routes and writes."""
    return ByteTokenizer(lowercase=bool(p.cfg.lowercase)), _direct_pass(p)


def _direct_pass(
    p: Pass,
    extra: tuple[str, ...] = (),
    unk_id: int | None = UNK_ID,
    marker: int | None = None,
) -> dict[str, SplitWriter]:
    """The pass of a tokenizer known before the first story (``byte``, ``--tokenizer_from``):
    the workers encode each batch (``extra``: what they need beside it), the main process routes
    and writes the final ``.bin`` files; ``unk_id`` is the tokenizer's ``<unk>``, ``marker`` its
    shared one (:attr:`~gpt_study.data.tokenizer.Tokenizer.shared_marker`)."""
    writers = _direct_writers(p.tmp, marker)
    for split, mask, res in p.results(lambda: extra):
        _write_encoded(writers, split, mask, res, unk_id)
        p.progress(res["read"], writers)
    p.finish(writers)
    return writers


def given_tokenizer(cfg: DataConfig) -> tuple[DataConfig, Tokenizer]:
    """``cfg`` with the kind, size and lowercasing of ``--tokenizer_from``'s tokenizer, and that
    tokenizer: read from a checkpoint (or prepared) folder, nothing learned. A ``--vocab_size`` or
    ``--lowercase`` that says otherwise is refused in one line."""
    where = Path(str(cfg.tokenizer_from))
    if not (where / "tokenizer.json").is_file():
        raise UserError(
            f"--tokenizer_from {where} holds no tokenizer.json: pass a checkpoint folder (such as "
            "runs/x/best, or one gpt-study import wrote) or a prepared folder"
        )
    tok = load_tokenizer(where / "tokenizer.json")
    for name, have in (("vocab_size", tok.vocab_size), ("lowercase", tok.lowercase)):
        asked = getattr(cfg, name)
        if asked is not None and asked != have:
            raise UserError(
                f"--{name} {asked}, but the tokenizer of {where} has {have}: drop --{name} "
                "(--tokenizer_from sets it)"
            )
    kind = {"tokenizer": tok.kind, "vocab_size": tok.vocab_size, "lowercase": tok.lowercase}
    return dataclasses.replace(cfg, **kind), tok


def run_given(p: Pass) -> tuple[Tokenizer, dict[str, SplitWriter]]:
    """:func:`run_byte` with ``--tokenizer_from``'s tokenizer: saved into the folder first, the
    workers encode every batch with it; ``<unk>`` counted where that tokenizer puts it."""
    tok = given_tokenizer(p.cfg)[1]
    tok.save(p.tmp / "tokenizer.json")
    extra = (str(p.tmp / "tokenizer.json"),)
    return tok, _direct_pass(p, extra, unk_id=tok.unk_id, marker=tok.shared_marker)


def _direct_writers(tmp: Path, marker: int | None = None) -> dict[str, SplitWriter]:
    """The final ``.bin`` files, written as ids arrive (no vocabulary to rank afterwards)."""
    writers = {s: SplitWriter(tmp / f"{s}.bin", np.uint16, marker) for s in SPLITS}
    for w in writers.values():
        w.unk = 0  # type: ignore[attr-defined]
    return writers


def _write(
    writers: dict[str, SplitWriter],
    split: str,
    ids: np.ndarray,
    chars: np.ndarray,
    nbytes: np.ndarray,
    unk_id: int | None = UNK_ID,
) -> None:
    unk = 0 if unk_id is None else int(np.count_nonzero(ids == unk_id))
    writers[split].unk += unk  # type: ignore[attr-defined]
    writers[split].write(ids, chars, nbytes)


def _write_encoded(
    writers: dict[str, SplitWriter],
    split: str,
    mask: np.ndarray | None,
    res: dict[str, Any],
    unk_id: int | None = UNK_ID,
) -> None:
    """Write a batch a worker encoded, its held-out stories (``mask``) to valid; ``unk_id``: the
    tokenizer's ``<unk>`` (None: it has none)."""
    for part in _route(split, mask, res["ids"], res["lengths"], res["chars"], res["bytes"]):
        _write(writers, *part, unk_id)


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


def _check_nonempty(
    cfg: DataConfig,
    writers: dict[str, SplitWriter],
    holdout: Holdout,
    sources: list[Source],
    per_source: list[dict[str, int]],
) -> None:
    """Refuse a split with no story, naming the real cause: nothing read (no story separators?),
    every story under --min_chars, or too few stories for the held-out valid split."""
    for split in SPLITS:
        if writers[split].stories:
            continue
        from_train = split == "train" or holdout.every
        mine = [
            c
            for s, c in zip(sources, per_source, strict=True)
            if (s.split == "train") == bool(from_train)
        ]
        read = sum(c["read"] for c in mine)
        kept = read - sum(c["short"] for c in mine)
        where = "the train files" if from_train else "the valid files"
        if read == 0:
            why = (
                f"{where} hold no story: a .txt needs its stories separated by <|endoftext|> "
                'lines, a .jsonl/.json a "text" field per story'
            )
        elif kept == 0:
            why = (
                f"all {_stories(read)} in {where} are shorter than --min_chars {cfg.min_chars} "
                "characters: lower --min_chars"
            )
        else:
            why = (
                f"{where} hold {_stories(kept)} long enough, and the valid split takes every "
                f"{holdout.every}th (the first included), leaving none to train on: pass more "
                "stories (a .txt separates them by <|endoftext|> lines) or a valid file"
            )
        raise UserError(f"no {split} story: {why}")


def _stories(n: int) -> str:
    return f"{n:,} {'story' if n == 1 else 'stories'}"
