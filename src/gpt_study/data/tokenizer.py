"""Tokenizers: one interface, two kinds (``word``: the study's spaCy vocabulary; ``bpe``).

Both are saved as one JSON file and read back by :func:`load_tokenizer`.
Ids 0, 1, 2 are always ``<unk>``, ``<sot>``, ``<eot>``.

``word`` splits text with spaCy's rule-based English tokenizer (``spacy.blank("en")``, no model
download), as the study did, and maps each piece to its id in a frequency-ranked vocabulary.
spaCy splits text at spaces first and then tokenizes each space-free chunk on its own, so we
cache the pieces of every chunk: running text repeats its chunks ("the", "said,") so often that
most of spaCy's work is skipped (tests check the result equals spaCy on whole stories).

``bpe`` is a byte-level BPE from the ``tokenizers`` library: lossless and never ``<unk>``.
"""

from __future__ import annotations

import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Mapping
from functools import lru_cache
from itertools import chain, islice
from pathlib import Path
from typing import Any

import numpy as np

from gpt_study.config import EOT_ID, SOT_ID, SPECIALS, UNK_ID
from gpt_study.errors import UserError
from gpt_study.io import write_json_atomic

FORMAT_VERSION = 1


class Tokenizer(ABC):
    """What every stage after ``prepare`` may rely on.

    ``encode`` takes text that already went through :func:`gpt_study.data.clean.clean_text`.
    """

    kind: str  # "word" or "bpe"
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
        """Pieces of ``text`` that would become ``<unk>`` (always empty for bpe)."""

    @abstractmethod
    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer as JSON, atomically."""


# ---------------------------------------------------------------------------- word (spaCy)


def _import_spacy() -> Any:
    """``import spacy``, without letting thinc (under spaCy) import torch when torch is not loaded.

    thinc imports torch only to offer torch-backed layers; the tokenizer needs none of them, and
    torch would add ~2 s to every ``gpt-study prepare`` and every worker start. A later
    ``import torch`` works as usual.
    """
    if "spacy" in sys.modules or "torch" in sys.modules:
        import spacy

        return spacy
    sys.modules["torch"] = None  # type: ignore[assignment]  # makes `import torch` fail fast
    try:
        import spacy
    finally:
        del sys.modules["torch"]
    return spacy


@lru_cache(maxsize=1)
def spacy_tokenizer() -> Any:
    """spaCy's English rule-based tokenizer, with the specials kept whole (``<eot>``, not
    ``<``, ``eot``, ``>``)."""
    spacy = _import_spacy()
    from spacy.symbols import ORTH

    tok = spacy.blank("en").tokenizer
    for s in SPECIALS:
        tok.add_special_case(s, [{ORTH: s}])
    return tok


def split_chunks(chunks: list[str]) -> list[list[str]]:
    """spaCy's pieces of each space-free chunk, from one spaCy call for the whole list.

    Joining the chunks with single spaces and cutting spaCy's output at the tokens followed by a
    space gives what tokenizing each chunk alone would: spaCy only looks inside a chunk.
    """
    if not chunks:
        return []
    doc = spacy_tokenizer()(" ".join(chunks))
    out: list[list[str]] = []
    cur: list[str] = []
    for t in doc:
        cur.append(t.text)
        if t.whitespace_:
            out.append(cur)
            cur = []
    out.append(cur)
    if len(out) != len(chunks):  # a chunk holding whitespace: fall back to one call per chunk
        return [[t.text for t in spacy_tokenizer()(c)] for c in chunks]
    return out


class ChunkTable:
    """Space-free chunk -> its token ids, as flat numpy arrays, for encoding in bulk.

    Encoding a batch is then one dict lookup per chunk (to a chunk number) and a few numpy
    operations that expand chunk numbers into ids, instead of a Python step per token. The arrays
    grow by doubling, so adding chunks costs amortized constant time.
    """

    def __init__(self, initial: dict[str, list[int]] | None = None) -> None:
        self.initial = dict(initial or {})
        self.clear()

    def clear(self) -> None:
        """Forget every chunk except the initial ones (bounds memory on huge corpora)."""
        self.index: dict[str, int] = {}  # chunk -> chunk number
        self.start = np.zeros(1024, dtype=np.int64)  # chunk number -> first slot in ids
        self.count = np.zeros(1024, dtype=np.int64)  # chunk number -> how many ids
        self.ids = np.zeros(4096, dtype=np.uint32)
        self.used = 0  # slots of ids in use
        self.add(list(self.initial), list(self.initial.values()))

    @staticmethod
    def _fit(a: np.ndarray, size: int) -> np.ndarray:
        return a if size <= len(a) else np.resize(a, max(size, 2 * len(a)))

    def add(self, chunks: list[str], ids: list[list[int]]) -> None:
        if not chunks:
            return
        n, k = len(self.index), len(chunks)
        counts = np.array([len(p) for p in ids], dtype=np.int64)
        total = int(counts.sum())
        self.start, self.count = self._fit(self.start, n + k), self._fit(self.count, n + k)
        self.ids = self._fit(self.ids, self.used + total)
        self.start[n : n + k] = self.used + np.cumsum(counts) - counts
        self.count[n : n + k] = counts
        self.ids[self.used : self.used + total] = np.fromiter(
            chain.from_iterable(ids), dtype=np.uint32, count=total
        )
        self.used += total
        self.index.update(zip(chunks, range(n, n + k), strict=True))

    def gather(self, chunks: list[str]) -> np.ndarray:
        """The ids of ``chunks`` (all in the table), concatenated (uint32)."""
        if not chunks:
            return np.zeros(0, dtype=np.uint32)
        nums = np.fromiter(map(self.index.__getitem__, chunks), dtype=np.int64, count=len(chunks))
        counts = self.count[nums]
        ends = np.cumsum(counts)
        # slot of output position j: its chunk's first slot + (j - where that chunk's output starts)
        offset = np.repeat(self.start[nums] - (ends - counts), counts)
        return self.ids[np.arange(int(ends[-1])) + offset]


class ChunkSplitter:
    """Splits cleaned text into spaCy word pieces, caching the pieces of each chunk.

    ``max_cache`` bounds memory on huge corpora: the cache is emptied when it grows past it.
    """

    def __init__(self, max_cache: int = 2_000_000) -> None:
        self.cache: dict[str, tuple[str, ...]] = {}
        self.max_cache = max_cache

    def lookup_many(self, chunks: list[str]) -> None:
        """Make sure every chunk of ``chunks`` is in the cache (one spaCy call for the misses)."""
        cache = self.cache
        misses = list(dict.fromkeys(c for c in chunks if c not in cache))
        if not misses:
            return
        if len(cache) + len(misses) > self.max_cache:
            cache.clear()
        for c, pieces in zip(misses, split_chunks(misses), strict=True):
            cache[c] = tuple(pieces)

    def split(self, text: str) -> list[str]:
        chunks = text.split()
        self.lookup_many(chunks)
        cache = self.cache
        out: list[str] = []
        for c in chunks:
            out.extend(cache[c])
        return out


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
        return ([SOT_ID] if sot else []) + ids + ([EOT_ID] if eot else [])

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

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "kind": self.kind,
            "format": FORMAT_VERSION,
            "lowercase": self.lowercase,
            "specials": list(SPECIALS),
            "vocab": self.vocab,
        }
        if self.counts is not None:
            d["counts"] = self.counts  # training-split frequency of each entry, for study
        return d

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())


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


# ------------------------------------------------------------------------------- bpe


class BPETokenizer(Tokenizer):
    """Byte-level BPE (the ``tokenizers`` library): ``decode(encode(text)) == text`` always.

    Unlike ``word``, a special's name inside a text is encoded as ordinary bytes.
    """

    kind = "bpe"

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

    def encode(self, text: str, sot: bool = False, eot: bool = False) -> list[int]:
        ids = self.tok.encode(text, add_special_tokens=False).ids
        return ([SOT_ID] if sot else []) + ids + ([EOT_ID] if eot else [])

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Ids of many texts at once (the library spreads them over all cores)."""
        return [e.ids for e in self.tok.encode_batch(texts, add_special_tokens=False)]

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

    def unknown_words(self, text: str) -> list[str]:
        return []

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "format": FORMAT_VERSION,
            "lowercase": self.lowercase,
            "specials": list(SPECIALS),
            "tokenizer": json.loads(self.tok.to_str()),
        }

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, self.to_dict())


def train_bpe(
    texts: Iterable[str] | Iterator[str], vocab_size: int, lowercase: bool, min_freq: int = 2
) -> BPETokenizer:
    """Train a byte-level BPE of ``vocab_size`` entries (specials included) on cleaned texts."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

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


# ------------------------------------------------------------------------------- loading


def tokenizer_from_dict(d: dict[str, Any], where: str = "tokenizer") -> Tokenizer:
    kind = d.get("kind")
    if d.get("format", FORMAT_VERSION) > FORMAT_VERSION:
        raise UserError(f"{where} was written by a newer gpt-study: upgrade gpt-study")
    if kind == "word":
        return WordTokenizer(
            d["vocab"], lowercase=bool(d.get("lowercase", True)), counts=d.get("counts")
        )
    if kind == "bpe":
        from tokenizers import Tokenizer as HFTokenizer

        tok = HFTokenizer.from_str(json.dumps(d["tokenizer"]))
        return BPETokenizer(tok, lowercase=bool(d.get("lowercase", False)))
    raise UserError(
        f"{where} has unknown tokenizer kind {kind!r}: rebuild it with gpt-study prepare"
    )


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Read a tokenizer JSON written by ``Tokenizer.save`` (either kind)."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no tokenizer at {path}: run `gpt-study prepare` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise UserError(f"{path} is damaged (not JSON): redo `gpt-study prepare --force`") from None
    if not isinstance(d, dict) or "kind" not in d:
        raise UserError(f"{path} is not a gpt-study tokenizer: redo `gpt-study prepare --force`")
    return tokenizer_from_dict(d, str(path))
