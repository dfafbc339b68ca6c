"""``gpt-study evaluate``: a checkpoint, or any transformers causal LM (``--hf``) -> held-out
scores and story metrics -> table (and JSON, the same shape for both)."""

from __future__ import annotations

import argparse
import sys
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
from gpt_study.data.folder import SPLITS
from gpt_study.evaluate.hf import evaluate_hf, load_hf
from gpt_study.evaluate.report import UNK_NOTE, evaluate_split, evaluate_stories, format_table
from gpt_study.evaluate.stories import PROTOCOL_SAMPLE
from gpt_study.outputs import check_output_file, mark
from gpt_study.runtime import device as runtime
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import write_json_atomic


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_args(parser, required=False)
    parser.add_argument(
        "--hf",
        default=None,
        metavar="NAME_OR_FOLDER",
        help="instead of --checkpoint: a transformers causal LM with its own tokenizer, a Hub "
        "name (roneneldan/TinyStories-33M) or a folder (gpt-study export writes one), scored "
        "on --data's stories as text (docs/quality-vs-published.md)",
    )
    parser.add_argument(
        "--trust_remote_code",
        action="store_true",
        help="--hf: let transformers run the model's own code (a gpt-study export with a head "
        "bias needs it)",
    )
    add_progress_arg(parser)
    parser.add_argument(
        "--data",
        default=None,
        help="prepared folder (default: the one the checkpoint was trained on; --hf needs it)",
    )
    parser.add_argument("--split", default="valid", choices=list(reversed(SPLITS)))
    parser.add_argument(
        "--batch_size",
        type=int,
        default=None,
        help="rows per forward pass (default: 16; --hf: as many windows as keep the logits "
        "near 512 MB)",
    )
    parser.add_argument(
        "--max_rows",
        type=int,
        default=0,
        help="read at most this many windows (0: the whole split)",
    )
    parser.add_argument(
        "--by_context",
        action="store_true",
        help="also the NLL per token by the context each target had (1-8 tokens, 9-32, ...): "
        "what a longer window buys",
    )
    parser.add_argument("--no_valid", action="store_true", help="skip the held-out text")
    parser.add_argument("--no_stories", action="store_true", help="skip the story metrics")
    parser.add_argument("--json", default=None, help="also write the numbers to this JSON file")
    add_dataclass_args(parser, SampleConfig, skip=PROTOCOL_FLAGS)
    add_story_args(parser)


def run(args: argparse.Namespace) -> int:
    if (args.checkpoint is None) == (args.hf is None):
        raise UserError("pass --checkpoint (a gpt-study checkpoint) or --hf (a transformers model)")
    if (args.batch_size is not None and args.batch_size < 1) or args.max_rows < 0:
        raise UserError("--batch_size must be at least 1, --max_rows at least 0")
    if args.no_valid and args.no_stories:
        raise UserError("--no_valid and --no_stories leave nothing to do: drop one of them")
    if args.no_valid and args.by_context:
        raise UserError("--by_context scores the held-out text: drop --no_valid")
    if args.hf is not None:
        return run_hf(args)
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
            args.data or ckpt.config.prepared_folder(),
            window,
            args.split,
            args.batch_size or 16,
            args.max_rows,
            tokenizer=ckpt.tokenizer,
            progress=args.progress,
            by_context=args.by_context,
        )
        result["valid"]["note"] = UNK_NOTE
    if not args.no_stories:
        sample = sample_settings(PROTOCOL_SAMPLE, args)  # the protocol's, not the checkpoint's
        protocol = story_protocol(args)
        result["stories"] = evaluate_stories(ckpt.model, ckpt.tokenizer, sample, window, protocol)
    return _report(args, result)


def run_hf(args: argparse.Namespace) -> int:
    """``--hf``: the same report for a transformers model, on ``--data``'s stories as text."""
    if args.data is None and not args.no_valid:
        raise UserError("--hf needs --data: a prepared folder whose stories it is scored on")
    for flag, on in (("--quantize", args.quantize != "none"), ("--by_context", args.by_context)):
        if on:
            raise UserError(f"{flag} is for gpt-study checkpoints: drop it with --hf")
    if args.json:
        check_output_file(
            args.json, "evaluate", "--json", inputs=[args.hf, *filter(None, [args.data])]
        )
    sample = sample_settings(PROTOCOL_SAMPLE, args)  # flags checked before any loading
    protocol = None if args.no_stories else story_protocol(args)
    runtime.set_threads(args.threads)
    hf = load_hf(args.hf, args.device, args.dtype, args.window, args.trust_remote_code)
    result = evaluate_hf(
        hf,
        None if args.no_valid else args.data,
        args.split,
        args.batch_size,
        args.max_rows,
        args.progress,
        sample=sample,
        protocol=protocol,
    )
    result = {"written_by": mark("evaluate"), **result}
    return _report(args, result)


def _report(args: argparse.Namespace, result: dict[str, Any]) -> int:
    print(format_table(result), flush=True)
    if args.json:
        write_json_atomic(args.json, result)
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
