"""``--fit_epochs``: size the learning-rate schedule to the time budget, on whatever machine runs.

A preset's ``--epoch`` is sized for one machine. Under ``--max_time`` a slower one is stopped with
the cosine still high (the weights of a run cut mid-schedule score worse than those of a shorter
schedule that ends), and a faster one stops early with time unused. With ``--fit_epochs`` the run
times its first epoch (steps, validation and all) and sets ``--epoch`` to the whole epochs nearest
to what ``--max_time`` holds at that speed; after the second epoch it fits again from the second's
time, because the first also pays for starting up (threads, allocations, the thread tuner's first
trials, compiling) and a fit on it alone left up to a fifth of the budget unused. From the third
epoch on it checks the fit after every epoch against the mean of the last three (never the first),
and moves it only when it would overrun the budget by more than half an epoch or leave more than an
epoch unused: a machine whose speed drifts during a run (measured: a 15-minute run that trained
817 s, another cut short by ``--max_time``; docs/quality.md, "Round three") still ends its decay
at the budget, and a steady one keeps its schedule. Each move shifts the decay by a few percent of
its range.

Nearest, not fewer: a schedule of whole epochs that had to end inside the budget left 26-50 s of
the ``cpu`` preset's 15 minutes untrained (docs/quality.md, "Round fifteen"). One that ends at most
half an epoch past the budget is cut there by ``--max_time`` with its rate within
``(1 - cos(pi / 2E)) / 2`` of the way from ``--min_lr`` to the peak (cosine, E epochs: 0.1% for
23; linear: ``1 / 2E``; wsd, the steepest at its end: ``1 - sqrt(1 - 1 / 2cE)`` with ``--cooldown``
c, 5.6% for 23 at 0.2, 2.8% at the preset's 0.4): nearly the weights of the schedule's end, and no
time left over.
The fitted value is the run's config from then on: every checkpoint saves it, so a resumed run
follows the same schedule and is never refitted.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

from gpt_study.config import TrainConfig
from gpt_study.runtime import distributed

log = logging.getLogger("gpt_study.train")

FIT_AFTER = (1, 2)  # the epochs after which the schedule is fitted whatever it was
KEEP = (-0.5, 1.0)  # from then on, the overrun and the unused epochs a fit may keep
RECENT = 3  # and the epochs (never the first) whose mean time it fits to


def epochs_in_budget(
    budget_s: float, spent_s: float, done: int, epoch_s: float, current: int | None = None
) -> int:
    """The ``done`` epochs plus the epochs of ``epoch_s`` seconds that the rest of ``budget_s``
    holds after ``spent_s``, rounded to the nearest whole epoch; at least one. With ``current`` (a
    fit made before), ``current`` itself while the budget holds between ``current`` - 1/2 and
    ``current`` + 1 epochs (:data:`KEEP`)."""
    left = max(budget_s - spent_s, 0.0)
    holds = done + left / max(epoch_s, 1e-9)  # epochs, fractional
    if current is not None and KEEP[0] <= holds - current <= KEEP[1]:
        return current
    return max(1, math.floor(holds + 0.5))


@dataclass
class EpochFit:
    """Fits ``tc.budget.epoch`` to ``--max_time`` at the end of every epoch (see the module text).

    ``ended`` keeps when each epoch ended (seconds trained, the ranks' mean), in memory: only a
    run that started at step 0 in this invocation fits; a resumed one keeps what its checkpoint
    saved.
    """

    ended: dict[int, float] = field(default_factory=dict)

    def __call__(self, tc: TrainConfig, step: int, elapsed_s: float, spent_s: float) -> bool:
        """At an epoch's end: ``elapsed_s`` trained in all, ``spent_s`` of them in this
        invocation (what ``--max_time`` budgets); whether ``--epoch`` changed. Every rank must
        stop at the same step, so the ranks' times are averaged."""
        b = tc.budget
        done, rest = divmod(step, b.iters_per_epoch)
        if not (b.fit_epochs and b.max_time > 0 and rest == 0 and done >= 1):
            return False
        elapsed, spent = (
            t / distributed.world_size() for t in distributed.all_reduce_sum([elapsed_s, spent_s])
        )
        self.ended[done] = elapsed
        if any(e not in self.ended for e in range(1, done)):
            return False  # resumed: keep the fit the checkpoint saved
        first = done in FIT_AFTER
        since = done - 1 if first else max(1, done - RECENT)  # then the recent epochs' mean
        epoch_s = (elapsed - self.ended.get(since, 0.0)) / (done - since)
        fitted = epochs_in_budget(b.max_time_s, spent, done, epoch_s, None if first else b.epoch)
        if fitted == b.epoch and not first:
            return False
        log.info(
            "--fit_epochs: %s %.0f s, so --max_time %g holds %d epochs (%s steps; "
            "the schedule said %d)",
            f"epoch {done} took" if first else f"epochs {since + 1}-{done} took a mean",
            epoch_s,
            b.max_time,
            fitted,
            f"{fitted * b.iters_per_epoch:,}",
            b.epoch,
        )
        b.epoch = fitted
        return True
