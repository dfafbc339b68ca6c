"""``--fit_epochs``: size the learning-rate schedule to the time budget, on whatever machine runs.

A preset's ``--epoch`` is sized for one machine. Under ``--max_time`` a slower one is stopped with
the cosine still high (the weights of a run cut mid-schedule score worse than those of a shorter
schedule that ends), and a faster one stops early with time unused. With ``--fit_epochs`` the
run times its first epoch (steps, validation and all) and sets ``--epoch`` to as many epochs as
``--max_time`` holds at that speed. The fitted value is the run's config from then on: every
checkpoint saves it, so a resumed run follows the same schedule.
"""

from __future__ import annotations

import logging

from gpt_study.config import TrainConfig
from gpt_study.runtime import distributed

log = logging.getLogger("gpt_study.train")


def epochs_in_budget(budget_s: float, first_epoch_s: float) -> int:
    """Whole epochs of ``first_epoch_s`` seconds that fit ``budget_s``, the first included."""
    return max(1, int(budget_s // max(first_epoch_s, 1e-9)))


def fit_epochs(tc: TrainConfig, step: int, elapsed_s: float) -> bool:
    """At the end of the first epoch, set ``tc.budget.epoch`` to what ``--max_time`` holds;
    whether it did. Every rank must stop at the same step, so the ranks' times are averaged."""
    b = tc.budget
    if not (b.fit_epochs and b.max_time > 0 and step == b.iters_per_epoch):
        return False
    (total,) = distributed.all_reduce_sum([elapsed_s])
    first = total / distributed.world_size()
    fitted = epochs_in_budget(b.max_time * 60, first)
    log.info(
        "--fit_epochs: the first epoch took %.0f s, so --max_time %g holds %d epochs "
        "(%s steps; the schedule said %d)",
        first,
        b.max_time,
        fitted,
        f"{fitted * b.iters_per_epoch:,}",
        b.epoch,
    )
    b.epoch = fitted
    return True
