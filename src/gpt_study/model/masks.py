"""Dropout masks for the CPU kernels: which positions a dropout keeps, as integer bit masks.

A mask reads one uniform 16-bit number per position and drops the position when the number is
below ``p * 65536`` (so ``p`` is rounded to a multiple of 1/65536: 0.1 becomes 0.100006). On a
CPU the numbers come from a *stream*: parts of ``_PART_WORDS`` 64-bit words, part ``i`` drawn
by a numpy SFC64 generator seeded with ``(seed, i)``, where ``seed`` is one word of PyTorch's
own generator. So a seed, ``get_rng_state`` and a checkpoint's RNG state fix every mask, and
the bits do not depend on how many threads draw the parts or which masks were made ahead.

Each mask outside :func:`mask_stream` is its own stream. Inside it, the masks of the block lie
one after the other in one stream, and the block's first mask makes every mask the last block
asked for: a training step's masks then cost one parallel batch of thread work instead of one
small batch per dropout (docs/train.md, "Measurements").
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

__all__ = ["apply_keep", "keep_mask", "keep_scale", "mask_stream", "random_words"]

# A part of a stream: this many words (2 MiB), four 16-bit numbers each.
_PART_WORDS = 1 << 18
_PART_HALVES = 4 * _PART_WORDS
_INT_OF_WIDTH = {2: torch.int16, 4: torch.int32, 8: torch.int64}
_pool: tuple[tuple[int, int], ThreadPoolExecutor] | None = None


def _threshold(p: float) -> int:
    """A position is dropped when its number is below this: P = round(p * 65536) / 65536."""
    return round(p * 65536) - 32768


def keep_scale(p: float) -> float:
    """What a kept position is multiplied by: 1 / (1 - p), torch's dropout's factor, for every
    kernel here. (The mask drops with ``p`` rounded to 1/65536, a bias under 1e-5 of the mean.)"""
    return 1.0 / (1.0 - p)


def _draw_seed() -> int:
    """A stream's seed: one word of PyTorch's CPU generator, in [0, 2**63)."""
    return int(torch.empty((), dtype=torch.int64).random_())


def _part(seed: int, i: int, end: int) -> np.ndarray:
    """The numbers of part ``i`` of the stream ``seed`` up to stream position ``end``: a prefix
    of the part's ``_PART_HALVES`` uniform int16 numbers (its generator draws in order, so a
    prefix is the same whatever comes after it)."""
    words = -(-(min(end, (i + 1) * _PART_HALVES) - i * _PART_HALVES) // 4)
    return np.random.SFC64((seed, i)).random_raw(words).view(np.int16)


def _each_part(seed: int, start: int, end: int, use: Callable[[int, np.ndarray], None]) -> None:
    """``use(i, part)`` for each part ``i`` of the stream ``seed`` that holds numbers ``start ..
    end - 1``, in ``torch.get_num_threads()`` threads.

    numpy draws a word in about half the time of ``Tensor.random_`` and releases the GIL, so
    the parts are drawn at once; ``use`` writes each part where it belongs while the part is
    still in cache. The pool belongs to one process: a forked child makes its own.
    """
    global _pool
    parts = range(start // _PART_HALVES, -(-end // _PART_HALVES))
    workers = min(torch.get_num_threads(), len(parts))
    if workers <= 1:
        for i in parts:
            use(i, _part(seed, i, end))
        return
    key = (os.getpid(), torch.get_num_threads())
    if _pool is None or _pool[0] != key:
        _pool = (key, ThreadPoolExecutor(key[1], thread_name_prefix="gpt-study-dropout"))
    for done in [_pool[1].submit(lambda i: use(i, _part(seed, i, end)), i) for i in parts]:
        done.result()


# What a mask is asked for: (shape, p, dtype); its keep tensor has the integer type of the width.
_Ask = tuple[tuple[int, ...], float, torch.dtype]


def _make_masks(seed: int, start: int, asks: list[_Ask]) -> list[torch.Tensor]:
    """The masks ``asks``, laid one after the other in the stream ``seed`` from number ``start``.

    A position is dropped when its number is below ``p * 65536``: P = round(p * 65536) / 65536.
    Each part is compared into every mask it overlaps, in the thread that drew it.
    """
    keeps, spans, at = [], [], start
    for shape, p, dtype in asks:
        n = math.prod(shape)
        keeps.append(torch.empty(shape, dtype=_INT_OF_WIDTH[dtype.itemsize]))
        spans.append((at, at + n, _threshold(p), keeps[-1].numpy().reshape(-1)))
        at += n

    def use(i: int, part: np.ndarray) -> None:
        lo, hi = i * _PART_HALVES, (i + 1) * _PART_HALVES
        for first, end, threshold, out in spans:
            a, b = max(lo, first), min(hi, end)
            if a < b:
                dst = out[a - first : b - first]
                np.greater_equal(part[a - lo : b - lo], threshold, out=dst, casting="unsafe")
                np.negative(dst, out=dst)  # 1 -> -1: all bits set where kept

    _each_part(seed, start, at, use)
    return keeps


class _Stream:
    """The masks of one stream, asked for in order.

    The seed is drawn from PyTorch's generator at the first mask, so a block that asks for none
    takes nothing from the generator. ``plan`` is what the last block asked for: when the first
    ask matches it, all of the plan's masks are made at once, and each later ask that matches
    the plan in order takes its mask ready-made; an ask that does not gets its own draw (the
    same bits: they depend on the position in the stream only) and ends the plan.
    """

    def __init__(self, plan: list[_Ask] | None = None):
        self.seed: int | None = None
        self.cursor = 0  # numbers the asks so far have read
        self.plan = plan or []
        self.asked: list[_Ask] = []
        self.ready: dict[int, torch.Tensor] = {}

    def mask(self, ask: _Ask) -> torch.Tensor:
        if self.seed is None:
            self.seed = _draw_seed()
        k = len(self.asked)
        self.asked.append(ask)
        if k == 0 and self.plan[:1] == [ask]:
            self.ready = dict(enumerate(_make_masks(self.seed, 0, self.plan)))
        keep = self.ready.pop(k, None) if k < len(self.plan) and self.plan[k] == ask else None
        if keep is None:
            self.ready.clear()
            keep = _make_masks(self.seed, self.cursor, [ask])[0]
        self.cursor += keep.numel()
        return keep


_active: _Stream | None = None
_plan: list[_Ask] = []  # what the last mask_stream block asked for


@contextlib.contextmanager
def mask_stream() -> Iterator[None]:
    """Every CPU mask asked for in the block reads on from one stream, made in one batch.

    What a training step's forward runs in (the loop, and the benchmarks that time its step):
    its first mask makes every mask the last block asked for, in parallel, so a step's several
    dozen masks cost one batch of thread work instead of one small batch each. The bits depend
    on PyTorch's generator at the block's first mask and on the order of the asks, not on what
    was made ahead. Nested blocks read on from the outer one. One thread per process trains.
    """
    global _active, _plan
    if _active is not None:
        yield
        return
    _active = _Stream(_plan)
    try:
        yield
    finally:
        if _active.asked:
            _plan = _active.asked
        _active = None


def keep_mask(
    shape: tuple[int, ...], p: float, dtype: torch.dtype, device: torch.device | str = "cpu"
) -> torch.Tensor:
    """Which positions of a ``dtype`` tensor of ``shape`` dropout keeps, as an integer bit mask.

    The mask has the integer type of ``dtype``'s width: all bits set (-1) where a position is
    kept, 0 where it is dropped, with probability ``p`` rounded to a multiple of 1/65536. A
    bitwise AND of the tensor's bits with it (:func:`apply_keep`) zeroes the dropped positions
    in place, which is several times cheaper on a CPU than ``masked_fill`` or a multiply.

    On a CPU the numbers come from the active :func:`mask_stream`, else from a stream of their
    own; elsewhere from :func:`random_words` on the device.
    """
    if dtype.itemsize not in _INT_OF_WIDTH:
        raise TypeError(f"no integer type as wide as {dtype}")
    device = torch.device(device)
    if device.type == "cpu":
        return (_active or _Stream()).mask((tuple(shape), p, dtype))
    n = math.prod(shape)
    halves = random_words((n + 3) // 4, device).view(torch.int16)[:n]  # (4 ceil(n/4),) -> (n,)
    keep = torch.empty(n, dtype=_INT_OF_WIDTH[dtype.itemsize], device=device)
    torch.ge(halves, _threshold(p), out=keep)
    return keep.neg_().view(shape)  # 1 -> -1: all bits set where kept; (n,) -> shape


def random_words(count: int, device: torch.device) -> torch.Tensor:
    """``count`` int64 words, every bit uniform, drawn from PyTorch's default generator of
    ``device``: so a seed, ``get_rng_state`` and a checkpoint's RNG state fix them.

    On a CPU they are the first ``4 * count`` numbers of a new stream (see the module text):
    one word of the generator, whatever ``count``.
    """
    if device.type != "cpu":
        words = torch.empty(count, dtype=torch.int64, device=device)
        return words.random_(-(2**63), None)  # every bit uniform: the full 64-bit range
    out = np.empty(4 * count, np.int16)
    seed = _draw_seed()

    def use(i: int, part: np.ndarray) -> None:
        lo = i * _PART_HALVES
        out[lo : lo + part.size] = part

    _each_part(seed, 0, out.size, use)
    return torch.from_numpy(out.view(np.int64))


def apply_keep(x: torch.Tensor, keep: torch.Tensor, copy: bool = False) -> torch.Tensor:
    """Zero the positions of ``x`` that ``keep`` (from :func:`keep_mask`) drops: in place, or
    with ``copy`` in a new tensor (one pass, where a clone then the in-place AND would be two)."""
    if copy:
        return torch.bitwise_and(x.view(keep.dtype), keep).view(x.dtype)
    x.view(keep.dtype).bitwise_and_(keep)
    return x
