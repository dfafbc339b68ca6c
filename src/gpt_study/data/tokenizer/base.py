"""The tokenizer interface: what every stage after ``prepare`` may rely on, whatever the kind.

Ids 0, 1, 2 are always ``<unk>``, ``<sot>``, ``<eot>``; :data:`FORMAT_VERSION` is the version of
the JSON a tokenizer saves itself as (:mod:`gpt_study.data.tokenizer.load` reads it back).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable

from gpt_study.config import EOT_ID, SOT_ID, UNK_ID

FORMAT_VERSION = 1


class Tokenizer(ABC):
    """What every stage after ``prepare`` may rely on.

    ``encode`` takes text that already went through :func:`gpt_study.data.clean.clean_text`.
    """

    kind: str  # "word", "bpe" or "byte"
    lowercase: bool  # whether prepare lowercased the corpus (prompts must be cleaned the same way)
    unk_id: int = UNK_ID
    sot_id: int = SOT_ID
    eot_id: int = EOT_ID

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str, sot: bool = False, eot: bool = False) -> list[int]:
        """Token ids of ``text``, optionally wrapped as ``<sot> ... <eot>``."""

    @abstractmethod
    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        """Readable text (for ``word``: ``could n't`` -> ``couldn't``, no space before ``.``)."""

    @abstractmethod
    def id_to_token(self, i: int) -> str:
        """The vocabulary entry of id ``i`` (for ``--raw`` output)."""

    @abstractmethod
    def unknown_words(self, text: str) -> list[str]:
        """Pieces of ``text`` that would become ``<unk>`` (always empty for bpe and byte)."""

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON, atomically."""
