"""``gpt-study compare RUN RUN ...``: runs side by side -> table, PNG, Markdown, JSON, stories."""

from __future__ import annotations

import argparse
import sys

from gpt_study import runtime
from gpt_study.compare import StorySettings, compare_runs, default_out, format_text
from gpt_study.errors import UserError
from gpt_study.stories import OPENINGS


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
    default = StorySettings()  # the story protocol's samples, seed and cap
    parser.add_argument(
        "--samples",
        type=int,
        default=default.samples,
        help=f"stories per opening (default: {default.samples}, as evaluate)",
    )
    parser.add_argument(
        "--openings",
        type=int,
        default=default.openings,
        help=f"how many of evaluate's {len(OPENINGS)} openings to write from "
        f"(default: {default.openings})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=default.seed,
        help=f"sampling seed, the same for every run (default: {default.seed}, as evaluate)",
    )
    parser.add_argument(
        "--max_new_tokens",
        type=int,
        default=default.max_new_tokens,
        help=f"most tokens per story (default: {default.max_new_tokens}, the story protocol's "
        "cap, as evaluate)",
    )
    parser.add_argument(
        "--no_stories", action="store_true", help="figures and curves only (loads no weights)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="CPU threads for torch (0: torch's default); 1 is faster when other work shares "
        "the cores",
    )


def run(args: argparse.Namespace) -> int:
    if not 1 <= args.openings <= len(OPENINGS):
        raise UserError(f"--openings {args.openings} is out of range: use 1 to {len(OPENINGS)}")
    if args.samples < 1 or args.max_new_tokens < 1 or args.seed < 0 or args.threads < 0:
        raise UserError(
            "--samples and --max_new_tokens must be at least 1, --seed and --threads at least 0"
        )
    stories = None
    if not args.no_stories:
        stories = StorySettings(
            openings=args.openings,
            samples=args.samples,
            seed=args.seed,
            max_new_tokens=args.max_new_tokens,
            device=args.device,
        )
    runtime.set_threads(args.threads)
    out = args.out if args.out is not None else default_out(args.runs)
    result = compare_runs(args.runs, out, stories)
    print(format_text(result), flush=True)
    print(f"wrote {', '.join(result['files'])}", file=sys.stderr)
    return 0
