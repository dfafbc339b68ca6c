"""``gpt-study import``: a transformers model -> :func:`gpt_study.export.imports.import_hf` -> a
checkpoint."""

from __future__ import annotations

import argparse
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--hf",
        required=True,
        metavar="NAME_OR_FOLDER",
        help="a transformers model: a Hub name (read from the local cache when offline) or a "
        "folder, of a class docs/import.md lists (another is refused in one line naming them)",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="CHECKPOINT",
        help="checkpoint folder to write (replaced only if gpt-study wrote it)",
    )


def run(args: argparse.Namespace) -> int:
    # Imported here: transformers and torch, which `gpt-study --help` should not pay for.
    from gpt_study.export.imports import import_hf

    import_hf(args.hf, args.out, log=lambda line: print(line, file=sys.stderr))
    return 0
