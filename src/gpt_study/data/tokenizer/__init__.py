"""Tokenizers: one interface, four kinds (``word``: the study's spaCy vocabulary; ``bpe``;
``byte``; ``hf``: a published model's own, brought in by ``gpt-study import``).

Both are saved as one JSON file and read back by :func:`load_tokenizer`.
Ids 0, 1, 2 are ``<unk>``, ``<sot>``, ``<eot>`` in gpt-study's own kinds; an ``hf`` tokenizer says
which of its ids play those roles (:mod:`.base`, :mod:`.imported`).

``word`` splits text with spaCy's rule-based English tokenizer (``spacy.blank("en")``, no model
download), as the study did, and maps each piece to its id in a frequency-ranked vocabulary.
spaCy splits text at spaces first and then tokenizes each space-free chunk on its own, so we
cache the pieces of every chunk: running text repeats its chunks ("the", "said,") so often that
most of spaCy's work is skipped (tests check the result equals spaCy on whole stories).

``bpe`` is a byte-level BPE from the ``tokenizers`` library: lossless and never ``<unk>``.

``byte`` is the 256 byte values of UTF-8 text (ids 3 to 258): lossless too, with nothing to
learn, the baseline a learned vocabulary is measured against.

The modules, in import order (each imports only those before it):

- :mod:`.base`: the :class:`Tokenizer` interface every later stage relies on, the format
  version of the saved JSON, and ``LibraryTokenizer``: the encode of the kinds the ``tokenizers``
  library holds (``bpe``, ``hf``).
- :mod:`.chunks`: spaCy access and the per-chunk caches (:class:`ChunkSplitter` for pieces,
  :class:`ChunkTable` for ids in bulk), shared by both kinds.
- :mod:`.word`: the ``word`` kind (:class:`WordTokenizer`, :func:`build_word_vocab`) and
  :func:`detokenize`, which turns its pieces back into readable text.
- :mod:`.bpe`: the ``bpe`` kind (:class:`BPETokenizer`, :func:`train_bpe`).
- :mod:`.byte`: the ``byte`` kind (:class:`ByteTokenizer`).
- :mod:`.imported`: the ``hf`` kind (:class:`ImportedTokenizer`): a published model's
  ``tokenizer.json`` and the ids that play the special roles.
- :mod:`.load`: reading a saved tokenizer of any kind back (:func:`load_tokenizer`).

``from gpt_study.data.tokenizer import X`` works for every public name.
"""

from gpt_study.data.tokenizer.base import FORMAT_VERSION, Tokenizer
from gpt_study.data.tokenizer.bpe import BPETokenizer, train_bpe
from gpt_study.data.tokenizer.byte import BYTE_VOCAB, ByteTokenizer
from gpt_study.data.tokenizer.chunks import ChunkSplitter, ChunkTable, spacy_tokenizer, split_chunks
from gpt_study.data.tokenizer.imported import ImportedTokenizer
from gpt_study.data.tokenizer.load import KINDS, LOSSLESS, load_tokenizer, tokenizer_from_dict
from gpt_study.data.tokenizer.word import WordTokenizer, build_word_vocab, detokenize

__all__ = [
    "FORMAT_VERSION",
    "BYTE_VOCAB",
    "BPETokenizer",
    "ByteTokenizer",
    "ChunkSplitter",
    "ChunkTable",
    "ImportedTokenizer",
    "KINDS",
    "LOSSLESS",
    "Tokenizer",
    "WordTokenizer",
    "build_word_vocab",
    "detokenize",
    "load_tokenizer",
    "spacy_tokenizer",
    "split_chunks",
    "tokenizer_from_dict",
    "train_bpe",
]
