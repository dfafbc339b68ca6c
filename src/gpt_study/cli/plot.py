"""``gpt-study plot``: redraw a run's loss curves from its metrics."""

from __future__ import annotations

import argparse

from gpt_study.config import TrainConfig
from gpt_study.train.plot import plot_run

SAVE_ROOT = TrainConfig().save_root  # train's default folder, so `gpt-study plot` finds its run


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save_root", default=SAVE_ROOT, help=f"the run's folder (default: {SAVE_ROOT})"
    )
    parser.add_argument("--out", default=None, help="PNG to write (default: <save_root>/loss.png)")


def run(args: argparse.Namespace) -> int:
    out = plot_run(args.save_root, args.out)
    print(out)
    return 0
