"""``gpt-study train``: flags -> one Config -> :func:`gpt_study.train.fit`, under the run's
process settings (threads, speed settings), restored when it returns."""

from __future__ import annotations

import argparse

from gpt_study.cli.flags import add_dataclass_args, dataclass_overrides
from gpt_study.config import Config, DataConfig, GPTConfig, TrainConfig
from gpt_study.config.presets import PRESETS
from gpt_study.train.fit import fit
from gpt_study.train.setup import DATA_FLAGS, build_config

DATA_SKIP = tuple(f for f in DataConfig.__dataclass_fields__ if f not in DATA_FLAGS)


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        default=None,
        help=f"starting config: one of {', '.join(PRESETS)} (seed: the study's, the default; "
        "docs/train.md says what each is); any flag overrides it",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --save_root from its last checkpoint (what may change then: "
        "docs/train.md)",
    )
    add_dataclass_args(parser, TrainConfig, presets=_preset_values("train"))
    add_dataclass_args(parser, GPTConfig, presets=_preset_values("model"))
    add_dataclass_args(parser, DataConfig, skip=DATA_SKIP)


def _preset_values(section: str) -> dict[str, dict[str, object]]:
    """What each preset sets in ``section``, for --help beside the study's defaults."""
    return {name: p[section] for name, p in PRESETS.items() if p.get(section)}


def config_from_flags(args: argparse.Namespace) -> Config:
    """The one place train's flags become a Config: each flag is one field of one section."""
    return build_config(
        preset=args.preset,
        train=dataclass_overrides(args, TrainConfig),
        model=dataclass_overrides(args, GPTConfig),
        data=dataclass_overrides(args, DataConfig, skip=DATA_SKIP),
        resume=args.resume,
    )


def run(args: argparse.Namespace) -> int:
    return fit(config_from_flags(args), resume=args.resume).exit_code  # fit applies the settings
