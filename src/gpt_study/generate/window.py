"""The window schedule that every decoder of this package follows.

The model learned positions ``0 .. context_size - 1`` only, and learned absolute positions mean a
full cache cannot drop its oldest entry. So when the window is full, generation slides: it keeps
the most recent ``keep`` tokens (:data:`SLIDE_KEEP` of the window by default), re-encodes them
from position 0 and carries on (see the package docstring). The general loop, the batch-1 fast
loop and the uncached oracle read the window, the kept share and the schedule from here, so
their tokens can be compared one for one.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from gpt_study.runtime.errors import UserError

__all__ = [
    "SLIDE_KEEP",
    "crop_prompt",
    "keep_size",
    "resolve_window",
    "rotary",
    "segment_start",
    "segment_starts",
    "window_size",
]

SLIDE_KEEP = 0.75
"""Share of the window kept (and re-encoded) when generation slides past its end."""


def rotary(model: torch.nn.Module) -> bool:
    """Whether ``model``'s positions are rotary: its cache then slides by dropping the oldest
    positions (a rotary key depends only on its distance to the query) instead of re-encoding."""
    return getattr(model.config, "positions", "learned") == "rope"


def resolve_window(model: torch.nn.Module, window: int | None) -> tuple[int, str | None]:
    """The window a model reads, checked, and a note for the user if it is unusual.

    Default: the window the weights were trained on (``model.trained_window``, which loading a
    checkpoint and training set), else, for a model that was never trained, its ``max_len``.
    Learned positions have no trained row past that window, so a longer one is refused; rotary
    positions extrapolate, so a longer one is allowed with a note. The one rule for every
    command and library call that reads a model.
    """
    cfg = model.config
    trained = getattr(model, "trained_window", None)
    w = (trained or cfg.max_len) if window is None else window
    if w < 1:
        raise UserError(f"--window {w} is out of range: use a window of at least 1 token")
    if not rotary(model):
        limit = min(trained or cfg.max_len, cfg.max_len)
        if w > limit:
            what = "was trained on" if trained else "has (max_len)"
            raise UserError(
                f"--window {w} is longer than the {limit} positions this model {what}: "
                f"learned positions past them hold nothing trained; use --window {limit} or less"
            )
        return w, None
    if trained and w > trained:
        return w, (
            f"window {w} is longer than the {trained} positions the model was trained on: rotary "
            "positions go on past them, but expect weaker text there"
        )
    return w, None


def window_size(model: torch.nn.Module, window: int | None) -> int:
    """:func:`resolve_window` without the note: what the decoding loops use."""
    return resolve_window(model, window)[0]


def keep_size(window: int, keep: int | None) -> int:
    """Tokens kept at a slide (default: :data:`SLIDE_KEEP` of the window), checked."""
    k = max(1, int(window * SLIDE_KEEP)) if keep is None else keep
    if not 1 <= k <= window:
        raise UserError(f"keep {k} must be in 1..{window} (the window)")
    return k


def crop_prompt(ids: Sequence[int], window: int) -> list[int]:
    """A prompt as every decoder starts from it: its most recent ``window`` tokens."""
    return list(ids)[-window:]


def segment_starts(n: int, window: int, keep: int) -> list[int]:
    """:func:`segment_start` after each of ``1 .. n`` fed tokens, in one pass."""
    starts, s = [], 0
    for m in range(1, n + 1):
        if m - s > window:
            s = m - keep
        starts.append(s)
    return starts


def segment_start(n: int, window: int, keep: int) -> int:
    """Absolute index of the first token the cached loop attends to after ``n`` tokens were fed
    (the prompt, cut by :func:`crop_prompt`, and the new tokens).

    This is the sliding schedule of :func:`generate_ids`, written out so that the uncached
    reference and a transformers model's stories follow it exactly: the window fills up (the
    next token is chosen from ``window`` tokens), then the most recent ``keep`` are kept.
    """
    return segment_starts(n, window, keep)[-1] if n else 0
