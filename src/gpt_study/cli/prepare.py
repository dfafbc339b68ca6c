"""``gpt-study prepare``: flags -> :class:`~gpt_study.config.DataConfig` -> ``prepare``."""

from __future__ import annotations

import argparse

from gpt_study.cli.common import add_progress_arg
from gpt_study.cli.flags import add_dataclass_args, dataclass_overrides
from gpt_study.config import DataConfig
from gpt_study.data.prepare import prepare


def configure(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, DataConfig)
    add_progress_arg(parser)
    # The flag's earlier spelling, kept so scripts that use it still work.
    parser.add_argument(
        "--no_progress", dest="progress", action="store_false", help=argparse.SUPPRESS
    )


def run(args: argparse.Namespace) -> int:
    cfg = DataConfig(**dataclass_overrides(args, DataConfig))
    prepare(cfg, progress=args.progress)
    return 0
