"""``gpt-study generate``: prompts and flags -> :func:`gpt_study.generate.generate` -> stdout."""

from __future__ import annotations

import argparse
import sys

from gpt_study.cli.common import add_checkpoint_args, open_checkpoint, sample_settings
from gpt_study.cli.common import window as window_of
from gpt_study.cli.flags import add_dataclass_args
from gpt_study.config import SampleConfig
from gpt_study.generate import describe, generate, raw_tokens
from gpt_study.runtime.errors import UserError


def configure(parser: argparse.ArgumentParser) -> None:
    add_checkpoint_args(parser)
    parser.add_argument(
        "--prompt",
        action="append",
        default=None,
        help="story opening; repeat for several (generated as a batch); empty: start from <sot>",
    )
    parser.add_argument("--prompt_file", default=None, help="a file with one prompt per line")
    parser.add_argument(
        "--batch_size", type=int, default=16, help="prompts generated together (default: 16)"
    )
    parser.add_argument(
        "--raw", action="store_true", help="print tokens as the study did (specials included)"
    )
    parser.add_argument(
        "--stream",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="print text as it is written (default: on for a single prompt)",
    )
    add_dataclass_args(parser, SampleConfig)


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompt_file:
        try:
            with open(args.prompt_file, encoding="utf-8") as f:
                prompts += [line.rstrip("\n") for line in f if line.strip()]
        except OSError as e:
            raise UserError(
                f"cannot read --prompt_file {args.prompt_file} ({e.strerror}): check the path"
            ) from None
        except UnicodeDecodeError as e:
            raise UserError(
                f"--prompt_file {args.prompt_file} is not UTF-8 text (byte {e.start}): save it "
                "as UTF-8"
            ) from None
        if not prompts:
            raise UserError(f"--prompt_file {args.prompt_file} has no prompts: one per line")
    return prompts or [""]


def run(args: argparse.Namespace) -> int:
    if args.batch_size < 1:
        raise UserError("--batch_size must be at least 1")
    prompts = _prompts(args)
    ckpt = open_checkpoint(args)
    sample = sample_settings(ckpt.config.sample, args)
    window = window_of(args, ckpt)
    tok = ckpt.tokenizer
    out = sys.stdout
    # Streaming shows the first story of each batch as it is written; the rest follow at the end.
    streaming = not args.raw and (args.stream if args.stream is not None else len(prompts) == 1)
    print(f"# {describe(sample, window)}", file=sys.stderr)

    def warn(msg: str) -> None:
        print(f"warning: {msg}", file=sys.stderr)

    def write(text: str) -> None:
        out.write(text)
        out.flush()

    def header(n: int) -> None:
        if len(prompts) > 1:
            write(("\n" if n else "") + f"### story {n + 1}\n")

    for b in range(0, len(prompts), args.batch_size):
        batch = prompts[b : b + args.batch_size]
        if streaming:
            header(b)
        res = generate(
            ckpt.model,
            tok,
            batch,
            sample.from_row(b),  # prompt i draws from seed + i, whatever --batch_size
            window=window,
            stream=(lambda row, text: write(text) if row == 0 else None) if streaming else None,
            warn=warn,
        )
        for r in range(len(batch)):
            ending = "" if res.finished[r] else " ..."
            if streaming and r == 0:
                write(ending + "\n")
                continue
            header(b + r)
            if args.raw:
                write(raw_tokens(tok, res.prompt_ids[r] + res.new_ids[r]) + "\n")
            else:
                write(res.texts[r] + ending + "\n")
    return 0
