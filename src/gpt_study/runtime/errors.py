"""One exception type for problems the user can fix.

The CLI catches it and prints its message as a single line (no traceback) with a non-zero exit,
so every message should name the problem *and* the fix.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class UserError(Exception):
    """Bad input or state that the user can correct; the message is shown as is."""


def install(extra: str) -> str:
    """The one piece of advice for a missing optional extra (pyproject's
    ``[project.optional-dependencies]``): add it to gpt-study as the README installs it, from
    its checkout."""
    return f'pip install -e ".[{extra}]" in the gpt-study checkout'


# How to get transformers, for every command that needs it (export, import, evaluate --hf).
TRANSFORMERS_INSTALL = install("export")


def require(module: str, who: str, install: str) -> Any:
    """The optional ``module``, imported, or a one-line error: ``who`` needs it, ``install``
    gets it (the one rule for optional extras such as transformers)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{who} needs {module}: {install}") from None


def weights_dtype(transformers: Any, dtype: Any) -> dict[str, Any]:
    """``from_pretrained``'s keyword for the weights' dtype: ``dtype`` from transformers 5 on,
    ``torch_dtype`` before (which 5 warns of)."""
    major = int(transformers.__version__.split(".")[0])
    return {"dtype" if major >= 5 else "torch_dtype": dtype}


def read_errors() -> tuple[type[BaseException], ...]:
    """What a library raises on a damaged or foreign file it reads (a transformers folder, a
    safetensors header, a tokenizer's JSON, weights of other sizes than the config's): its
    caller reports each in one line (:func:`read_error_line`)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, KeyError, TypeError, RuntimeError, SafetensorError)


def read_error_line(e: BaseException) -> str:
    """The first line of ``e``, or what it means where that line points elsewhere."""
    text = str(e).strip()
    if "ignore_mismatched_sizes" in text:  # transformers' report went to its muted log
        return "its weights have other sizes than its config.json says"
    if isinstance(e, KeyError):  # a JSON file of another shape than the reader expects
        return f"a file of it lacks the key {text}: is it a transformers folder?"
    return (text.splitlines() or [type(e).__name__])[0]


@contextlib.contextmanager
def muted(transformers: Any) -> Iterator[None]:
    """transformers' warnings, load reports and progress bars off while it loads: the command's
    lines (and its one-line refusals) are the only output (import, evaluate --hf)."""
    logging = transformers.utils.logging
    level, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(level)
        if bars:
            logging.enable_progress_bar()


def check_hf_source(name: str) -> None:
    """``--hf NAME``: a name that can only be a local path (``./x``, ``/x``, ``~/x``, ``a/b/c``, or
    ``a/b`` where ``a`` is a folder here) must be a folder, refused in one line before
    transformers takes it for a Hub name and tries the network for half a minute."""
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise UserError(
                f"--hf {name} is a file: pass the folder transformers saved (config.json, "
                "weights, tokenizer) or a Hub name"
            )
        return
    parts = Path(name).parts
    local = name.startswith((".", "/", "~")) or len(parts) > 2
    if local or (len(parts) == 2 and Path(parts[0]).is_dir()):
        raise UserError(
            f"--hf {name}: no such folder: check the path, or pass a Hub name (owner/model)"
        )
