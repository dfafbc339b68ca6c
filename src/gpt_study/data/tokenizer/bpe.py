"""The ``bpe`` tokenizer: a byte-level BPE from the ``tokenizers`` library, lossless, never ``<unk>``."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from gpt_study.config import EOT_ID, SOT_ID, SPECIALS
from gpt_study.data.tokenizer.base import LibraryTokenizer
from gpt_study.data.tokenizer.chunks import ChunkTable
from gpt_study.runtime.errors import UserError


class BPETokenizer(LibraryTokenizer):
    """Byte-level BPE (the ``tokenizers`` library): ``decode(encode(text)) == text`` always.

    Unlike ``word``, a special's name inside a text is encoded as ordinary bytes.
    """

    kind = "bpe"
    lossless = True  # byte-level: every byte has a token

    def __init__(self, tok: Any, lowercase: bool = False) -> None:
        self.tok = tok
        # "<sot>" typed in a text is just text: ids 1 and 2 only ever come from sot=/eot=, and
        # decode(encode(text)) == text holds for every text.
        tok.encode_special_tokens = True
        self.lowercase = lowercase
        self._chunks = ChunkTable({"\x02": [EOT_ID]})  # see encode_words
        for i, s in enumerate(SPECIALS):
            if tok.token_to_id(s) != i:
                raise UserError(f"BPE tokenizer lacks {s} as id {i}: rebuild it with prepare")

    @property
    def vocab_size(self) -> int:
        return self.tok.get_vocab_size()

    def encode_stories(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts from :func:`~gpt_study.data.clean.clean_text`, each encoded as
        ``<sot> ... <eot>``, concatenated (uint16), and each story's length: ``prepare``'s hot
        loop, many times faster than calling ``encode`` per text."""
        return self.encode_words([t.split(" ") if t else [] for t in texts])

    def encode_words(self, stories: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode_stories` of texts given as their space-separated words.

        Byte-level BPE (GPT-2's split rule) cuts text before every space, so in cleaned text
        (single spaces, none at the ends) each word encodes on its own: " said," always gives
        the same ids. We keep them per word in a :class:`ChunkTable`, as ``word`` does with
        spaCy's pieces; the library's per-call overhead, not the merging, dominates its encoding
        time. A story's first word has no space before it: it is looked up with a mark glued on.
        """
        table = self._chunks
        if len(table.index) > 2_000_000:  # bound memory on huge corpora
            table.clear()
        # "\x01" and "\x02" never survive clean_text (ftfy drops control characters).
        chunks: list[str] = []
        for words in stories:
            chunks.append("\x01" + words[0] if words else "\x01")
            chunks.extend(islice(words, 1, None))
            chunks.append("\x02")
        misses = sorted(set(chunks).difference(table.index))
        if misses:
            # "\x01Once" -> "Once" (a story's first word), "upon" -> " upon"
            plain = [m[1:] if m[:1] == "\x01" else " " + m for m in misses]
            enc = self.tok.encode_batch(plain, add_special_tokens=False)
            table.add(
                misses,
                [
                    [SOT_ID, *e.ids] if m[:1] == "\x01" else e.ids
                    for m, e in zip(misses, enc, strict=True)
                ],
            )
        ids = table.gather(chunks).astype(np.uint16)
        starts = np.flatnonzero(ids == SOT_ID)  # only story starts: encode_special_tokens is on
        return ids, np.diff(np.append(starts, len(ids)))

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        return self.tok.decode([int(i) for i in ids], skip_special_tokens=skip_specials)

    def id_to_token(self, i: int) -> str:
        return self.tok.id_to_token(i)

    def _fields(self) -> dict[str, Any]:
        return {
            "specials": list(SPECIALS),
            "tokenizer": json.loads(self.tok.to_str()),
        }


def train_bpe(
    texts: Iterable[str] | Iterator[str], vocab_size: int, lowercase: bool, min_freq: int = 2
) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` entries (specials included) on cleaned texts."""
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_freq,
        special_tokens=list(SPECIALS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(tok, lowercase=lowercase)
