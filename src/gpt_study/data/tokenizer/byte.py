"""The ``byte`` tokenizer: the 256 byte values of UTF-8 text, after the three specials.

Id ``3 + b`` is byte ``b``, so there are 259 ids and nothing to learn: ``prepare`` encodes the
corpus straight away, every text is representable (never ``<unk>``), and ``decode`` gives the
text back exactly. It is the baseline that shows what a learned vocabulary buys: a story is about
four times as many tokens as under a 4096-entry BPE, so the model sees less of it per window.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from gpt_study.config import BYTE_VOCAB, EOT_ID, SOT_ID, SPECIALS
from gpt_study.data.tokenizer.base import Tokenizer

OFFSET = len(SPECIALS)  # id of byte 0


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate ("\ud800", which str allows) still round-trips.
    return text.encode("utf-8", errors="surrogatepass")


def _text(data: bytes) -> str:
    """Text of UTF-8 bytes; a model's output can be malformed UTF-8: shown as U+FFFD, not an error."""
    try:
        return data.decode("utf-8", errors="surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace")


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids ``3 .. 258``: ``decode(encode(text)) == text`` for every text.

    As with ``bpe``, a special's name inside a text ("<sot>") is encoded as its bytes: ids 1 and
    2 only come from ``sot=`` / ``eot=``.
    """

    kind = "byte"
    lossless = True

    def __init__(self, lowercase: bool = False) -> None:
        self.lowercase = lowercase

    @property
    def vocab_size(self) -> int:
        return BYTE_VOCAB

    def encode(self, text: str, sot: bool = False, eot: bool = False) -> list[int]:
        ids = (np.frombuffer(_utf8(text), dtype=np.uint8).astype(np.int64) + OFFSET).tolist()
        return self.wrap(ids, sot, eot)

    def encode_stories(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Texts each encoded as ``<sot> ... <eot>``, concatenated (uint16), and each story's
        length: one ``bytes.join`` and a few numpy operations for a whole batch."""
        data = [_utf8(t) for t in texts]
        nbytes = np.fromiter(map(len, data), dtype=np.int64, count=len(data))
        lengths = nbytes + 2
        ends = np.cumsum(lengths)  # one past each story's <eot>
        ids = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint16)
        ids[ends - lengths] = SOT_ID
        ids[ends - 1] = EOT_ID
        flat = np.frombuffer(b"".join(data), dtype=np.uint8)
        # byte j of the batch sits after one <sot> and <sot>/<eot> pairs of the stories before it
        story = np.repeat(np.arange(len(data)), nbytes)
        ids[np.arange(len(flat)) + 2 * story + 1] = flat.astype(np.uint16) + OFFSET
        return ids, lengths

    def encode_words(self, stories: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`encode_stories` of texts given as their space-separated words (what
        ``prepare``'s workers hold)."""
        return self.encode_stories([" ".join(words) for words in stories])

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        arr = np.fromiter((int(i) for i in ids), dtype=np.int64)
        special = np.flatnonzero(arr < OFFSET)
        if skip_specials or not len(special):
            return _text((arr[arr >= OFFSET] - OFFSET).astype(np.uint8).tobytes())
        # the bytes between two specials are decoded together: a character spans several bytes
        out: list[str] = []
        start = 0
        for k in special.tolist():
            out += [_text((arr[start:k] - OFFSET).astype(np.uint8).tobytes()), SPECIALS[arr[k]]]
            start = k + 1
        out.append(_text((arr[start:] - OFFSET).astype(np.uint8).tobytes()))
        return "".join(out)

    def id_to_token(self, i: int) -> str:
        """A special's name, a printable ASCII byte as itself, any other byte as ``<0xNN>``."""
        if i < OFFSET:
            return SPECIALS[i]
        b = i - OFFSET
        return chr(b) if 0x21 <= b < 0x7F else f"<0x{b:02X}>"

    def _fields(self) -> dict[str, Any]:
        return {
            "specials": list(SPECIALS),
        }
