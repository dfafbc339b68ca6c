"""Reading a prepared folder: memory-mapped uint16 token streams plus their metadata.

A prepared folder (written by ``gpt-study prepare``) holds::

    train.bin, valid.bin   every story as <sot> ... <eot>, concatenated, uint16 little-endian
    tokenizer.json         the vocabulary (gpt_study.data.tokenizer.load_tokenizer)
    meta.json              settings, sources and counts; meta["splits"][split] has
                           "stories", "tokens", "chars", "bytes", "unk" (count of <unk> tokens)
                           (typed and checked by gpt_study.data.folder.Meta)

Nothing is read into memory here: training draws rows straight from the memory map, so a corpus
larger than RAM still works.

Training rows (:class:`RowSampler`): each optimizer step draws ``batch_size x world_size x
grad_accum`` rows uniformly at random, with replacement. ``aligned`` (the study's, ``--study_rows``):
the stream cut into ``N = len // context_size`` rows of ``context_size`` tokens (the tail dropped),
inputs ``row[:-1]``, targets ``row[1:]``; otherwise windows of ``context_size + 1`` tokens at any
offset (more variety from the same text), ``context_size`` inputs; with ``story_starts`` = f,
round(f x rows) of each step's windows start at a ``<sot>`` instead (``--story_starts``), so the
model sees more stories from their first token, as generation starts them. The offsets of step
``s`` come from a generator seeded by ``(seed, s)`` alone, so the data position
is just the step number: a resumed run draws exactly the rows it would have drawn, and the rows do
not depend on how the global batch is split. Rank ``r`` takes its own slice of the step's rows, so
ranks never see the same rows.

Validation rows (:func:`eval_windows`): the split cut into consecutive windows that overlap by
one token, so every token after the first is predicted exactly once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpt_study.config.data import SOT_ID
from gpt_study.config.train import row_inputs
from gpt_study.data.folder import SPLITS, Meta, redo_hint
from gpt_study.runtime.errors import UserError


@dataclass
class PreparedData:
    folder: Path
    meta: dict[str, Any]  # meta.json as read
    info: Meta  # the same, typed and checked

    @property
    def tokenizer_path(self) -> Path:
        return self.folder / "tokenizer.json"

    def tokens(self, split: str) -> np.ndarray:
        """The whole token stream of ``split`` as a read-only uint16 memory map."""
        if split not in SPLITS:
            raise UserError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
        path = self.folder / f"{split}.bin"
        if path.stat().st_size == 0:  # an empty split cannot be memory-mapped
            return np.zeros(0, dtype=np.uint16)
        return np.memmap(path, dtype=np.uint16, mode="r")

    def split_meta(self, split: str) -> dict[str, Any]:
        return self.meta["splits"][split]


def open_prepared(folder: str | os.PathLike) -> PreparedData:
    """Open and sanity-check a prepared folder; a clear error says how to make one."""
    folder = Path(folder)
    hint = f"run `gpt-study prepare --data <your corpus> --out {folder}` first"
    if folder.is_file():
        raise UserError(
            f"{folder} is a file, not a prepared folder: run `gpt-study prepare --data {folder} "
            "--out <a new folder>` and pass that folder"
        )
    if not folder.is_dir():
        raise UserError(f"no prepared data folder at {folder}: {hint}")
    meta_path = folder / "meta.json"
    if not meta_path.exists():
        raise UserError(
            f"{folder} has no meta.json, so it is not a prepared folder: if it holds a corpus, "
            f"run `gpt-study prepare --data {folder} --out <a new folder>` and pass that"
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise UserError(f"{meta_path} is damaged (not JSON): {redo_hint(folder)}") from None
    for name in ("train.bin", "valid.bin", "tokenizer.json"):
        if not (folder / name).exists():
            raise UserError(f"{folder} lacks {name}: {redo_hint(folder)}")
    info = Meta.from_dict(meta, meta_path)
    for split in SPLITS:
        want = info.splits[split].tokens
        path = folder / f"{split}.bin"
        size = path.stat().st_size
        if size != 2 * want:  # uint16: two bytes a token
            have = f"{size // 2} tokens" + (" and a stray byte" if size % 2 else "")
            raise UserError(f"{path} holds {have}, meta.json says {want}: {redo_hint(folder)}")
    data = PreparedData(folder, meta, info)
    _check_ids(data)
    return data


def _check_ids(data: PreparedData) -> None:
    """Refuse a split holding an id beyond the vocabulary (a damaged or swapped file) now, not
    as an index error deep in training: one pass over each memory map, a fraction of a second
    even for the whole of TinyStories."""
    vocab = data.info.rest.get("vocab_size")
    if not isinstance(vocab, int) or isinstance(vocab, bool):
        return  # folders from before vocab_size was recorded: the tokenizer's check still holds
    for split in SPLITS:
        tokens = data.tokens(split)
        top = int(tokens.max()) if len(tokens) else -1
        if top >= vocab:
            raise UserError(
                f"{data.folder / f'{split}.bin'} holds token id {top}, beyond the vocabulary of "
                f"{vocab} in meta.json (a damaged or swapped file): {redo_hint(data.folder)}"
            )


def positions_of(token: int, tokens: np.ndarray, end: int, block: int = 1 << 24) -> np.ndarray:
    """Where ``token`` stands in ``tokens[:end]``, read ``block`` tokens at a time: a
    memory-mapped split larger than RAM is never compared whole."""
    found = [
        np.flatnonzero(tokens[i : min(i + block, end)] == token) + i for i in range(0, end, block)
    ]
    return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)


class RowSampler:
    """Random training windows from a token stream; deterministic in ``(seed, step)``."""

    def __init__(
        self,
        tokens: np.ndarray,
        context_size: int,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        grad_accum: int = 1,
        aligned: bool = False,
        story_starts: float = 0.0,
        sot_id: int = SOT_ID,
    ) -> None:
        if aligned and (context_size < 2 or len(tokens) < context_size):
            raise UserError(
                f"the training split holds {len(tokens)} tokens, fewer than one row of "
                f"--context_size {context_size}: prepare more text or lower --context_size"
            )
        if not aligned and len(tokens) < context_size + 2:
            raise UserError(
                f"the training split holds {len(tokens)} tokens, fewer than one row of "
                f"--context_size {context_size} + 1: prepare more text or lower --context_size"
            )
        self.tokens = tokens
        self.context_size = context_size
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.grad_accum = grad_accum
        self.aligned = aligned
        self.story_starts = story_starts
        # every <sot> that leaves a whole window after it: the starts --story_starts draws from
        self.starts = np.zeros(0, dtype=np.int64)
        if story_starts:
            self.starts = positions_of(sot_id, tokens, len(tokens) - context_size)
            if not len(self.starts):
                raise UserError(
                    f"--story_starts: the training split has no <sot> (id {sot_id}) a whole "
                    f"row before its end: prepare the folder again, or drop --story_starts"
                )

    @property
    def inputs(self) -> int:
        """Input tokens per row (the one rule: :func:`gpt_study.config.train.row_inputs`)."""
        return row_inputs(self.context_size, self.aligned)

    @property
    def global_rows(self) -> int:
        """Rows per optimizer step over all ranks and micro-steps: the global batch."""
        return self.batch_size * self.world_size * self.grad_accum

    def offsets(self, step: int) -> np.ndarray:
        """Start offsets of all ``global_rows`` windows of optimizer step ``step``."""
        rng = np.random.default_rng([self.seed, step])
        if self.aligned:  # row i of the N x context_size array starts at i * context_size
            n_rows = len(self.tokens) // self.context_size
            return rng.integers(0, n_rows, size=self.global_rows) * self.context_size
        high = len(self.tokens) - self.context_size  # last start that leaves context + 1 tokens
        starts = rng.integers(0, high, size=self.global_rows)
        if self.story_starts:  # drawn only then, so runs without it keep their rows
            k = round(self.story_starts * self.global_rows)
            rows = rng.choice(self.global_rows, size=k, replace=False)
            starts[rows] = self.starts[rng.integers(0, len(self.starts), size=k)]
        return starts

    def batch(self, step: int, micro: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Inputs and targets (batch_size, inputs) of this rank's micro-step ``micro``.

        Micro-step m of rank r takes slice ``m * world_size + r`` of the step's rows, so one
        process with ``grad_accum = k`` sees the same rows as k processes without accumulation.
        """
        part = micro * self.world_size + self.rank
        starts = self.offsets(step)[part * self.batch_size : (part + 1) * self.batch_size]
        idx = starts[:, None] + np.arange(self.inputs + 1)  # (B, T+1), T = self.inputs
        rows = self.tokens[idx].astype(np.int64)  # (B, T+1)
        return rows[:, :-1], rows[:, 1:]  # (B, T) each


def eval_windows(n_tokens: int, context_size: int, max_rows: int = 0) -> list[tuple[int, int]]:
    """(start, length) windows covering a split for validation; length counts input + target.

    Consecutive windows of ``context_size + 1`` tokens overlap by one, so every token but the
    first is a target exactly once; a shorter last window takes the remainder. With
    ``max_rows`` > 0 and fewer rows than the split holds, that many full windows evenly spread
    over the split are used instead (no remainder), so a capped validation still sees the whole
    split's variety.
    """
    full = (n_tokens - 1) // context_size
    windows = [(i * context_size, context_size + 1) for i in range(full)]
    rest = (n_tokens - 1) - full * context_size
    if max_rows and max_rows < full:
        keep = np.linspace(0, full - 1, max_rows).round().astype(int)
        return [windows[i] for i in sorted(set(keep.tolist()))]
    if rest > 0:
        windows.append((full * context_size, rest + 1))
    return windows


def iter_eval_batches(
    tokens: np.ndarray, windows: list[tuple[int, int]], batch_size: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Inputs and targets of ``windows`` in batches; windows of another length get their own."""
    i = 0
    while i < len(windows):
        length = windows[i][1]
        group = []
        while i < len(windows) and len(group) < batch_size and windows[i][1] == length:
            group.append(windows[i][0])
            i += 1
        idx = np.asarray(group)[:, None] + np.arange(length)  # (B, T+1)
        rows = tokens[idx].astype(np.int64)
        yield rows[:, :-1], rows[:, 1:]
