"""``--fit_epochs``: size the learning-rate schedule to the time budget, on whatever machine runs.

A preset's ``--epoch`` is sized for one machine. Under ``--max_time`` a slower one is stopped with
the cosine still high (the weights of a run cut mid-schedule score worse than those of a shorter
schedule that ends), and a faster one stops early with time unused. With ``--fit_epochs`` the
run times its first epoch (steps, validation and all) and sets ``--epoch`` to as many epochs as
``--max_time`` holds at that speed; after the second epoch it fits again from the second's time,
because the first also pays for starting up (threads, allocations, the thread tuner's first
trials) and a fit on it alone left up to a fifth of the budget unused (docs/quality.md, "Round
three"). The cosine then moves by about one percent. The fitted value is the run's config from
then on: every checkpoint saves it, so a resumed run follows the same schedule.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from gpt_study.config import TrainConfig
from gpt_study.runtime import distributed

log = logging.getLogger("gpt_study.train")

FIT_AFTER = (1, 2)  # the epochs after which the schedule is fitted


def epochs_in_budget(budget_s: float, spent_s: float, done: int, epoch_s: float) -> int:
    """The ``done`` epochs plus the whole epochs of ``epoch_s`` seconds that the rest of
    ``budget_s`` holds after ``spent_s``; at least one."""
    left = max(budget_s - spent_s, 0.0)
    return max(1, done + int(left // max(epoch_s, 1e-9)))


@dataclass
class EpochFit:
    """Fits ``tc.budget.epoch`` to ``--max_time`` at the end of the epochs in :data:`FIT_AFTER`.

    ``ended`` keeps when each epoch ended (seconds trained, the ranks' mean), in memory: a run
    resumed between the first and second epochs keeps the first fit, which its checkpoint saved.
    """

    ended: dict[int, float] = field(default_factory=dict)

    def __call__(self, tc: TrainConfig, step: int, elapsed_s: float, spent_s: float) -> bool:
        """At an epoch's end: ``elapsed_s`` trained in all, ``spent_s`` of them in this
        invocation (what ``--max_time`` budgets); whether ``--epoch`` was fitted. Every rank must
        stop at the same step, so the ranks' times are averaged."""
        b = tc.budget
        done, rest = divmod(step, b.iters_per_epoch)
        if not (b.fit_epochs and b.max_time > 0 and rest == 0 and done in FIT_AFTER):
            return False
        elapsed, spent = (
            t / distributed.world_size() for t in distributed.all_reduce_sum([elapsed_s, spent_s])
        )
        self.ended[done] = elapsed
        if done > 1 and done - 1 not in self.ended:
            return False  # resumed after the previous fit: keep it
        epoch_s = elapsed - self.ended.get(done - 1, 0.0)
        fitted = epochs_in_budget(b.max_time_s, spent, done, epoch_s)
        log.info(
            "--fit_epochs: epoch %d took %.0f s, so --max_time %g holds %d epochs (%s steps; "
            "the schedule said %d)",
            done,
            epoch_s,
            b.max_time,
            fitted,
            f"{fitted * b.iters_per_epoch:,}",
            b.epoch,
        )
        b.epoch = fitted
        return True
