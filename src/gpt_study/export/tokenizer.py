"""The checkpoint's tokenizer as a ``tokenizers`` JSON that ``AutoTokenizer`` loads.

``bpe`` is already a ``tokenizers`` byte-level BPE: it is written as it is (same merges, same
specials at ids 0, 1, 2), so its ids are exact. ``word`` is the study's spaCy vocabulary, and
spaCy's tokenizer is a program, not a table: it strips prefixes and suffixes off each
space-free chunk, consults some 1,300 exceptions ("cannot" -> "can" "not") and splits infixes
("ice-cream" -> "ice" "-" "cream"). Here that becomes the nearest ``tokenizers`` pipeline
(:func:`word_pre_tokenizer`): a split at spaces, then regular expressions for, in order,
spaCy's exceptions, prefixes, contractions (``n't 's 'm 're 've 'll 'd``), suffixes and infixes,
with the affix characters read from spaCy's own rules at export time; a ``WordLevel`` model
with ``<unk>``; lowercasing when the vocabulary is lowercased. It is not exact (spaCy strips
affixes one at a time and looks up exceptions in between, which a regex pass cannot follow in
every case), so :func:`exact_share` measures on held-out stories how often its ids equal
spaCy's: 99.8% of the shared sample's valid stories.

Both kinds get the same normalizer (whitespace runs to one space, ends stripped, lowercasing for a
lowercased corpus: :func:`~gpt_study.data.clean.clean_text` without ftfy) and a post-processor
that puts ``<sot>`` first, as every gpt-study prompt starts. On cleaned text the normalizer
changes nothing, so ``tok(text, add_special_tokens=False)`` equals gpt-study's
``encode(text)`` and ``tok(text)`` equals ``encode(text, sot=True)``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

from gpt_study.config import SOT_ID, SPECIALS
from gpt_study.data.tokenizer import (
    BPETokenizer,
    ImportedTokenizer,
    Tokenizer,
    WordTokenizer,
    spacy_tokenizer,
)
from gpt_study.runtime.errors import UserError

__all__ = ["exact_share", "hf_tokenizer", "tokenizer_config", "word_pre_tokenizer"]

# Characters whose role spaCy's affix rules are asked about: ASCII punctuation and the quotes,
# dashes, brackets and currency signs of English text.
_CANDIDATES = sorted(set(string.punctuation) | set("‘’‚“”„«»‹›´`…–—¡¿§°€£¥¢"))
# spaCy exceptions worth a rule: words with apostrophes or periods ("cannot", "c'mon", "a.m."),
# not emoticons or times ("10a.m."), which TinyStories does not write.
_WORDLIKE = re.compile(r"[^\W\d_]+(?:['’.][^\W\d_]*)*|['’][^\W\d_]+")
_CONTRACTIONS = ("n't", "n’t", "'s", "’s", "'m", "'re", "'ve", "'ll", "'d")


def _x(s: str) -> str:
    """``s`` as an Oniguruma literal: letters and digits as they are, every other character as
    ``\\x{HHHH}`` (no escaping rule of either regex dialect to get wrong)."""
    return "".join(c if c.isalnum() and c.isascii() else f"\\x{{{ord(c):04X}}}" for c in s)


def _chars(chars: Iterable[str]) -> str:
    """The inside of a character class holding ``chars``."""
    return "".join(_x(c) for c in sorted(chars))


def _affixes(tok: Any) -> tuple[set[str], set[str], set[str], set[str]]:
    """(prefix, suffix, suffix only after a lowercase letter, infix between letters) characters,
    as spaCy's rules treat each candidate next to the word ``hi``."""

    def whole(search: Any, text: str, c: str) -> bool:
        m = search(text) if search is not None else None
        return m is not None and m.group() == c

    prefix = {c for c in _CANDIDATES if whole(tok.prefix_search, c + "hi", c)}
    suffix = {c for c in _CANDIDATES if whole(tok.suffix_search, "hi" + c, c)}
    lower_only = {c for c in suffix if not whole(tok.suffix_search, "HI" + c, c)}
    infix = {
        c for c in _CANDIDATES if [m.group() for m in tok.infix_finditer("hi" + c + "ho")] == [c]
    }
    return prefix, suffix, lower_only, infix


@dataclass(frozen=True)
class _Rules:
    """The parts of the ``word`` pattern that its alternatives share."""

    not_prefix: str  # a character class: anything that is not a prefix
    suffixes: str  # nothing but suffixes up to the chunk's end
    prefixes: str  # one prefix unit
    base: list[str]  # prefix run, contractions, suffixes, infixes, ellipses


def _rules(tok: Any) -> _Rules:
    prefix, suffix, lower_only, infix = _affixes(tok)
    dots = r"\.{2,}|\x{2026}"  # an ellipsis is one piece wherever it stands
    unit = f"{dots}|[{_chars(suffix - lower_only)}]"
    if lower_only:  # "." ends "hi." and "5." and '"hi".', not "U." (spaCy's rule)
        unit += f"|(?<=[\\p{{Ll}}\\d{_chars(suffix)}])[{_chars(lower_only)}]"
    suffixes = f"(?:{unit})*\\z"
    prefixes = f"{dots}|[{_chars(prefix)}]"
    contractions = "|".join(_x(c) for c in _CONTRACTIONS)
    hyphens = "|".join(_x(h) for h in ("---", "--", "-"))
    base = [
        f"\\A(?:{prefixes})+",  # the chunk's leading run of prefixes; cut in the last stage
        f"(?:{contractions})(?={suffixes})",
        f"(?:{unit})(?={suffixes})",
        f"(?<=[\\p{{L}}\\d])(?:{hyphens}|[{_chars(infix - {'-'})}])(?=\\p{{L}})",
        dots,
    ]
    return _Rules(f"[^{_chars(prefix)}]", suffixes, prefixes, base)


def _stage(alternatives: list[str]) -> Any:
    return pre_tokenizers.Split(Regex("|".join(alternatives)), "isolated")


def _exceptions(
    tok: Any, base: list[str], lowercase: bool, vocab: Collection[str]
) -> dict[str, list[str]]:
    """spaCy's exceptions that the base rules split otherwise and that hold a word of the
    vocabulary (the others never occurred in training, and each costs regex time): key ->
    pieces."""
    pre = pre_tokenizers.Sequence([_stage(base), _stage([f"\\G(?:{_rules(tok).prefixes})"])])
    out: dict[str, list[str]] = {}
    for key in tok.rules:
        if not _WORDLIKE.fullmatch(key) or (lowercase and key != key.lower()):
            continue
        want = [t.text for t in tok(key)]
        if any(p in vocab for p in want) and [p for p, _ in pre.pre_tokenize_str(key)] != want:
            out[key] = want
    return out


def word_pre_tokenizer(lowercase: bool, vocab: Collection[str]) -> Any:
    """The ``word`` pipeline's pre-tokenizer: spaces, then affixes, then exceptions.

    The second stage keeps each exception whole where spaCy would look it up (after the chunk's
    start or a prefix, before nothing but suffixes) while it cuts the affixes off; the third
    cuts the exceptions, and runs of prefixes, into their pieces.
    """
    tok = spacy_tokenizer()
    rules = _rules(tok)
    exceptions = _exceptions(tok, rules.base, lowercase, vocab)
    keys = sorted(exceptions, key=lambda k: (-len(k), k))  # longest first
    whole = f"(?<!{rules.not_prefix})(?:{'|'.join(_x(k) for k in keys)})(?={rules.suffixes})"
    # Every alternative of the last stage starts where the previous match ended (\G), so the
    # engine tries one place per piece, not every position; a key's last piece is what is left.
    cut = []
    for key in keys:
        pieces, done = exceptions[key], ""
        for i, piece in enumerate(pieces[:-1]):
            before = f"(?<=\\A{_x(done)})" if done else ""
            cut.append(f"{before}{_x(piece)}(?={_x(''.join(pieces[i + 1 :]))}\\z)")
            done += piece
    prefix_run = f"(?:{rules.prefixes})(?=(?:{rules.prefixes})*\\z)"
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.WhitespaceSplit(),
            _stage([whole, *rules.base] if keys else rules.base),
            _stage([f"\\G(?:{'|'.join([*cut, prefix_run])})"]),
        ]
    )


def _normalizer(lowercase: bool) -> Any:
    """clean_text without ftfy: whitespace runs to one space, no space at the ends, lowercase."""
    steps = [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip()]
    return normalizers.Sequence(steps + ([normalizers.Lowercase()] if lowercase else []))


# Word pieces that attach to the piece before them / after them when decoding (see detokenize).
_GLUE_LEFT = (".", ",", "!", "?", ";", ":", "...", "%", ")", "]", "}", *_CONTRACTIONS)
_GLUE_RIGHT = ("(", "[", "{", "$", "#")
_NO_SPACE = "\x01"  # marks a glue-right piece: the space after it goes
_SPACE = "\x02"  # marks a space before a piece until the pieces are one string


def _word_decoder() -> Any:
    """Readable text from word pieces, statelessly: a space before each piece except the
    glue-left ones and after a glue-right one. (gpt-study's detokenize also pairs quotes, which
    a ``tokenizers`` decoder cannot do.)"""
    left = "|".join(_x(p) for p in _GLUE_LEFT)
    right = "|".join(_x(p) for p in _GLUE_RIGHT)
    return decoders.Sequence(
        [
            decoders.Replace(Regex(f"(?<=\\A(?:{right}))\\z"), _NO_SPACE),  # "(" -> "(\x01"
            decoders.Replace(Regex(f"\\A(?!(?:{left})\\z)"), _SPACE),  # "hi" -> " hi"
            decoders.Fuse(),  # one string: a mark can now meet the next piece's space
            decoders.Replace(_NO_SPACE + _SPACE, ""),
            decoders.Replace(_NO_SPACE, ""),
            decoders.Replace(_SPACE, " "),
            decoders.Strip(" ", 1, 0),  # no space before the first piece
        ]
    )


def hf_tokenizer(tokenizer: Tokenizer) -> HFTokenizer:
    """The ``tokenizers`` object of a gpt-study tokenizer (``bpe`` and ``hf`` exact, ``word``
    nearest)."""
    if isinstance(tokenizer, ImportedTokenizer):
        # an imported model's own, as it came (its normalizer, its ids), <sot> put first
        tok = HFTokenizer.from_str(tokenizer.tok.to_str())
        sot = tok.id_to_token(tokenizer.sot_id)
        tok.post_processor = processors.TemplateProcessing(
            single=f"{sot} $A", special_tokens=[(sot, tokenizer.sot_id)]
        )
        return tok
    if isinstance(tokenizer, BPETokenizer):
        tok = HFTokenizer.from_str(tokenizer.tok.to_str())
    elif isinstance(tokenizer, WordTokenizer):
        vocab = {w: i for i, w in enumerate(tokenizer.vocab)}
        tok = HFTokenizer(models.WordLevel(vocab, unk_token=SPECIALS[0]))
        tok.pre_tokenizer = word_pre_tokenizer(tokenizer.lowercase, vocab)
        tok.decoder = _word_decoder()
    else:
        raise UserError(f"no export for a {tokenizer.kind!r} tokenizer yet: bpe and word only")
    tok.normalizer = _normalizer(tokenizer.lowercase)
    tok.add_special_tokens(list(SPECIALS))
    for i, s in enumerate(SPECIALS):
        if tok.token_to_id(s) != i:
            raise UserError(f"the tokenizer lacks {s} as id {i}: rebuild it with prepare")
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[SOT_ID]} $A", special_tokens=[(SPECIALS[SOT_ID], SOT_ID)]
    )
    return tok


def tokenizer_config(tokenizer: Tokenizer, max_len: int) -> dict[str, Any]:
    """``tokenizer_config.json``: the specials by role; for ``bpe``, a special's name typed in a
    text is plain text, as in gpt-study (``split_special_tokens``). An imported tokenizer's roles
    are its own tokens."""
    unk, sot, eot = SPECIALS
    if isinstance(tokenizer, ImportedTokenizer):
        name = tokenizer.tok.id_to_token
        sot, eot = name(tokenizer.sot_id), name(tokenizer.eot_id)
        unk = None if tokenizer.unk_id is None else name(tokenizer.unk_id)
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": sot,
        "eos_token": eot,
        "unk_token": unk,
        "pad_token": eot,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": tokenizer.kind in ("bpe", "hf"),
    }


def exact_share(tokenizer: Tokenizer, tok: HFTokenizer, texts: list[str]) -> float:
    """Share of ``texts`` (cleaned) whose ids from ``tok`` equal ``tokenizer.encode``."""
    if not texts:
        return float("nan")
    got = tok.encode_batch(texts, add_special_tokens=False)
    same = sum(e.ids == tokenizer.encode(t) for e, t in zip(got, texts, strict=True))
    return same / len(texts)
