"""``gpt-study evaluate``: a checkpoint -> held-out scores and story metrics -> table (and JSON)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from gpt_study.cli.common import add_checkpoint_args, open_checkpoint, sample_settings
from gpt_study.cli.flags import add_dataclass_args
from gpt_study.config import SampleConfig
from gpt_study.errors import UserError
from gpt_study.evaluate import UNK_NOTE, evaluate_split, evaluate_stories, format_table
from gpt_study.io import write_json_atomic


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_args(parser)
    parser.add_argument(
        "--data",
        default=None,
        help="prepared folder (default: the one the checkpoint was trained on)",
    )
    parser.add_argument("--split", default="valid", choices=["valid", "train"])
    parser.add_argument("--batch_size", type=int, default=16, help="rows per forward pass")
    parser.add_argument(
        "--max_rows",
        type=int,
        default=0,
        help="read at most this many windows (0: the whole split)",
    )
    parser.add_argument("--samples", type=int, default=2, help="stories per opening (default: 2)")
    parser.add_argument("--no_valid", action="store_true", help="skip the held-out text")
    parser.add_argument("--no_stories", action="store_true", help="skip the story metrics")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    add_dataclass_args(parser, SampleConfig)


def _data_folder(args: argparse.Namespace, config: Any) -> str:
    if args.data:
        return args.data
    if config.train.data:
        return config.train.data
    return str(config.data.output_dir())


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.samples < 1 or args.max_rows < 0:
        raise UserError("--batch_size and --samples must be at least 1, --max_rows at least 0")
    if args.no_valid and args.no_stories:
        raise UserError("--no_valid and --no_stories leave nothing to do: drop one of them")
    if args.json and not Path(args.json).resolve().parent.is_dir():
        raise UserError(f"--json {args.json}: its folder does not exist; create it first")
    ckpt = open_checkpoint(args)
    window = args.context_size or ckpt.config.train.window
    result: dict[str, Any] = {"checkpoint": str(ckpt.path), "context_size": window}
    if not args.no_valid:
        result["valid"] = evaluate_split(
            ckpt.model,
            _data_folder(args, ckpt.config),
            window,
            args.split,
            args.batch_size,
            args.max_rows,
            tokenizer=ckpt.tokenizer,
            progress=sys.stderr.isatty(),
        )
        result["valid"]["note"] = UNK_NOTE
    if not args.no_stories:
        sample = sample_settings(ckpt.config.sample, args)
        result["stories"] = evaluate_stories(
            ckpt.model, ckpt.tokenizer, sample, window, samples_per_opening=args.samples
        )
    print(format_table(result), flush=True)
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
