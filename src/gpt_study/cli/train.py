"""``gpt-study train``: flags -> config overrides -> :func:`gpt_study.train.fit`."""

from __future__ import annotations

import argparse

from gpt_study.cli.flags import add_dataclass_args, dataclass_overrides
from gpt_study.config import PRESETS, DataConfig, GPTConfig, TrainConfig
from gpt_study.train import DATA_SKIP, fit


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help="starting config: seed (the study's, the default) or tiny (CPU-friendly); "
        "any flag overrides it",
    )
    add_dataclass_args(parser, TrainConfig)
    add_dataclass_args(parser, GPTConfig)
    add_dataclass_args(parser, DataConfig, skip=DATA_SKIP)


def run(args: argparse.Namespace) -> int:
    result = fit(
        preset=args.preset,
        train=dataclass_overrides(args, TrainConfig),
        model=dataclass_overrides(args, GPTConfig),
        data=dataclass_overrides(args, DataConfig, skip=DATA_SKIP),
    )
    return result.exit_code
