"""Weight averaging for what a run evaluates: ``--ema DECAY`` (0: off, the study).

An exponential moving average of the weights over the optimizer's steps (Polyak and Juditsky
1992) averages out the noise of the last steps, so it often scores better than the weights it
follows. With ``--ema`` the average is what validation scores, what the sample story and
``best/`` use, and so what ``evaluate``, ``generate``, ``serve`` and the exports read from
``best/``: they all load a checkpoint's weights and never know the weights were averaged.
``last/`` keeps the live weights that training goes on from, with the average saved beside the
optimizer's state so that a resumed run continues exactly.

The decay warms up as ``min(DECAY, (1 + n) / (10 + n))`` after ``n`` updates, so that the first
steps' average is not held back by the random initial weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from gpt_study.runtime.errors import UserError


class WeightAverage:
    """The moving average of a model's parameters (its own copies, in the parameters' dtype)."""

    def __init__(self, net: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.params = [p for p in net.parameters() if p.requires_grad]  # tied weights: once
        self.average = [p.detach().clone() for p in self.params]
        self.updates = 0

    def update(self) -> None:
        """Move the average toward the live weights after an optimizer step."""
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        live = [p.detach() for p in self.params]
        torch._foreach_lerp_(self.average, live, 1.0 - decay)

    @contextlib.contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the model's parameters for the block's duration; the live weights
        are put back afterwards, bit for bit."""
        live = [p.detach() for p in self.params]
        kept = [t.clone() for t in live]
        torch._foreach_copy_(live, self.average)
        try:
            yield
        finally:
            torch._foreach_copy_(live, kept)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "average": self.average}

    def load_state_dict(self, saved: dict[str, Any], where: str) -> None:
        average = saved.get("average")
        shapes = [tuple(p.shape) for p in self.params]
        if not isinstance(average, list) or [tuple(t.shape) for t in average] != shapes:
            raise UserError(
                f"{where} holds no weight average that fits this model: resume the run with "
                "the --ema it was started with, or start a new run"
            )
        torch._foreach_copy_(self.average, average)
        self.updates = int(saved.get("updates", 0))


def weight_average(net: torch.nn.Module, decay: float) -> WeightAverage | None:
    """A :class:`WeightAverage` of ``net`` for ``--ema decay``; None when it is 0 (off)."""
    return WeightAverage(net, decay) if decay > 0 else None


@contextlib.contextmanager
def evaluated_weights(average: WeightAverage | None) -> Iterator[None]:
    """The weights a run evaluates and keeps as ``best/``: the average under ``--ema``, else
    the live ones."""
    with average.swapped_in() if average is not None else contextlib.nullcontext():
        yield
