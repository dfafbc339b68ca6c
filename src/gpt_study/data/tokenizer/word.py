"""The ``word`` tokenizer: the study's vocabulary of spaCy word pieces, and its way back to text.

Text is split with spaCy's rule-based English tokenizer (``spacy.blank("en")``, no model
download), as the study did, and each piece maps to its id in a frequency-ranked vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from gpt_study.config import SPECIALS, UNK_ID
from gpt_study.data.tokenizer.base import Tokenizer
from gpt_study.data.tokenizer.chunks import ChunkSplitter
from gpt_study.runtime.errors import UserError

# Pieces that attach to the piece before them / the piece after them when decoding `word` ids.
_GLUE_LEFT = {
    ".", ",", "!", "?", ";", ":", "...", "%", ")", "]", "}",
    "n't", "'s", "'m", "'re", "'ve", "'ll", "'d", "-", "--", "/",
}  # fmt: skip
# "-" and "--" join words ("ice-cream"); dashes (–, —) stand between spaces in TinyStories.
_GLUE_RIGHT = {"(", "[", "{", "$", "#", "-", "--", "/"}
# spaCy's exceptions that cut one word in two ("gonna" -> "gon" "na"): (first, second).
_GLUE_PAIRS = {("gon", "na"), ("got", "ta"), ("can", "not")}
_QUOTES = {'"', "'"}


def detokenize(pieces: Iterable[str]) -> str:
    """Join word pieces into readable text: ``could n't`` -> ``couldn't``, ``hi !`` -> ``hi!``.

    Spaces are not stored in the vocabulary, so this follows English typography: punctuation and
    contractions attach to the word before, opening brackets to the word after, hyphens to both,
    and straight quotes alternate between opening and closing. On the shared TinyStories sample
    more than 97% of the stories come back exactly (tests hold it to that).
    """
    out: list[str] = []
    prev = ""
    glue_next = True  # no space before the first piece
    open_quote = {'"': False, "'": False}
    for p in pieces:
        low = p.lower()
        glue = glue_next or low in _GLUE_LEFT or (prev.lower(), low) in _GLUE_PAIRS
        glue_next = low in _GLUE_RIGHT
        if p == "'" and not open_quote[p] and prev.lower().endswith("s"):
            glue = True  # the possessive of a plural: "friends' house"
        elif p in _QUOTES:
            if open_quote[p]:  # a closing quote hugs the text before it
                glue = True
            else:
                glue_next = True
            open_quote[p] = not open_quote[p]
        if not glue:
            out.append(" ")
        out.append(p)
        prev = p
    return "".join(out)


class WordTokenizer(Tokenizer):
    """The study's vocabulary: spaCy word pieces ranked by frequency; unseen words are ``<unk>``."""

    kind = "word"
    lossless = False  # "could n't" for "couldn't", and <unk> for every rare word

    def __init__(
        self, vocab: list[str], lowercase: bool = True, counts: list[int] | None = None
    ) -> None:
        if list(vocab[: len(SPECIALS)]) != list(SPECIALS):
            raise UserError(
                f"a word vocabulary must start with {', '.join(SPECIALS)}: rebuild it with prepare"
            )
        if len(set(vocab)) != len(vocab):
            raise UserError("the word vocabulary has duplicate entries: rebuild it with prepare")
        self.vocab = list(vocab)
        self.lowercase = lowercase
        self.counts = counts
        self.index = {w: i for i, w in enumerate(self.vocab)}
        self.splitter = ChunkSplitter(max_cache=200_000)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def pieces(self, text: str) -> list[str]:
        return self.splitter.split(text.lower() if self.lowercase else text)

    def encode(self, text: str, sot: bool = False, eot: bool = False) -> list[int]:
        get = self.index.get
        ids = [get(p, UNK_ID) for p in self.pieces(text)]
        return self.wrap(ids, sot, eot)

    def decode(self, ids: Iterable[int], skip_specials: bool = True) -> str:
        vocab = self.vocab
        ids = [int(i) for i in ids]
        if skip_specials:
            ids = [i for i in ids if i >= len(SPECIALS)]
        return detokenize(vocab[i] for i in ids)

    def id_to_token(self, i: int) -> str:
        return self.vocab[i]

    def unknown_words(self, text: str) -> list[str]:
        return [p for p in self.pieces(text) if p not in self.index]

    def _fields(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "specials": list(SPECIALS),
            "vocab": self.vocab,
        }
        if self.counts is not None:
            d["counts"] = self.counts  # training-split frequency of each entry, for study
        return d


def build_word_vocab(
    counts: Mapping[str, int], vocab_size: int, min_freq: int
) -> tuple[list[str], list[int]]:
    """The specials, then the most frequent pieces (ties in code-point order) with at least
    ``min_freq`` occurrences, ``vocab_size`` entries at most: (vocab, counts)."""
    ranked = sorted(
        ((w, c) for w, c in counts.items() if c >= min_freq and w not in SPECIALS),
        key=lambda wc: (-wc[1], wc[0]),
    )[: vocab_size - len(SPECIALS)]
    vocab = list(SPECIALS) + [w for w, _ in ranked]
    freq = [int(counts.get(s, 0)) for s in SPECIALS] + [c for _, c in ranked]
    return vocab, freq
