"""``gpt-study evaluate``: a checkpoint -> held-out scores and story metrics -> table (and JSON)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from typing import Any

from gpt_study.cli.common import (
    PROTOCOL_FLAGS,
    add_checkpoint_args,
    add_progress_arg,
    add_story_args,
    open_checkpoint,
    sample_settings,
    story_protocol,
)
from gpt_study.cli.common import window as window_of
from gpt_study.cli.flags import add_dataclass_args
from gpt_study.config import SampleConfig
from gpt_study.config.data import data_folder
from gpt_study.evaluate.report import UNK_NOTE, evaluate_split, evaluate_stories, format_table
from gpt_study.outputs import check_output_file, mark
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import write_json_atomic


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_args(parser)
    add_progress_arg(parser)
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
    parser.add_argument("--no_valid", action="store_true", help="skip the held-out text")
    parser.add_argument("--no_stories", action="store_true", help="skip the story metrics")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    add_dataclass_args(parser, SampleConfig, skip=PROTOCOL_FLAGS)
    add_story_args(parser)


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1 or args.max_rows < 0:
        raise UserError("--batch_size must be at least 1, --max_rows at least 0")
    if args.no_valid and args.no_stories:
        raise UserError("--no_valid and --no_stories leave nothing to do: drop one of them")
    if args.json:
        check_output_file(args.json, "evaluate", "--json", inputs=[args.checkpoint])
    ckpt = open_checkpoint(args)
    window = window_of(args, ckpt)
    result: dict[str, Any] = {
        "written_by": mark("evaluate"),
        "checkpoint": str(ckpt.path),
        "context_size": window,
    }
    if not args.no_valid:
        result["valid"] = evaluate_split(
            ckpt.model,
            args.data or data_folder(ckpt.config.train.data, asdict(ckpt.config.data)),
            window,
            args.split,
            args.batch_size,
            args.max_rows,
            tokenizer=ckpt.tokenizer,
            progress=args.progress,
        )
        result["valid"]["note"] = UNK_NOTE
    if not args.no_stories:
        sample = sample_settings(ckpt.config.sample, args)
        protocol = story_protocol(args)
        result["stories"] = evaluate_stories(ckpt.model, ckpt.tokenizer, sample, window, protocol)
    print(format_table(result), flush=True)
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
