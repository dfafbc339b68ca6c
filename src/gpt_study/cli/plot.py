"""``gpt-study plot``: redraw a run's loss curves from its metrics."""

from __future__ import annotations

import argparse

from gpt_study.train.plot import plot_run


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--save_root", default="runs/gpt", help="the run's folder (default: runs/gpt)"
    )
    parser.add_argument("--out", default=None, help="PNG to write (default: <save_root>/loss.png)")


def run(args: argparse.Namespace) -> int:
    out = plot_run(args.save_root, args.out)
    print(out)
    return 0
