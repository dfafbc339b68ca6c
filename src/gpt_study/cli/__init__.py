"""``gpt-study <command>``: a thin layer over the library.

This package is the only place that parses flags. Each command is a module here that offers
``configure(parser)`` (its flags) and ``run(args) -> int`` (flags -> typed config -> a call into the
library). Only the chosen command's module is imported, so ``gpt-study --help`` and
``gpt-study prepare`` do not pay for importing torch.
Problems the user can fix (:class:`~gpt_study.runtime.errors.UserError`) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gpt_study import __version__
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import os_error_line
from gpt_study.runtime.memory import use_huge_pages

# command -> (module, one-line description)
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("gpt_study.cli.prepare", "turn a corpus into token-id arrays and a vocabulary"),
    "train": ("gpt_study.cli.train", "train the GPT on a prepared folder (resumable)"),
    "evaluate": ("gpt_study.cli.evaluate", "NLL, perplexity, bits per byte and story metrics"),
    "generate": ("gpt_study.cli.generate", "write stories from a checkpoint"),
    "plot": ("gpt_study.cli.plot", "draw the loss curves of a run as PNG"),
    "compare": ("gpt_study.cli.compare", "runs side by side: curves, figures, settings, stories"),
    "serve": ("gpt_study.cli.serve", "a local web page to look inside models and runs"),
    "export": ("gpt_study.cli.export", "write a checkpoint as a folder that transformers loads"),
    "import": ("gpt_study.cli.import_", "a transformers GPT-2, Llama, GPT-Neo... as a checkpoint"),
    "demo": (
        "gpt_study.cli.demo",
        "prepare, train, plot, evaluate and generate on the shared sample",
    ),
}


class _Parser(argparse.ArgumentParser):
    """A usage error is one line that says where to look, not the whole usage: the message
    becomes a :class:`UserError` (exit code 2, like every other mistake)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see {self.prog} --help)")


def _top_parser() -> argparse.ArgumentParser:
    lines = "\n".join(f"  {name:<10} {desc}" for name, (_, desc) in COMMANDS.items())
    p = _Parser(
        prog="gpt-study",
        description="Study small GPT language models end to end.",
        epilog=f"commands:\n{lines}\n\n`gpt-study <command> --help` lists a command's flags.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"gpt-study {__version__}")
    p.add_argument("command", choices=list(COMMANDS), metavar="command")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    use_huge_pages()  # before the command builds anything large (see there)
    top = _top_parser()
    if not argv or argv[0].startswith("-"):
        try:
            top.parse_args(argv or ["--help"])
        except UserError as e:
            print(f"gpt-study: error: {e}", file=sys.stderr)
            return 2
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(
            f"gpt-study: error: unknown command {name!r}: choose from {', '.join(COMMANDS)} "
            "(see gpt-study --help)",
            file=sys.stderr,
        )
        return 2
    module_name, desc = COMMANDS[name]
    parser = _Parser(prog=f"gpt-study {name}", description=desc)
    try:
        module = importlib.import_module(module_name)
        module.configure(parser)
        args = parser.parse_args(argv[1:])
        return int(module.run(args) or 0)
    except UserError as e:
        one_line = " ".join(str(e).split())  # a quoted library message may hold newlines
        print(f"gpt-study {name}: error: {one_line}", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk or a permission the library did not foresee: one line
        print(f"gpt-study {name}: error: {os_error_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpt-study {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
