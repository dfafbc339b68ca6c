"""``gpt-study export``: a checkpoint -> :func:`gpt_study.export.export_hf` -> a folder."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint folder written by train (e.g. runs/gpt/best)",
    )
    parser.add_argument(
        "--format",
        default="hf",
        choices=["hf"],
        help="hf: a folder that transformers' AutoModelForCausalLM and AutoTokenizer load",
    )
    parser.add_argument(
        "--out", required=True, help="folder to write (replaced only if gpt-study wrote it)"
    )


def run(args: argparse.Namespace) -> int:
    # Imported here: the export package needs transformers' neighbours (tokenizers, spaCy) and
    # torch, which `gpt-study --help` should not pay for.
    from gpt_study.export import export_hf

    export_hf(args.checkpoint, args.out, log=lambda line: print(line, file=sys.stderr))
    return 0
