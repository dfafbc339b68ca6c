"""Reading a saved tokenizer back, whichever kind it is.

Apart from :mod:`.base` so that the kinds can import the interface without importing each other
(or this loader, which needs both).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

from gpt_study.data.tokenizer.base import FORMAT_VERSION, Tokenizer
from gpt_study.data.tokenizer.bpe import BPETokenizer
from gpt_study.data.tokenizer.byte import ByteTokenizer
from gpt_study.data.tokenizer.imported import ImportedTokenizer
from gpt_study.data.tokenizer.word import WordTokenizer
from gpt_study.runtime.errors import UserError

KINDS: dict[str, type[Tokenizer]] = {
    c.kind: c for c in (WordTokenizer, BPETokenizer, ByteTokenizer, ImportedTokenizer)
}
"""Every tokenizer kind (``--tokenizer``'s choices) and its class."""
LOSSLESS = tuple(kind for kind, c in KINDS.items() if c.lossless)
"""The kinds whose ids give back their text exactly (:attr:`Tokenizer.lossless`)."""


def tokenizer_from_dict(d: dict[str, Any], where: str = "tokenizer") -> Tokenizer:
    kind = d.get("kind")
    if d.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise UserError(f"{where} was written by a newer gpt-study: upgrade gpt-study")
    if kind == "word":
        return WordTokenizer(
            d["vocab"], lowercase=bool(d.get("lowercase", True)), counts=d.get("counts")
        )
    if kind == "bpe":
        tok = HFTokenizer.from_str(json.dumps(d["tokenizer"]))
        return BPETokenizer(tok, lowercase=bool(d.get("lowercase", False)))
    if kind == "byte":
        return ByteTokenizer(lowercase=bool(d.get("lowercase", False)))
    if kind == ImportedTokenizer.kind:
        return ImportedTokenizer.from_dict(d)
    raise UserError(
        f"{where} has unknown tokenizer kind {kind!r}: rebuild it with gpt-study prepare"
    )


_TOKENIZER_FIX = (
    "in a prepared folder, re-run `gpt-study prepare --data <your corpus> --out <folder> "
    "--force`; in a checkpoint, copy tokenizer.json from the run's other checkpoint"
)


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer JSON written by ``Tokenizer.save`` (any kind)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no tokenizer at {path}: run `gpt-study prepare` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged (not JSON): {_TOKENIZER_FIX}") from None
    if not isinstance(d, dict) or "kind" not in d:
        raise UserError(f"{path} is not a gpt-study tokenizer: {_TOKENIZER_FIX}")
    try:
        return tokenizer_from_dict(d, str(path))
    except UserError:
        raise
    except Exception as e:  # a missing key, a mistyped entry, a BPE that `tokenizers` rejects
        raise UserError(f"{path} is damaged ({type(e).__name__}: {e}): {_TOKENIZER_FIX}") from None
