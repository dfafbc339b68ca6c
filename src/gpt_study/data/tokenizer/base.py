"""The tokenizer interface: what every stage after ``prepare`` may rely on, whatever the kind.

Which ids play ``<unk>``, ``<sot>`` and ``<eot>`` is the tokenizer's to say (:attr:`Tokenizer.unk_id`,
:attr:`~Tokenizer.sot_id`, :attr:`~Tokenizer.eot_id`, :attr:`~Tokenizer.special_ids`): 0, 1, 2 for
gpt-study's own kinds, a published model's own ids for ``hf`` (GPT-2's ``<|endoftext|>`` plays both
``<sot>`` and ``<eot>``, and it has no ``<unk>``). Every stage that needs one of them (prepare's
story boundaries, the loss's ``sp_weight``, the scorer's ``<unk>`` count, generation's stop, the
story metrics) reads it from here, not from the constants. :data:`FORMAT_VERSION` is the version of
the JSON a tokenizer saves itself as (:mod:`gpt_study.data.tokenizer.load` reads it back).
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any

import numpy as np

from gpt_study.config import EOT_ID, SOT_ID, UNK_ID
from gpt_study.runtime.files import write_json_atomic

FORMAT_VERSION = 1


class Tokenizer(ABC):
    """What every stage after ``prepare`` may rely on.

    ``encode`` takes text that already went through :func:`gpt_study.data.clean.clean_text`.
    """

    kind: str  # "word", "bpe", "byte" or "hf"
    # decode(encode(text)) == text for every cleaned text, so a text's bytes can be counted from
    # its ids (bits per byte of ids; a prepared split's stories decoded rather than re-read)
    lossless: bool = False
    lowercase: bool  # whether prepare lowercased the corpus (prompts must be cleaned the same way)
    unk_id: int | None = UNK_ID  # None: a vocabulary without an unknown token
    sot_id: int = SOT_ID
    eot_id: int = EOT_ID

    @property
    def special_ids(self) -> tuple[int, ...]:
        """The ids the study's ``sp_weight`` weighs: ``<sot>`` and ``<eot>`` (one id where a
        single token plays both)."""
        return tuple(sorted({self.sot_id, self.eot_id}))

    @property
    def shared_marker(self) -> int | None:
        """See :func:`shared_marker`."""
        return shared_marker(self.sot_id, self.eot_id)

    def wrap(self, ids: list[int], sot: bool, eot: bool) -> list[int]:
        """``ids`` as a story is stored, ``<sot> ... <eot>``, each marker where asked for: what
        every kind's :meth:`encode` returns."""
        return ([self.sot_id] if sot else []) + ids + ([self.eot_id] if eot else [])

    def encode_words(self, stories: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """Cleaned texts given as their space-separated words, each encoded as
        ``<sot> ... <eot>``, concatenated (uint16), and each story's length: what ``prepare``
        writes. Kinds with a faster way (``bpe``, ``byte``, ``hf``) override it."""
        rows = [self.encode(" ".join(words), sot=True, eot=True) for words in stories]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter((i for r in rows for i in r), dtype=np.uint16, count=int(lengths.sum()))
        return flat, lengths

    def vocabulary_key(self) -> Any:
        """What two tokenizers share when they split text into the same ids (counts aside):
        a folder prepared with one feeds a model trained with the other."""
        d = self.to_dict()
        d.pop("counts", None)
        d.pop("source", None)
        return d

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

    def unknown_words(self, text: str) -> list[str]:
        """Pieces of ``text`` that would become ``<unk>``: none for a kind that spells any text
        (bpe, byte); word and hf say otherwise."""
        return []

    def to_dict(self) -> dict[str, Any]:
        """The JSON the tokenizer is saved as: the header every kind shares, then its own
        fields (:meth:`_fields`); :mod:`gpt_study.data.tokenizer.load` reads it back."""
        header = {"kind": self.kind, "format": FORMAT_VERSION, "lowercase": self.lowercase}
        return header | self._fields()

    @abstractmethod
    def _fields(self) -> dict[str, Any]:
        """What this kind saves beside the shared header: its specials and its vocabulary."""

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON, atomically."""
        write_json_atomic(path, self.to_dict())


def shared_marker(sot: int, eot: int) -> int | None:
    """The id that plays both ``<sot>`` and ``<eot>`` (GPT-2's ``<|endoftext|>``), else None: a
    stream of stories holds it once between them (:func:`join_stories`)."""
    return sot if sot == eot else None


def join_stories(ids: np.ndarray, marker: int | None, last: int | None = None) -> np.ndarray:
    """Stories one after another, each stored ``<sot> ... <eot>``, as a stream: where one token
    plays both (``marker``), once between stories, the stream a model like GPT-2 was trained on
    and ``evaluate --hf`` reads, so an imported model's folder scores as the published model does.
    ``last``: the token before ``ids`` in the stream (a file written batch by batch). A story
    never holds the marker inside it (typed in a text it is text), so a marker right after a
    marker is a story's start doubling the previous story's end."""
    if marker is None or len(ids) == 0:
        return ids
    before = np.concatenate(([-1 if last is None else last], ids[:-1]))  # (n,)
    return ids[~((ids == marker) & (before == marker))]


class LibraryTokenizer(Tokenizer):
    """A kind held by the ``tokenizers`` library (``tok``): the one way to encode with it, without
    the library's own special tokens (the markers are this interface's, :meth:`wrap`)."""

    tok: Any  # a tokenizers.Tokenizer

    def encode(self, text: str, sot: bool = False, eot: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return self.wrap(ids, sot, eot)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of many texts at once (the library spreads them over all cores)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]
