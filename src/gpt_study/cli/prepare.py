"""``gpt-study prepare``: flags -> :class:`~gpt_study.config.DataConfig` -> ``prepare``."""

from __future__ import annotations

import argparse

from gpt_study.cli.flags import add_dataclass_args, dataclass_overrides
from gpt_study.config import DataConfig
from gpt_study.data.prepare import prepare


def configure(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, DataConfig)
    parser.add_argument(
        "--no_progress", action="store_true", help="no progress bar (for logs and scripts)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = DataConfig(**dataclass_overrides(args, DataConfig))
    prepare(cfg, progress=not args.no_progress)
    return 0
