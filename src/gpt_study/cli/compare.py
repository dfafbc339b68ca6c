"""``gpt-study compare RUN RUN ...``: runs side by side -> table, PNG, Markdown, JSON, stories;
``--hf`` / ``--evaluated``: published models and evaluate reports beside them."""

from __future__ import annotations

import argparse
import sys

from gpt_study.cli.common import (
    add_device_args,
    add_progress_arg,
    add_story_args,
    add_threads_arg,
    story_protocol,
)
from gpt_study.compare import (
    HFSettings,
    References,
    StorySettings,
    compare_runs,
    default_out,
    format_text,
)
from gpt_study.evaluate.stories import OPENINGS
from gpt_study.runtime import device as runtime
from gpt_study.runtime.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "runs", nargs="+", metavar="RUN", help="run folders (--save_root of train), two or more"
    )
    parser.add_argument(
        "--out",
        default=None,
        help="folder for compare.png, compare.md and compare.json (default: <first run's "
        "parent>/compare); other files in it are never touched",
    )
    add_story_args(parser)
    parser.add_argument(
        "--openings",
        type=int,
        default=StorySettings.openings,
        help=f"how many of evaluate's {len(OPENINGS)} openings to write from "
        f"(default: {StorySettings.openings})",
    )
    parser.add_argument(
        "--no_stories", action="store_true", help="figures and curves only (loads no weights)"
    )
    add_reference_args(parser)
    add_device_args(parser)
    add_threads_arg(parser)


def add_reference_args(parser: argparse.ArgumentParser) -> None:
    """Models beside the runs (gpt_study.compare.references)."""
    parser.add_argument(
        "--hf",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME_OR_FOLDER",
        help="transformers causal LMs to score on the runs' valid split (as evaluate --hf) and "
        "add as rows and as lines on the bits-per-byte panel",
    )
    parser.add_argument(
        "--evaluated",
        nargs="+",
        action="extend",
        default=[],
        metavar="JSON",
        help="reports of gpt-study evaluate --json (a checkpoint or --hf) to add the same way",
    )
    parser.add_argument(
        "--data", default=None, help="--hf: prepared folder to score on (default: the first run's)"
    )
    parser.add_argument("--batch_size", type=int, default=None, help="--hf: rows per forward pass")
    parser.add_argument(
        "--trust_remote_code", action="store_true", help="--hf: let transformers run model code"
    )
    add_progress_arg(parser)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads {args.threads} is out of range: use auto or a count >= 1")
    protocol = story_protocol(args)  # checks the story flags' ranges
    stories: StorySettings | None = StorySettings(  # checked even with --no_stories
        openings=args.openings,
        samples=protocol.samples_per_opening,
        seed=protocol.seed,
        max_new_tokens=protocol.max_new_tokens,
        device=args.device,
        dtype=args.dtype,
    )
    if args.no_stories:
        stories = None
    if args.batch_size is not None and args.batch_size < 1:
        raise UserError("--batch_size must be at least 1")
    hf = HFSettings(
        args.data, args.device, args.dtype, args.batch_size, args.trust_remote_code, args.progress
    )
    references = References(args.hf, args.evaluated, hf)
    runtime.set_threads(args.threads)
    out = args.out if args.out is not None else default_out(args.runs)
    result = compare_runs(args.runs, out, stories, references)
    print(format_text(result), flush=True)
    print(f"wrote {', '.join(result['files'])}", file=sys.stderr)
    return 0
