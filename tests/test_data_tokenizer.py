"""The tokenizers against oracles: spaCy itself, known ids, lossless BPE and bytes, JSON round
trips."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gpt_study.data.clean import clean_text
from gpt_study.data.tokenizer import (
    FORMAT_VERSION,
    KINDS,
    LOSSLESS,
    BPETokenizer,
    ByteTokenizer,
    ChunkSplitter,
    ChunkTable,
    ImportedTokenizer,
    Tokenizer,
    WordTokenizer,
    build_word_vocab,
    detokenize,
    load_tokenizer,
    spacy_tokenizer,
    train_bpe,
)
from gpt_study.runtime.errors import UserError

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"

CORPUS = [
    "lily could n't find her cat .",
    "the cat was in the box . lily was happy .",
    'ben said , " the cat is here ! "',
]


def _sample_stories(name: str = "valid.txt", n: int = 400) -> list[str]:
    if not SAMPLE.is_dir():
        pytest.skip("shared TinyStories sample not present")
    text = (SAMPLE / name).read_text(encoding="utf-8")
    return [clean_text(s, True) for s in text.split("\n<|endoftext|>\n")[:n] if s.strip()]


@pytest.fixture(scope="module")
def data_word_tok() -> WordTokenizer:
    counts = Counter(p for line in CORPUS for p in line.split())
    vocab, freq = build_word_vocab(counts, vocab_size=100, min_freq=1)
    return WordTokenizer(vocab, lowercase=True, counts=freq)


def test_word_vocab_is_ranked_by_count_then_code_point():
    counts = {"b": 3, "a": 3, "c": 5, "d": 1, "e": 2}
    vocab, freq = build_word_vocab(counts, vocab_size=6, min_freq=2)
    assert vocab == ["<unk>", "<sot>", "<eot>", "c", "a", "b"]  # e cut by vocab_size, d by min_freq
    assert freq == [0, 0, 0, 5, 3, 3]


def test_word_known_ids_for_a_sentence(data_word_tok):
    tok = data_word_tok
    # counts: . cat the 3; " lily was 2; then the count-1 pieces, each tie in code-point order
    assert tok.vocab[:9] == ["<unk>", "<sot>", "<eot>", ".", "cat", "the", '"', "lily", "was"]
    assert tok.vocab[9:] == ["!", ",", "ben", "box", "could", "find", "happy", "her", "here"] + [
        "in", "is", "n't", "said"
    ]  # fmt: skip
    text = clean_text("Lily couldn't find the dog.", lowercase=True)
    assert tok.pieces(text) == ["lily", "could", "n't", "find", "the", "dog", "."]
    assert tok.encode(text, sot=True, eot=True) == [1, 7, 13, 20, 14, 5, 0, 3, 2]
    assert tok.unknown_words(text) == ["dog"]
    assert tok.decode([1, 7, 13, 20, 14, 5, 0, 3, 2]) == "lily couldn't find the."
    assert tok.decode([7, 13, 20, 14, 5, 0, 3], skip_specials=False) == (
        "lily couldn't find the <unk>."
    )


def test_word_specials_are_never_split(data_word_tok):
    assert data_word_tok.encode("<sot> the cat <eot>") == [1, 5, 4, 2]
    assert data_word_tok.decode([1, 5, 4, 2], skip_specials=False) == "<sot> the cat <eot>"
    assert data_word_tok.decode([1, 5, 4, 2]) == "the cat"


@pytest.mark.parametrize(
    "pieces, text",
    [
        (["could", "n't"], "couldn't"),
        (["she", "said", ",", '"', "hi", "!", '"'], 'she said, "hi!"'),
        (["let", "'s", "go", "(", "now", ")", "..."], "let's go (now)..."),
        (["an", "ice", "-", "cream", "."], "an ice-cream."),
        (["i", "'m", "gon", "na", "win", "."], "i'm gonna win."),
        (["the", "dogs", "'", "ball"], "the dogs' ball"),
        (['"', "a", '"', "and", '"', "b", '"'], '"a" and "b"'),
    ],
)
def test_word_decode_is_readable(pieces, text):
    assert detokenize(pieces) == text


def test_chunk_cache_equals_spacy_on_whole_stories():
    stories = _sample_stories()
    spacy_tok = spacy_tokenizer()
    splitter = ChunkSplitter()
    for s in stories:
        assert splitter.split(s) == [t.text for t in spacy_tok(s)]


def test_word_round_trip_reads_like_the_original():
    stories = _sample_stories(n=1000)
    splitter = ChunkSplitter()
    counts = Counter(p for s in stories for p in splitter.split(s))
    vocab, freq = build_word_vocab(counts, vocab_size=30000, min_freq=1)
    tok = WordTokenizer(vocab, lowercase=True, counts=freq)
    exact = sum(tok.decode(tok.encode(s)) == s for s in stories)
    # 93% measured on valid.txt: the misses are spaced dashes ("lesson - to") read as hyphens,
    # and quotes whose partner was lost to unfixable mojibake
    assert exact / len(stories) > 0.92, exact


def test_word_save_load_round_trip(tmp_path, data_word_tok):
    path = tmp_path / "tokenizer.json"
    data_word_tok.save(path)
    tok = load_tokenizer(path)
    assert isinstance(tok, WordTokenizer)
    assert tok.vocab == data_word_tok.vocab and tok.lowercase and tok.kind == "word"
    assert tok.vocab_size == len(data_word_tok.vocab)
    assert tok.encode("the cat .") == data_word_tok.encode("the cat .")
    assert (tok.unk_id, tok.sot_id, tok.eot_id) == (0, 1, 2)
    assert load_tokenizer(tmp_path).vocab == tok.vocab  # a prepared folder works too


@pytest.fixture(scope="module")
def data_bpe_tok() -> BPETokenizer:
    texts = [clean_text(t, False) for t in CORPUS * 20] + ["Once upon a time, Lily met Ben."] * 5
    return train_bpe(texts, vocab_size=300, lowercase=False)


def test_bpe_is_lossless_and_has_the_specials(data_bpe_tok):
    tok = data_bpe_tok
    assert [tok.id_to_token(i) for i in range(3)] == ["<unk>", "<sot>", "<eot>"]
    assert tok.vocab_size <= 300
    for text in [
        "Once upon a time, Lily met Ben.",
        "Zoë's café — 3½ 🙂 日本",
        "a  b\tc",
        "",
        "<sot>",
    ]:
        ids = tok.encode(text, sot=True, eot=True)
        assert ids[0] == 1 and ids[-1] == 2 and 0 not in ids and 1 not in ids[1:-1]
        assert max(ids) < tok.vocab_size
        assert tok.decode(ids) == text
    assert tok.unknown_words("anything at all") == []
    assert tok.encode_batch(["a b", "Lily"]) == [tok.encode("a b"), tok.encode("Lily")]


def test_bpe_on_the_sample_round_trips():
    stories = _sample_stories(n=200)
    tok = train_bpe(stories, vocab_size=512, lowercase=True)
    assert tok.vocab_size == 512
    assert all(tok.decode(tok.encode(s)) == s for s in stories)
    # merges learned: far fewer tokens than bytes
    assert sum(len(tok.encode(s)) for s in stories) < 0.4 * sum(len(s) for s in stories)


def test_bpe_chunk_cached_encoding_equals_plain_encoding():
    stories = _sample_stories(n=300)
    odd = ["Zoë's café — 3½ 🙂 日本 x<sot>y <eot>z 123abc", "", "a"]
    texts = [clean_text(s, False) for s in stories + odd]
    tok = train_bpe(texts[:100], vocab_size=400, lowercase=False)
    want = [i for t in texts for i in tok.encode(t, sot=True, eot=True)]
    for _ in range(2):  # the second time from the cache
        ids, lengths = tok.encode_stories(texts)
        assert ids.dtype == np.uint16 and ids.tolist() == want
        assert lengths.tolist() == [len(tok.encode(t)) + 2 for t in texts]


def test_bpe_save_load_round_trip(tmp_path, data_bpe_tok):
    path = tmp_path / "tok.json"
    data_bpe_tok.save(path)
    tok = load_tokenizer(path)
    assert isinstance(tok, BPETokenizer) and tok.kind == "bpe" and not tok.lowercase
    text = "Lily met Ben, 🙂."
    assert tok.encode(text) == data_bpe_tok.encode(text)
    assert tok.vocab_size == data_bpe_tok.vocab_size


TRICKY = [
    "Once upon a time, Lily met Ben.",
    "Zoë's café — 3½ 🙂 日本 👩‍👩‍👧",
    "a  b\tc\n",
    "",
    "<sot>",
    "x<sot>y <eot>z <unk>",
    "\x00\x01\x7f\u00ff\ufeff",
    "\ud800 a lone surrogate",
]


def test_byte_is_lossless_and_never_unknown():
    tok = ByteTokenizer()
    assert tok.kind == "byte" and tok.vocab_size == 259 and not tok.lowercase
    assert [tok.id_to_token(i) for i in range(3)] == ["<unk>", "<sot>", "<eot>"]
    for text in TRICKY:
        ids = tok.encode(text, sot=True, eot=True)
        assert ids[0] == 1 and ids[-1] == 2 and min(ids[1:-1], default=3) >= 3
        assert max(ids) < 259 and len(ids) == len(text.encode("utf-8", "surrogatepass")) + 2
        assert tok.decode(ids) == text
        assert tok.decode(ids, skip_specials=False) == f"<sot>{text}<eot>"
        assert tok.unknown_words(text) == []


def test_byte_known_ids():
    tok = ByteTokenizer()
    # byte b is id 3 + b: "H" 0x48, "i" 0x69, " " 0x20, "é" 0xC3 0xA9
    assert tok.encode("Hi é", sot=True) == [1, 75, 108, 35, 198, 172]
    assert [tok.id_to_token(i) for i in tok.encode("a é")] == ["a", "<0x20>", "<0xC3>", "<0xA9>"]
    assert tok.decode([1, 75, 0, 108, 2], skip_specials=False) == "<sot>H<unk>i<eot>"
    assert tok.decode([198, 75]) == "\ufffdH"  # a model's malformed UTF-8 (0xC3 "H"): no error


def test_byte_batch_encoding_equals_plain_encoding():
    tok = ByteTokenizer()
    texts = [clean_text(s, False) for s in _sample_stories(n=50)] + TRICKY
    ids, lengths = tok.encode_stories(texts)
    assert ids.dtype == np.uint16
    assert ids.tolist() == [i for t in texts for i in tok.encode(t, sot=True, eot=True)]
    assert lengths.tolist() == [len(tok.encode(t)) + 2 for t in texts]
    words = [t.split(" ") if t else [] for t in texts[:50]]
    assert tok.encode_words(words)[0].tolist() == tok.encode_stories(texts[:50])[0].tolist()
    empty, no_lengths = tok.encode_stories([])
    assert len(empty) == len(no_lengths) == 0


def test_byte_save_load_round_trip(tmp_path):
    ByteTokenizer(lowercase=True).save(tmp_path / "tok.json")
    tok = load_tokenizer(tmp_path / "tok.json")
    assert isinstance(tok, ByteTokenizer) and tok.lowercase and tok.vocab_size == 259
    assert tok.decode(tok.encode(TRICKY[1])) == TRICKY[1]


def test_load_tokenizer_bad_inputs_give_one_line(tmp_path):
    with pytest.raises(UserError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="damaged"):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"kind": "sentencepiece"}))
    with pytest.raises(UserError, match="unknown tokenizer kind"):
        load_tokenizer(bad)
    bad.write_text(json.dumps({"kind": "word", "vocab": ["a", "b", "c"]}))
    with pytest.raises(UserError, match="must start with"):
        load_tokenizer(bad)


def test_chunk_table_gathers_ids_across_growth_and_clear():
    rng = np.random.default_rng(0)
    table = ChunkTable({"<m>": [7]})
    want: dict[str, list[int]] = {"<m>": [7]}
    for step in range(5):  # adds 5 x 900 chunks: the arrays grow past their first capacity
        chunks = [f"c{step}-{i}" for i in range(900)]
        ids = [rng.integers(0, 60000, size=rng.integers(0, 4)).tolist() for _ in chunks]
        table.add(chunks, ids)
        want.update(zip(chunks, ids, strict=True))
    query = [str(c) for c in rng.choice(list(want), size=3000)]
    got = table.gather(query)
    assert got.dtype == np.uint32
    assert got.tolist() == [i for c in query for i in want[c]]
    assert table.gather([]).tolist() == []
    table.clear()
    assert list(table.index) == ["<m>"] and table.gather(["<m>", "<m>"]).tolist() == [7, 7]


def _of_kind(kind: str, request) -> Tokenizer:
    """A tokenizer of each kind (``hf``: the bpe fixture's library tokenizer, as imported)."""
    if kind == "byte":
        return ByteTokenizer(lowercase=False)
    if kind == "hf":
        bpe = request.getfixturevalue("data_bpe_tok")
        return ImportedTokenizer(bpe.tok, sot_id=1, eot_id=2, unk_id=None, source="test")
    return request.getfixturevalue(f"data_{kind}_tok")


def test_the_kinds_are_the_config_choices():
    import dataclasses

    from gpt_study.config.data import DataConfig

    (field,) = [f for f in dataclasses.fields(DataConfig) if f.name == "tokenizer"]
    assert list(KINDS) == field.metadata["choices"]


@pytest.mark.parametrize("kind", list(KINDS))
def test_a_kind_that_says_lossless_gives_back_every_text(kind, request):
    """``lossless`` decides whether bits per byte may count a text from its ids: a kind that
    claims it gives back every cleaned text exactly; the word kind loses text (spaCy's pieces,
    <unk>); an imported tokenizer is not assumed lossless (its normalizer may change text)."""
    tok = _of_kind(kind, request)
    texts = [clean_text(t, tok.lowercase) for t in [*CORPUS[:5], *TRICKY[:6]]]
    given_back = [tok.decode(tok.encode(t, sot=True, eot=True)) == t for t in texts]
    if tok.lossless:
        assert all(given_back) and kind in LOSSLESS
    else:
        assert kind not in LOSSLESS and (kind == "hf" or not all(given_back))


@pytest.mark.parametrize("kind", list(KINDS))
def test_every_kind_saves_the_shared_header_first_and_loads_to_the_same_vocabulary(
    kind, tmp_path, request
):
    """The header (kind, format, lowercase) is written once, in the base class, for every kind;
    a saved and loaded tokenizer splits text into the same ids (its vocabulary key)."""
    tok = _of_kind(kind, request)
    tok.save(tmp_path / "tok.json")
    saved = json.loads((tmp_path / "tok.json").read_text())
    assert list(saved)[:3] == ["kind", "format", "lowercase"] and saved["kind"] == kind
    assert saved["format"] == FORMAT_VERSION and saved["lowercase"] == tok.lowercase
    assert load_tokenizer(tmp_path / "tok.json").vocabulary_key() == tok.vocabulary_key()
