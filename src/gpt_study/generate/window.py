"""The window schedule that every decoder of this package follows.

The model learned positions ``0 .. context_size - 1`` only, and learned absolute positions mean a
full cache cannot drop its oldest entry. So when the window is full, generation slides: it keeps
the most recent ``keep`` tokens (:data:`SLIDE_KEEP` of the window by default), re-encodes them
from position 0 and carries on (see the package docstring). The general loop, the batch-1 fast
loop and the uncached oracle read the window, the kept share and the schedule from here, so
their tokens can be compared one for one.
"""

from __future__ import annotations

import torch

from gpt_study.errors import UserError

__all__ = ["SLIDE_KEEP", "keep_size", "rotary", "segment_start", "window_size"]

SLIDE_KEEP = 0.75
"""Share of the window kept (and re-encoded) when generation slides past its end."""


def window_size(model: torch.nn.Module, context_size: int | None) -> int:
    """``context_size`` (default: the model's max_len), checked against the position table."""
    max_len = model.config.max_len
    w = max_len if context_size is None else context_size
    if not 1 <= w <= max_len:
        raise UserError(f"context_size {w} must be in 1..{max_len} (the model's max_len)")
    return w


def keep_size(window: int, keep: int | None) -> int:
    """Tokens kept at a slide (default: :data:`SLIDE_KEEP` of the window), checked."""
    k = max(1, int(window * SLIDE_KEEP)) if keep is None else keep
    if not 1 <= k <= window:
        raise UserError(f"keep {k} must be in 1..{window} (the window)")
    return k


def segment_start(n: int, window: int, keep: int) -> int:
    """Absolute index of the first token the cached loop attends to after ``n`` tokens were fed.

    This is the sliding schedule of :func:`generate_ids`, written out so that the uncached
    reference can follow it exactly.
    """
    s = 0
    for m in range(1, n + 1):
        if m - s > window:
            s = m - keep
    return s


def rotary(model: torch.nn.Module) -> bool:
    """Whether ``model``'s positions are rotary: its cache then slides by dropping the oldest
    positions (a rotary key depends only on its distance to the query) instead of re-encoding."""
    return getattr(model.config, "positions", "learned") == "rope"
