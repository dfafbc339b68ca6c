"""The ``hf`` tokenizer: a published model's own ``tokenizer.json``, read by the ``tokenizers``
library, behind gpt-study's interface (``gpt-study import`` writes it; nothing is learned).

gpt-study's own kinds put ``<unk>`` ``<sot>`` ``<eot>`` at ids 0, 1, 2. A published vocabulary has
its own: this kind records which of its ids play each role, and every stage reads them from the
tokenizer (``sot_id``, ``eot_id``, ``unk_id``, ``special_ids``: :class:`~.base.Tokenizer`), never
the constants. ``<sot>`` is the model's beginning-of-sequence token, or its end-of-sequence token
where it has none: GPT-2's ``<|endoftext|>`` plays both, so a prepared story is
``<|endoftext|> ... <|endoftext|>``; ``<eot>`` is its end-of-sequence token; ``unk_id`` is None for
a vocabulary that has no unknown token (a byte-level BPE never needs one).

As with ``bpe``, a special's name typed in a text is text: ids of specials come only from
``sot=`` / ``eot=``. The library's post-processor (which would add a model's ``<s>`` itself) is
not used: ``encode`` adds the roles as every gpt-study kind does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np
from tokenizers import Tokenizer as LibTokenizer

from gpt_study.data.tokenizer.base import LibraryTokenizer
from gpt_study.runtime.errors import UserError

__all__ = ["ImportedTokenizer", "published_roles"]


def published_roles(hf_tok: Any, hf_cfg: Any = None) -> tuple[int, int, int | None]:
    """(start, end, unk) of a story for a published model: the one reading of a transformers
    model's special tokens, for ``import`` and ``evaluate --hf`` alike. Each id is its
    tokenizer's, else its config's (a list gives its first). A story starts at its bos, or at its
    eos where it has no bos of its own (GPT-2's ``<|endoftext|>`` plays both: :func:`shared_marker
    <gpt_study.data.tokenizer.base.shared_marker>`) and ends at its eos, which it must have. An
    unk that is also bos or eos is none: GPT-2 names ``<|endoftext|>`` its unknown token too, which
    it never stands for."""

    def role(name: str) -> int | None:
        i = getattr(hf_tok, f"{name}_token_id", None)
        if i is None:
            i = getattr(hf_cfg, f"{name}_token_id", None)
        if isinstance(i, (list, tuple)):
            i = i[0] if i else None
        return int(i) if i is not None else None

    bos, eos, unk = role("bos"), role("eos"), role("unk")
    if eos is None:
        raise UserError(
            "the model's tokenizer names no end-of-sequence token, which ends a story: "
            "use a model whose tokenizer or config sets eos_token_id"
        )
    return (eos if bos is None else bos), eos, (None if unk in (bos, eos) else unk)


class ImportedTokenizer(LibraryTokenizer):
    """A ``tokenizers`` tokenizer and the ids that play ``<sot>``, ``<eot>`` and ``<unk>``."""

    kind = "hf"
    lossless = False  # a published tokenizer's normalizer may change the text: not assumed

    def __init__(
        self,
        tok: Any,
        sot_id: int,
        eot_id: int,
        unk_id: int | None,
        vocab_size: int | None = None,
        source: str = "",
    ) -> None:
        self.tok = tok
        tok.encode_special_tokens = True  # "<|endoftext|>" typed in a text is text
        tok.no_padding()
        tok.no_truncation()
        self.lowercase = False  # the tokenizer's own normalizer does what the model expects
        self.source = source
        n = tok.get_vocab_size(with_added_tokens=True)
        # A model may have more embedding rows than its tokenizer has entries (padded to a
        # multiple of 64, say): ids beyond never come out of encode.
        self._size = vocab_size or n
        if self._size < n:
            raise UserError(f"the tokenizer has {n} entries but the model only {self._size} rows")
        for role, i in (("<sot>", sot_id), ("<eot>", eot_id), ("<unk>", unk_id)):
            if i is not None and not 0 <= i < n:
                raise UserError(f"the id of {role}, {i}, is outside the tokenizer's {n} entries")
        self.sot_id, self.eot_id, self.unk_id = sot_id, eot_id, unk_id

    @property
    def vocab_size(self) -> int:
        return self._size

    def encode_stories(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts each encoded as ``<sot> ... <eot>``, concatenated (uint16), and each story's
        length. Whole texts, not word by word as ``bpe`` does: a published tokenizer's
        normalizer or pre-tokenizer may join what spaces separate."""
        rows = [[self.sot_id, *ids, self.eot_id] for ids in self.encode_batch(texts)]
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        flat = np.fromiter((i for r in rows for i in r), dtype=np.uint16, count=int(lengths.sum()))
        return flat, lengths

    def encode_words(self, stories: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        return self.encode_stories([" ".join(words) for words in stories])

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        n = self.tok.get_vocab_size(with_added_tokens=True)
        return self.tok.decode(
            [int(i) for i in ids if int(i) < n], skip_special_tokens=skip_specials
        )

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i) or f"<id {i}>"  # None: a padding row of the model

    def unknown_words(self, text: str) -> list[str]:
        if self.unk_id is None:
            return []
        enc = self.tok.encode(text, add_special_tokens=False)
        return [
            text[a:b] for i, (a, b) in zip(enc.ids, enc.offsets, strict=True) if i == self.unk_id
        ]

    def _fields(self) -> dict[str, Any]:
        return {
            "specials": {"<sot>": self.sot_id, "<eot>": self.eot_id, "<unk>": self.unk_id},
            "vocab_size": self._size,
            "source": self.source,
            "tokenizer": json.loads(self.tok.to_str()),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImportedTokenizer:
        tok = LibTokenizer.from_str(json.dumps(d["tokenizer"]))
        s = d["specials"]
        return cls(tok, s["<sot>"], s["<eot>"], s["<unk>"], d["vocab_size"], d.get("source", ""))
