"""One exception type for problems the user can fix.

The CLI catches it and prints its message as a single line (no traceback) with a non-zero exit,
so every message should name the problem *and* the fix.
"""

from __future__ import annotations

import importlib
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
