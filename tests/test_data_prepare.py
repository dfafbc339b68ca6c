"""``gpt-study prepare`` end to end on tiny corpora: against a straightforward oracle, the folder
layout and meta.json, idempotence, a killed run, and every bad input."""

import json
import os
import random
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from gpt_study.cli import main as cli_main
from gpt_study.config import DataConfig
from gpt_study.data import prepare as prep
from gpt_study.data.clean import clean_text
from gpt_study.data.dataset import open_prepared
from gpt_study.data.folder import SPLITS, Meta
from gpt_study.data.prepare import folder as prep_folder
from gpt_study.data.prepare import ids as prep_ids
from gpt_study.data.prepare import workers as prep_workers
from gpt_study.data.tokenizer import build_word_vocab, load_tokenizer, spacy_tokenizer
from gpt_study.runtime.errors import UserError

WORDS = (
    "lily ben cat dog ball tree sun park mom dad happy sad big little red blue ran jumped saw "
    "found played said could n't was were is the a and to in on with her his they she he it"
).split()


def _story(rng: random.Random, n: int) -> str:
    words = [rng.choice(WORDS) for _ in range(n)]
    sentences = [
        " ".join(words[i : i + 7]).capitalize() + rng.choice([".", "!", "?"])
        for i in range(0, n, 7)
    ]
    text = " ".join(sentences)
    text = text.replace(" could n't", " couldn't").replace(" said ", ' said, "Wow!" ')
    if rng.random() < 0.3:
        text = text.replace(". ", ".\n", 1)  # a paragraph break: must become a space
    if rng.random() < 0.3:
        text += f" Zed{rng.randrange(10**6)} waved."  # a name seen once: <unk> at min_freq 2
    if rng.random() < 0.1:
        text += " A <sot> sign and an <eot> sign."  # literal specials must not cut stories
    if rng.random() < 0.2:
        text += " Caf\u00e9 \u2019quoted\u2019 \u00c3\u00a9t\u00c3\u00a9"  # non-ASCII and mojibake
    return text


def _write_corpus(
    folder: Path, n_train: int = 80, n_valid: int = 12, seed: int = 0
) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    train = [_story(rng, rng.randint(3, 40)) for _ in range(n_train)]
    valid = [_story(rng, rng.randint(3, 40)) for _ in range(n_valid)]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.txt").write_text(
        "".join(f"{s}\n<|endoftext|>\n" for s in train), encoding="utf-8"
    )
    (folder / "valid.txt").write_text(
        "".join(f"{s}\n<|endoftext|>\n" for s in valid), encoding="utf-8"
    )
    return train, valid


@pytest.fixture
def data_corpus(tmp_path):
    train, valid = _write_corpus(tmp_path / "corpus")
    return tmp_path / "corpus", train, valid


def _cfg(folder, out, **kw):
    kw.setdefault("min_chars", 60)
    kw.setdefault("workers", 1)
    return DataConfig(data=[str(folder)], out=str(out), **kw)


def _oracle_word(train, valid, min_chars, vocab_size=30000, min_freq=2):
    """The study's procedure, straightforwardly: drop short raw stories, clean, spaCy each story,
    count, encode again."""
    tok = spacy_tokenizer()
    clean = {
        k: [clean_text(s, True) for s in v if len(s) >= min_chars]
        for k, v in (("train", train), ("valid", valid))
    }
    counts = Counter(t.text for s in clean["train"] for t in tok(s))
    vocab, _ = build_word_vocab(counts, vocab_size, min_freq)
    index = {w: i for i, w in enumerate(vocab)}
    streams = {}
    for split, stories in clean.items():
        ids = []
        for s in stories:
            ids += [1] + [index.get(t.text, 0) for t in tok(s)] + [2]
        streams[split] = np.array(ids, dtype=np.uint16)
    return vocab, streams, clean


@pytest.mark.parametrize(
    "workers, warmup, cache",
    [(1, 0, 10**6), (2, 0, 10**6), (2, 2500, 10**6), (2, 2500, 60)],
    ids=["one-process", "pool", "pool-after-warmup", "cache-overflows"],
)
def test_word_equals_the_straightforward_procedure(
    data_corpus, tmp_path, monkeypatch, workers, warmup, cache
):
    # Small batches, so that the pool (and the warm-up before it) see many of them.
    monkeypatch.setattr(prep_workers, "BATCH_STORIES", 7)
    monkeypatch.setattr(prep_workers, "WARMUP_CHARS", warmup)
    monkeypatch.setattr(prep_workers, "CHUNK_CACHE", cache)
    folder, train, valid = data_corpus
    out = prep.prepare(
        _cfg(folder, tmp_path / "out", workers=workers), progress=False, log=lambda m: None
    )
    vocab, streams, clean = _oracle_word(train, valid, 60)
    assert load_tokenizer(out / "tokenizer.json").vocab == vocab
    data = open_prepared(out)
    for split in ("train", "valid"):
        np.testing.assert_array_equal(data.tokens(split), streams[split])
        m = data.split_meta(split)
        assert m["stories"] == len(clean[split]) > 0
        assert m["tokens"] == len(streams[split])
        assert m["chars"] == sum(len(s) for s in clean[split])
        assert m["bytes"] == sum(len(s.encode("utf-8")) for s in clean[split])
        assert m["unk"] == int((streams[split] == 0).sum())
    assert data.split_meta("valid")["unk"] > 0  # min_freq 2 leaves some words out


def test_meta_json_describes_the_run(data_corpus, tmp_path):
    folder, train, valid = data_corpus
    out = prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "valid.bin",
    ]
    meta = json.loads((out / "meta.json").read_text())
    assert meta["tokenizer"] == "word" and meta["version"] and meta["elapsed_s"] > 0
    assert meta["vocab_size"] == load_tokenizer(out / "tokenizer.json").vocab_size
    assert meta["settings"]["min_chars"] == 60 and meta["settings"]["lowercase"] is True
    src = {s["split"]: s for s in meta["sources"]}
    assert src["train"]["sha256"] == prep_folder.sha256_file(folder / "train.txt")
    assert src["train"]["stories_read"] == len(train)
    short = sum(len(s) < 60 for s in train + valid)
    assert meta["dropped_short"] == short > 0
    assert meta["valid_from"] == "valid files"
    assert not list(tmp_path.glob(".out.tmp-*"))


def test_bpe_is_lossless_on_every_story(data_corpus, tmp_path):
    folder, train, valid = data_corpus
    out = prep.prepare(
        _cfg(folder, tmp_path / "out", tokenizer="bpe", vocab_size=300),
        progress=False,
        log=lambda m: None,
    )
    tok = load_tokenizer(out)
    assert tok.kind == "bpe" and not tok.lowercase and tok.vocab_size <= 300
    data = open_prepared(out)
    for split, raw in (("valid", valid), ("train", train)):
        ids = data.tokens(split)
        starts = np.flatnonzero(ids == 1)
        assert len(starts) == data.split_meta(split)["stories"]
        stories = [
            tok.decode(ids[a:b].tolist())
            for a, b in zip(starts, list(starts[1:]) + [len(ids)], strict=True)
        ]
        assert all(ids[b - 1] == 2 for b in list(starts[1:]) + [len(ids)])
        assert stories == [clean_text(s, False) for s in raw if len(s) >= 60]
        assert data.split_meta(split)["unk"] == 0


def test_bpe_trained_on_a_bounded_sample_same_with_workers(data_corpus, tmp_path, monkeypatch):
    # A 1,500-character training sample: most batches are encoded by the workers after training.
    monkeypatch.setattr(prep_workers, "BATCH_STORIES", 7)
    folder, train, valid = data_corpus
    outs = []
    for workers in (1, 2):
        cfg = _cfg(
            folder,
            tmp_path / f"o{workers}",
            tokenizer="bpe",
            vocab_size=280,
            workers=workers,
            bpe_train_chars=1500,
        )
        outs.append(prep.prepare(cfg, progress=False, log=lambda m: None))
    for name in ("train.bin", "valid.bin", "tokenizer.json"):
        assert (outs[0] / name).read_bytes() == (outs[1] / name).read_bytes()
    tok = load_tokenizer(outs[0])
    ids = open_prepared(outs[0]).tokens("train").tolist()
    text = tok.decode(ids, skip_specials=False)
    want = [clean_text(s, False) for s in train if len(s) >= 60]
    assert text == "".join(f"<sot>{s}<eot>" for s in want)


@pytest.mark.parametrize("workers", [1, 2])
def test_byte_cli_writes_every_story_as_its_bytes(data_corpus, tmp_path, monkeypatch, workers):
    """Tokens = UTF-8 bytes + <sot>/<eot> per story, lossless, meta.json as for bpe."""
    monkeypatch.setattr(prep_workers, "BATCH_STORIES", 7)  # the pool sees many batches
    folder, train, valid = data_corpus
    out = tmp_path / f"byte{workers}"
    args = ["--data", folder, "--out", out, "--min_chars", 60, "--tokenizer", "byte"]
    assert cli_main(["prepare", "--no_progress", "--workers", str(workers), *map(str, args)]) == 0
    tok = load_tokenizer(out)
    assert tok.kind == "byte" and tok.vocab_size == 259 and not tok.lowercase
    meta = json.loads((out / "meta.json").read_text())
    bpe_out = prep.prepare(
        _cfg(folder, tmp_path / "bpe", tokenizer="bpe", vocab_size=300), log=lambda m: None
    )
    assert meta.keys() == json.loads((bpe_out / "meta.json").read_text()).keys()
    assert meta["tokenizer"] == "byte" and meta["vocab_size"] == 259
    assert meta["settings"]["vocab_size"] == 259 and meta["settings"]["lowercase"] is False
    data = open_prepared(out)
    for split, raw in (("train", train), ("valid", valid)):
        want = [clean_text(s, False) for s in raw if len(s) >= 60]
        ids = data.tokens(split)
        m = data.split_meta(split)
        assert len(ids) == m["tokens"] == m["bytes"] + 2 * len(want)
        assert m["bytes"] == sum(len(s.encode("utf-8")) for s in want)
        assert m["stories"] == len(want) and m["unk"] == 0
        assert tok.decode(ids.tolist(), skip_specials=False) == "".join(
            f"<sot>{s}<eot>" for s in want
        )


def test_byte_refuses_another_vocab_size(data_corpus, tmp_path, capsys):
    folder, _, _ = data_corpus
    code = _cli(
        "--data", folder, "--out", tmp_path / "o", "--tokenizer", "byte", "--vocab_size", 300
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "always 259" in err, err
    assert DataConfig(tokenizer="byte").output_dir().name == "byte-259"


def test_bpe_refuses_a_vocab_size_below_its_bytes(data_corpus, tmp_path, capsys):
    """A byte-level BPE always holds 256 bytes and 3 specials: --vocab_size 10 gave 259 quietly."""
    folder, _, _ = data_corpus
    code = _cli("--data", folder, "--out", tmp_path / "o", "--tokenizer", "bpe", "--vocab_size", 10)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "use --vocab_size 259 or more" in err, err
    assert not (tmp_path / "o").exists()
    assert DataConfig(tokenizer="bpe", vocab_size=259).vocab_size == 259


def test_one_file_holds_out_a_deterministic_valid_split(tmp_path, monkeypatch):
    monkeypatch.setattr(prep_workers, "BATCH_STORIES", 7)
    monkeypatch.setattr(prep_workers, "WARMUP_CHARS", 1000)
    _, _ = _write_corpus(tmp_path / "c", n_train=50)
    one = tmp_path / "c" / "train.txt"
    cfg = DataConfig(
        data=[str(one)], out=str(tmp_path / "o"), min_chars=1, workers=1, valid_fraction=0.1
    )
    out = prep.prepare(cfg, progress=False, log=lambda m: None)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["splits"]["valid"]["stories"] == 5  # stories 0, 10, 20, 30, 40
    assert meta["splits"]["train"]["stories"] == 45
    assert "every 10th" in meta["valid_from"]
    cfg2 = DataConfig(
        data=[str(one)], out=str(tmp_path / "o2"), min_chars=1, workers=2, valid_fraction=0.1
    )
    out2 = prep.prepare(cfg2, progress=False, log=lambda m: None)
    for name in ("train.bin", "valid.bin", "tokenizer.json"):
        assert (out / name).read_bytes() == (out2 / name).read_bytes()


def test_finished_folder_is_reused_and_force_redoes_it(data_corpus, tmp_path):
    folder, _, _ = data_corpus
    msgs = []
    out = prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=msgs.append)
    stamp = (out / "train.bin").stat().st_mtime_ns
    meta = (out / "meta.json").read_text()
    prep.prepare(_cfg(folder, tmp_path / "out", workers=2), progress=False, log=msgs.append)
    assert "up to date" in msgs[-1]
    assert (out / "train.bin").stat().st_mtime_ns == stamp and (
        out / "meta.json"
    ).read_text() == meta
    with pytest.raises(UserError, match="other inputs or settings: pass --force"):
        prep.prepare(_cfg(folder, tmp_path / "out", min_freq=1), progress=False, log=msgs.append)
    prep.prepare(
        _cfg(folder, tmp_path / "out", min_freq=1, force=True), progress=False, log=msgs.append
    )
    assert json.loads((out / "meta.json").read_text())["settings"]["min_freq"] == 1
    assert not list(tmp_path.glob(".out.*"))


def test_a_killed_run_leaves_nothing_that_looks_finished(data_corpus, tmp_path, monkeypatch):
    folder, _, _ = data_corpus
    calls = []

    def dying_write(self, ids, chars, nbytes):
        calls.append(1)
        if len(calls) > 1:
            raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(prep_ids.SplitWriter, "write", dying_write)
        with pytest.raises(KeyboardInterrupt):
            prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=lambda m: None)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.glob(".out.tmp-*"))
    # A SIGKILL leaves a temp folder behind: it is hidden, never opened, and cleaned next time.
    dead = tmp_path / ".out.tmp-999999999"
    dead.mkdir()
    (dead / "train.bin").write_bytes(b"\0\0")
    with pytest.raises(UserError):
        open_prepared(tmp_path / "out")
    prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=lambda m: None)
    assert not dead.exists()
    assert open_prepared(tmp_path / "out").split_meta("train")["stories"] > 0


def test_meta_json_reads_back_as_typed_meta(data_corpus, tmp_path):
    folder, _, _ = data_corpus
    out = prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=lambda m: None)
    data = open_prepared(out)
    assert data.info == Meta.from_dict(data.meta, out / "meta.json")
    assert data.info.to_dict() == data.meta
    for split in SPLITS:
        typed = data.info.splits[split]
        assert typed.tokens == len(data.tokens(split)) and typed.to_dict() == data.split_meta(split)
    assert data.info.settings["min_chars"] == 60
    assert [s["split"] for s in data.info.sources] == ["train", "valid"]


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda m: m.pop("splits"), 'no "splits"'),
        (lambda m: m["splits"].pop("valid"), '"splits" lacks "valid"'),
        (lambda m: m["splits"]["train"].pop("tokens"), '"splits"."train" lacks "tokens"'),
        (lambda m: m["splits"]["train"].update(tokens="12"), '"tokens" is not a count'),
        (lambda m: m.update(settings=[1]), '"settings" is not an object'),
    ],
    ids=["no-splits", "no-valid", "no-tokens", "tokens-text", "settings-list"],
)
def test_damaged_meta_json_is_one_line_naming_the_file(data_corpus, tmp_path, damage, message):
    folder, _, _ = data_corpus
    out = prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=lambda m: None)
    meta = json.loads((out / "meta.json").read_text())
    damage(meta)
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError) as e:
        open_prepared(out)
    text = str(e.value)
    assert "\n" not in text and message in text, text
    assert str(out / "meta.json") in text and "prepare" in text and "--force" in text


@pytest.mark.parametrize("cut", [2, 1], ids=["a-token-short", "a-stray-byte"])
def test_split_file_of_the_wrong_size_is_one_line_naming_it(data_corpus, tmp_path, cut):
    folder, _, _ = data_corpus
    out = prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=lambda m: None)
    path = out / "valid.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(UserError) as e:
        open_prepared(out)
    text = str(e.value)
    assert "\n" not in text and str(path) in text, text
    assert "meta.json says" in text and "prepare" in text and "--force" in text


def test_default_out_is_dataset_root_tokenizer_vocab(data_corpus, tmp_path):
    folder, _, _ = data_corpus
    cfg = DataConfig(
        data=[str(folder)], dataset_root=str(tmp_path / "data"), min_chars=60, workers=1
    )
    out = prep.prepare(cfg, progress=False, log=lambda m: None)
    assert out == tmp_path / "data" / "word-30000"
    cfg = DataConfig(
        data=[str(folder)],
        dataset_root=str(tmp_path / "data"),
        tokenizer="bpe",
        min_chars=60,
        workers=1,
        vocab_size=280,
    )
    assert prep.prepare(cfg, progress=False, log=lambda m: None) == tmp_path / "data" / "bpe-280"


def _cli(*args):
    return cli_main(["prepare", "--no_progress", "--workers", "1", *map(str, args)])


def test_cli_writes_a_folder(data_corpus, tmp_path, capsys):
    folder, _, _ = data_corpus
    assert (
        _cli(
            "--data",
            folder / "train.txt",
            folder / "valid.txt",
            "--out",
            tmp_path / "o",
            "--min_chars",
            60,
        )
        == 0
    )
    assert "word vocab" in capsys.readouterr().out
    assert open_prepared(tmp_path / "o").meta["tokenizer"] == "word"


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--data", "{d}/missing.txt"], "no such file or folder"),
        ("empty", ["--data", "{d}/empty.txt"], "is empty"),
        ("short", ["--data", "{d}/short.txt"], "shorter than --min_chars 300"),
        ("latin1", ["--data", "{d}/latin1.txt"], "is not UTF-8 text"),
        ("csv", ["--data", "{d}/stories.csv"], "unknown format"),
        ("short", ["--data", "{d}/short.txt", "--vocab_size", "70000"], "does not fit uint16"),
        (
            "short",
            ["--data", "{d}/short.txt", "--tokenizer", "bpe", "--vocab_size", "65536"],
            "does not fit uint16",
        ),
    ],
)
def test_cli_bad_input_is_one_line_exit_2(tmp_path, capsys, setup, args, message):
    d = tmp_path
    if setup == "empty":
        (d / "empty.txt").write_text("")
    elif setup == "short":
        (d / "short.txt").write_text("a short story.\n<|endoftext|>\n")
    elif setup == "latin1":
        (d / "latin1.txt").write_bytes(("caf\u00e9 " * 100 + "\n<|endoftext|>\n").encode("latin-1"))
    elif setup == "csv":
        (d / "stories.csv").write_text("text\nhello\n")
    code = _cli(*[a.format(d=d) for a in args], "--out", d / "out")
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (d / "out").exists() and not list(d.glob(".out.tmp-*"))


def test_existing_unrelated_folder_is_not_overwritten(data_corpus, tmp_path):
    folder, _, _ = data_corpus
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="holds files gpt-study did not write"):
        prep.prepare(_cfg(folder, tmp_path / "out"), progress=False, log=lambda m: None)
    assert (tmp_path / "out" / "notes.txt").read_text() == "mine"


def test_short_stories_are_judged_by_their_raw_length(tmp_path):
    """The study drops a story whose raw text is under --min_chars before cleaning: whitespace
    that cleaning removes still counts, characters that ftfy adds do not."""
    padded = "Lily ran.\n\n\n" + " " * 60 + "Ben ran."  # raw 81 chars, cleaned 18
    ligatures = "\ufb01" * 40  # raw 40 chars; ftfy makes 80 ("fi" x 40)
    kept = "Lily and Ben ran to the big red tree in the park to play with a ball."
    folder = tmp_path / "c"
    folder.mkdir()
    for name in ("train.txt", "valid.txt"):
        text = "".join(f"{s}\n<|endoftext|>\n" for s in (padded, ligatures, kept, kept))
        (folder / name).write_text(text, encoding="utf-8")
    out = prep.prepare(_cfg(folder, tmp_path / "o", min_chars=60), log=lambda m: None)
    tok = load_tokenizer(out)
    want = [i for s in (padded, kept, kept) for i in tok.encode(clean_text(s, True), True, True)]
    assert open_prepared(out).tokens("valid").tolist() == want
    assert json.loads((out / "meta.json").read_text())["dropped_short"] == 2


def test_hub_dataset_flow_with_a_local_stand_in(tmp_path, monkeypatch):
    # The Hub is not reachable in tests: stand in an in-memory datasets.Dataset for each split.
    datasets = pytest.importorskip("datasets")
    rng = random.Random(1)
    rows = {
        "train": [_story(rng, 30) for _ in range(40)],
        "validation": [_story(rng, 30) for _ in range(6)],
    }
    monkeypatch.setattr(
        prep_folder,
        "load_hub_split",
        lambda split: datasets.Dataset.from_dict({"text": rows[split]}),
    )
    cfg = DataConfig(dataset_root=str(tmp_path), min_chars=60, workers=1)
    out = prep.prepare(cfg, progress=False, log=lambda m: None)
    meta = json.loads((out / "meta.json").read_text())
    assert [(s["split"], s["hub"], s["hub_split"], s["rows"]) for s in meta["sources"]] == [
        ("train", "roneneldan/TinyStories", "train", 40),
        ("valid", "roneneldan/TinyStories", "validation", 6),
    ]
    want = sum(len(s) >= 60 for s in rows["validation"])
    assert meta["splits"]["valid"]["stories"] == want


def test_unwritable_out_is_one_line(data_corpus, tmp_path, capsys):
    folder, _, _ = data_corpus
    (tmp_path / "a_file").write_text("x")
    code = _cli("--data", folder, "--out", tmp_path / "a_file" / "out", "--min_chars", 60)
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "cannot write to" in err, err


def _die_in_worker(*args):
    if os.getpid() != _PARENT[0]:
        os._exit(1)  # a worker killed mid-batch (e.g. by the OOM killer)
    return _REAL_WORK[0](*args)


_PARENT: list[int] = []
_REAL_WORK: list = []


def test_a_dead_worker_ends_in_one_line_not_a_hang(data_corpus, tmp_path, monkeypatch):
    monkeypatch.setattr(prep_workers, "BATCH_STORIES", 7)
    monkeypatch.setattr(prep_workers, "WARMUP_CHARS", 0)
    _PARENT[:] = [os.getpid()]
    _REAL_WORK[:] = [prep_workers.work]
    monkeypatch.setattr(prep_workers, "work", _die_in_worker)
    folder, _, _ = data_corpus
    out = tmp_path / "out"
    with pytest.raises(UserError, match="worker died"):
        prep.prepare(_cfg(folder, out, workers=2), progress=False, log=lambda m: None)
    assert not out.exists()


def test_the_benchmarks_reference_prepares_the_same_ids(tmp_path):
    """benchmarks/bench_prepare.py times prepare against a plain version of the study's rules
    and asserts equal ids: both must follow the one rule (the raw --min_chars filter, then
    whitespace, lowercase, ftfy), checked here on the edge cases that once split them."""
    import importlib.util

    import numpy as np

    from gpt_study.config import DataConfig
    from gpt_study.data.prepare import prepare

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_prepare.py"
    spec = importlib.util.spec_from_file_location("bench_prepare", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    story = "Once upon a time, Lily saw a swan. She said hello to it and smiled all day. " * 4
    cases = [
        story,
        story
        + "She asked, \u00e2\u20ac\u0153Can you help me cross the river?\u00e2\u20ac\nThe end.",
        "x" * 299 + "\n",  # 299 raw characters: dropped, though not after cleaning's rules
        "  " + "word " * 60,  # 302 raw characters, fewer once cleaned: kept
        "CAF\u00c3\u2030 and &amp; " * 20,
    ]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split in ("train", "valid"):
        text = "\n<|endoftext|>\n".join(cases * 3)
        (corpus / f"{split}.txt").write_text(text, encoding="utf-8")
    bench.reference_word(corpus, tmp_path / "ref", min_chars=300)
    cfg = DataConfig(data=[str(corpus)], out=str(tmp_path / "lib"), workers=1, min_freq=2)
    prepare(cfg, progress=False, log=lambda m: None)
    for split in ("train", "valid"):
        a = np.fromfile(tmp_path / "ref" / f"{split}.bin", dtype=np.uint16)
        b = np.fromfile(tmp_path / "lib" / f"{split}.bin", dtype=np.uint16)
        assert len(a) > 100 and np.array_equal(a, b), split
