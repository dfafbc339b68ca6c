"""What a run shows and records: console and ``info.log``, metrics files, the plot, wandb.

Only rank 0 observes; the other ranks report warnings and errors on the console. The loop hands
each record to :class:`Observer`, which fans it out; a plot that fails to draw is a warning, never
a lost run.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gpt_study.config import Config, TrainConfig, config_to_dict
from gpt_study.runs import INFO_LOG, PLOT
from gpt_study.runtime import distributed
from gpt_study.runtime.errors import UserError, install
from gpt_study.runtime.progress import progress_bar
from gpt_study.train.metrics import MetricsWriter
from gpt_study.train.plot import plot_run
from gpt_study.train.state import TrainState

log = logging.getLogger("gpt_study.train")


class _TqdmHandler(logging.Handler):
    """Console log lines that do not break the progress bar."""

    def emit(self, record: logging.LogRecord) -> None:
        tqdm.write(self.format(record), file=sys.stdout)


@contextlib.contextmanager
def console_and_log(save_root: Path | None) -> Iterator[None]:
    """Console (and ``info.log``) on rank 0; other ranks only report warnings and errors."""
    handlers: list[logging.Handler] = [_TqdmHandler()]
    if save_root is not None:
        fh = logging.FileHandler(save_root / INFO_LOG, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        handlers.append(fh)
    handlers[0].setFormatter(logging.Formatter("%(message)s"))
    old_level, old_prop = log.level, log.propagate
    log.setLevel(logging.INFO if distributed.is_main() else logging.WARNING)
    log.propagate = False
    for h in handlers:
        log.addHandler(h)
    try:
        yield
    finally:
        for h in handlers:
            log.removeHandler(h)
            h.close()
        log.setLevel(old_level)
        log.propagate = old_prop


def start_wandb(cfg: Config, state: TrainState) -> Any:
    """A wandb run that a resumed run continues (its id is kept in the state)."""
    try:
        import wandb
    except ImportError:
        raise UserError(
            f"--wb_flag needs Weights & Biases: {install('wandb')} (or drop --wb_flag)"
        ) from None
    tc = cfg.train
    state.wandb_id = state.wandb_id or wandb.util.generate_id()
    return wandb.init(
        project=tc.log.wb_project,
        name=tc.log.wb_name,
        notes=tc.log.wb_notes,
        tags=tc.log.wb_tags or None,
        config=config_to_dict(cfg, flat=True),  # the study's names, as older runs logged
        id=state.wandb_id,
        resume="allow",
    )


class Observer:
    """Rank 0's metrics files, plot and wandb run; on other ranks every call does nothing."""

    def __init__(self, cfg: Config, state: TrainState, resume: bool) -> None:
        self.save_root = Path(cfg.train.save_root)
        self.main = distributed.is_main()
        self.metrics = (
            MetricsWriter(self.save_root, state.step if resume else None) if self.main else None
        )
        self.wb = start_wandb(cfg, state) if cfg.train.log.wb_flag and self.main else None

    def record(self, rec: dict[str, Any]) -> None:
        if self.metrics is not None:
            self.metrics.write(rec)
        if self.wb is not None:
            self.wb.log({k: v for k, v in rec.items() if k != "kind"}, step=rec["step"])

    def redraw(self) -> None:
        if not self.main:
            return
        try:
            plot_run(self.save_root)
        except Exception as e:  # a plot is a nicety; never lose a run to it
            log.warning("could not draw %s: %s", self.save_root / PLOT, e)

    def close(self) -> None:
        if self.wb is not None:
            self.wb.finish()


def epoch_bar(step: int, cfg: TrainConfig) -> tqdm:
    """The bar of the epoch ``step`` is in (rank 0 only; ``--progress``: on a terminal)."""
    ipe = cfg.budget.iters_per_epoch
    return progress_bar(
        cfg.log.progress if distributed.is_main() else False,
        total=ipe,
        initial=step % ipe,
        desc=f"epoch {step // ipe + 1}/{cfg.budget.epoch}",
        unit="step",
    )


def hms(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
