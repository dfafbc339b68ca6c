"""evaluate --hf: any transformers causal LM scored as gpt-study scores its own.

Oracles: a gpt-study checkpoint exported for transformers scores the same bits per byte both ways
(the stream of the prepared folder, the same windows, the same bytes); the text of a split has
exactly the bytes ``prepare`` recorded, whatever the tokenizer; the windowed scores of tiny
GPT-2, Llama and GPT-Neo models with random weights equal a plain loop over the windows written
here, on stories longer than their positions.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gpt_study.checkpoint import save_checkpoint
from gpt_study.cli import main
from gpt_study.config import SampleConfig
from gpt_study.config.presets import preset_config
from gpt_study.data.dataset import open_prepared
from gpt_study.data.text import split_bytes, split_stories, text_bytes
from gpt_study.data.tokenizer import load_tokenizer
from gpt_study.evaluate.stories import STORY_PROTOCOL
from gpt_study.model.gpt import GPT

transformers = pytest.importorskip(
    "transformers", reason="transformers is in the test extra: pip install -e '.[test]'"
)
from gpt_study.evaluate.hf import (  # noqa: E402
    EXPORT_RECORD,
    evaluate_hf_split,
    generate_rows,
    load_hf,
    story_stream,
    write_hf_stories,
)
from gpt_study.export import FILES, export_hf  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"
END = "\n<|endoftext|>\n"
WINDOW = 64  # positions of the tiny transformers models: most stories are longer


def _stories(name: str, n: int) -> list[str]:
    if not (SAMPLE / name).exists():
        pytest.skip(f"the shared sample is not at {SAMPLE}")
    text = (SAMPLE / name).read_text(encoding="utf-8")
    return [s.strip() for s in text.split("<|endoftext|>") if s.strip()][:n]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A slice of the shared sample: 300 train and 40 valid stories, in its own layout."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "train.txt").write_text(END.join(_stories("train.txt", 300)) + END, encoding="utf-8")
    (root / "valid.txt").write_text(END.join(_stories("valid.txt", 40)) + END, encoding="utf-8")
    return root


def _prepare(corpus: Path, out: Path, *flags: str) -> Path:
    argv = ["prepare", "--data", str(corpus), "--out", str(out), "--workers", "1", *flags]
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def folders(corpus, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("prepared")
    return {
        "bpe": _prepare(corpus, root / "bpe", "--tokenizer", "bpe", "--vocab_size", "512"),
        "byte": _prepare(corpus, root / "byte", "--tokenizer", "byte"),
    }


# ---------------------------------------------------------------------------- the text


@pytest.mark.parametrize("kind", ["bpe", "byte", "word", "word, valid held out of train"])
def test_the_text_of_a_split_has_the_bytes_evaluate_divides_by(kind, corpus, folders, tmp_path):
    """One definition of the text: decoded (bpe, byte) or read again from the sources (word,
    also when valid was held out of train), it has exactly meta.json's stories and bytes."""
    if kind in folders:
        folder = folders[kind]
    elif kind == "word":
        folder = _prepare(corpus, tmp_path / "word", "--tokenizer", "word")
    else:
        train = tmp_path / "only-train"
        train.mkdir()
        (train / "train.txt").write_text((corpus / "train.txt").read_text(encoding="utf-8"))
        folder = _prepare(
            train, tmp_path / "held", "--tokenizer", "word", "--valid_fraction", "0.1"
        )
    data = open_prepared(folder)
    texts = split_stories(data, "valid")
    assert len(texts) == data.split_meta("valid")["stories"] > 0
    assert text_bytes(texts) == split_bytes(data, "valid") == data.split_meta("valid")["bytes"]
    if kind == "byte":  # both lossless kinds give back the very same text
        assert texts == split_stories(open_prepared(folders["bpe"]), "valid")
    if kind.startswith("word"):
        assert texts == [t.lower() for t in texts]  # the word vocabulary's lowercased text


def test_a_split_whose_text_is_lost_is_refused_in_one_line(corpus, tmp_path):
    from gpt_study.runtime.errors import UserError

    folder = _prepare(corpus, tmp_path / "word", "--tokenizer", "word")
    meta = json.loads((folder / "meta.json").read_text())
    for s in meta["sources"]:
        s["path"] = str(tmp_path / "gone.txt")
    (folder / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(UserError, match="bpe or byte"):
        split_stories(open_prepared(folder), "valid")


# ---------------------------------------------------------------------------- tiny models


def _tokenizer(texts: list[str], specials: dict[str, str]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=sorted(set(specials.values())),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials)


GPT2_SPECIALS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>"}
LLAMA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>"}


def _config(layout: str, tok) -> object:
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}
    vocab = len(tok)
    if layout == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_positions=WINDOW, n_embd=32, n_layer=2, n_head=4, **ids
        )
    if layout == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=WINDOW, **ids,
        )  # fmt: skip
    return transformers.GPTNeoConfig(
        vocab_size=vocab, max_position_embeddings=WINDOW, hidden_size=32, num_layers=2,
        num_heads=4, attention_types=[[["global", "local"], 1]], window_size=8, **ids,
    )  # fmt: skip


CLASSES = {
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
    "gpt_neo": "GPTNeoForCausalLM",
}


def make_tiny(layout: str, folder: Path) -> Path:
    """A tiny transformers model of one layout with random weights and its own BPE."""
    specials = LLAMA_SPECIALS if layout == "llama" else GPT2_SPECIALS
    tok = _tokenizer(_stories("train.txt", 200), specials)
    torch.manual_seed(0)
    model = getattr(transformers, CLASSES[layout])(_config(layout, tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module", params=list(CLASSES))
def tiny(request, tmp_path_factory) -> Path:
    return make_tiny(request.param, tmp_path_factory.mktemp(request.param))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory) -> Path:
    return make_tiny("gpt2", tmp_path_factory.mktemp("gpt2"))


def _reference_nll(model, stream: np.ndarray, window: int) -> tuple[float, int]:
    """Summed NLL of every target, one window of ``window`` inputs at a time, written plainly:
    window k reads tokens k*window .. (k+1)*window and predicts the next of each."""
    total, n = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(stream) - 1, window):
            piece = torch.tensor(stream[start : start + window + 1]).unsqueeze(0)
            logits = model(input_ids=piece[:, :-1]).logits[0].float()
            total += F.cross_entropy(logits, piece[0, 1:], reduction="sum").item()
            n += piece.size(1) - 1
    return total, n


def test_every_layout_scores_stories_longer_than_its_window(tiny, folders):
    hf = load_hf(str(tiny), "cpu", "float32")
    assert hf.window == WINDOW
    data = open_prepared(folders["bpe"])
    texts = split_stories(data, "valid")
    stream = story_stream(hf.tokenizer, texts, hf.start_id, hf.eos_id)
    # the markers: [bos] story [eos] each, or one eos first when bos is eos (GPT-2's)
    first = hf.tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    bos = hf.tokenizer.bos_token_id
    head = [hf.eos_id if bos is None else bos]
    assert stream[: len(first) + 2].tolist() == [*head, *first, hf.eos_id]
    assert len(first) > 3 * WINDOW  # a story runs over several windows
    got = evaluate_hf_split(hf, folders["bpe"], batch_size=3)
    nll, n = _reference_nll(hf.model, stream, WINDOW)
    assert got["tokens"] == n == len(stream) - 1
    assert got["nll"] * got["tokens"] == pytest.approx(nll, rel=1e-5)
    assert got["bytes"] == data.split_meta("valid")["bytes"] and not got["bytes_estimated"]
    assert got["bits_per_byte"] == pytest.approx(nll / math.log(2) / got["bytes"], rel=1e-5)
    smaller = evaluate_hf_split(load_hf(str(tiny), "cpu", "float32", window=24), folders["bpe"])
    nll24, _ = _reference_nll(hf.model, stream, 24)
    assert smaller["nll"] * smaller["tokens"] == pytest.approx(nll24, rel=1e-5)


def test_stories_follow_the_protocol_past_the_window_and_end_at_the_models_eos(tiny):
    """Stories longer than the model's window slide on, as gpt-study's do."""
    hf = load_hf(str(tiny), "cpu", "float32")
    n = WINDOW + 16
    protocol = STORY_PROTOCOL.overridden(max_new_tokens=n, samples_per_opening=1)
    sample = SampleConfig(temperature=1.5)  # a random model: the end token comes now and then
    written = write_hf_stories(hf, sample, protocol)
    assert len(written.texts) == len(protocol.prompts()) == 16
    for ids, done in zip(written.new_ids, written.finished, strict=True):
        assert hf.eos_id not in ids and len(ids) <= n
        assert done or len(ids) == n
    assert not all(written.finished) and max(map(len, written.new_ids)) == n > WINDOW
    ended = zip(written.new_ids, written.finished, strict=True)
    assert any(done and len(ids) < n for ids, done in ended)
    again = write_hf_stories(hf, sample, protocol)
    assert again.new_ids == written.new_ids  # the protocol's seeds make them repeatable
    assert "not the story protocol: temperature 1.5 (protocol: 0.8), samples_per_opening 1" in (
        written.settings_text
    )


def test_a_rows_story_is_the_one_its_prompt_gets_alone(tiny):
    """Per-row seeds on the transformers path too: row r of a left-padded batch draws from
    seed + r alone, so it writes what its prompt writes alone with that seed, past the window."""
    hf = load_hf(str(tiny), "cpu", "float32")
    head = [hf.start_id]
    texts = ["Once upon a time", "Tom", "The little dog ran to the park with a red ball"]
    rows = [head + hf.tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    sample = SampleConfig(
        temperature=1.4, top_k=50, top_p=0.9, repetition_penalty=1.2, max_new_tokens=WINDOW + 16,
        seed=7,
    )  # fmt: skip
    together, _ = generate_rows(hf, sample, rows)
    assert max(map(len, together)) > WINDOW - len(rows[2])  # some rows slide
    for r, row in enumerate(rows):
        alone, _ = generate_rows(hf, sample.from_row(r), [row])
        assert alone[0] == together[r]
    assert together[0] != generate_rows(hf, sample.from_row(1), [rows[0]])[0][0]


# ---------------------------------------------------------------------------- the oracle


def _checkpoint(folder: Path, tmp: Path, window: int = WINDOW, **model) -> Path:
    """A tiny gpt-study checkpoint with random weights on ``folder``'s vocabulary, trained (as
    it were) on ``window`` of its ``WINDOW`` positions."""
    tok = load_tokenizer(folder / "tokenizer.json")
    cfg = preset_config(
        "tiny",
        model={"vocab_size": tok.vocab_size, "max_len": WINDOW, "d_model": 32, "d_ff": 64,
               "n_layers": 2, "n_heads": 4, "head_bias": False, **model},
        train={"context_size": window, "data": str(folder)},
    )  # fmt: skip
    torch.manual_seed(1)
    return save_checkpoint(tmp / "ckpt", GPT(cfg.model), cfg, folder / "tokenizer.json", {})


@pytest.mark.parametrize("layout", ["gpt2", "llama", "llama_ve"])
def test_an_exported_checkpoint_scores_the_same_both_ways(layout, folders, tmp_path, capsys):
    """The key oracle: evaluate --hf on gpt-study's export equals evaluate on the checkpoint,
    in the window the checkpoint was trained on (GPT-2's: 48 of its 64 positions); with value
    embeddings, through our Llama class (--trust_remote_code)."""
    llama = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu"} if layout != "gpt2" else {}
    if layout == "llama_ve":
        llama["value_embeds"] = True
    window = WINDOW if llama else 48
    ckpt = _checkpoint(folders["bpe"], tmp_path, window, **llama)
    exported = export_hf(ckpt, tmp_path / "hf", log=lambda _: None)
    assert exported.remote_code == (layout == "llama_ve")  # else a stock transformers class
    story = ["--max_new_tokens", "5", "--samples", "1"]
    story += ["--trust_remote_code"] if exported.remote_code else []
    common = ["--data", str(folders["bpe"]), "--device", "cpu", *story]
    assert (
        main(["evaluate", "--checkpoint", str(ckpt), *common, "--json", str(tmp_path / "a.json")])
        == 0
    )
    assert main(["evaluate", "--hf", str(tmp_path / "hf"), *common, "--json", str(tmp_path / "b.json")]) == 0  # fmt: skip
    ours, theirs = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert abs(ours["valid"]["bits_per_byte"] - theirs["valid"]["bits_per_byte"]) < 1e-4
    assert ours["valid"]["tokens"] == theirs["valid"]["tokens"]
    assert ours["valid"]["bytes"] == theirs["valid"]["bytes"]
    # the same JSON: evaluate's keys everywhere, and what the transformers model is
    assert set(theirs) == set(ours) | {"hf"}
    assert theirs["written_by"] == ours["written_by"] == "gpt-study evaluate"
    assert set(theirs["valid"]) == set(ours["valid"])
    assert set(theirs["stories"]) == set(ours["stories"])
    assert theirs["hf"]["start"] == "<sot>" and theirs["hf"]["end"] == "<eot>"
    assert theirs["context_size"] == ours["context_size"] == window
    assert EXPORT_RECORD in FILES  # where the trained window is read from
    out = capsys.readouterr().out
    assert out.count("bits per byte") == 2


DECODINGS = {
    "greedy": SampleConfig(greedy=True),
    "protocol": None,  # temperature 0.8, top_p 0.95, repetition_penalty 1.1
    "hot": SampleConfig(temperature=1.7, top_p=1.0, repetition_penalty=1.0),
    "top_k": SampleConfig(temperature=1.2, top_k=7, top_p=0.8),
    "top_p": SampleConfig(temperature=1.0, top_p=0.3),
    "penalty": SampleConfig(temperature=1.1, top_p=1.0, repetition_penalty=1.8),
}


def test_a_published_models_special_tokens_are_read_one_way():
    """import and evaluate --hf read a model's bos, eos and unk by one rule: the tokenizer's,
    else the config's (a list: its first); an unk that is a marker is none."""
    from types import SimpleNamespace as NS

    from gpt_study.data.tokenizer.imported import published_roles
    from gpt_study.runtime.errors import UserError

    gpt2 = NS(bos_token_id=50256, eos_token_id=50256, unk_token_id=50256)
    assert published_roles(gpt2) == (50256, 50256, None)  # one marker plays both
    assert published_roles(NS(bos_token_id=1, eos_token_id=2, unk_token_id=0)) == (1, 2, 0)
    no_bos = NS(bos_token_id=None, eos_token_id=3, unk_token_id=3)
    assert published_roles(no_bos) == (3, 3, None)  # a story starts at the eos then
    bare = NS(bos_token_id=None, eos_token_id=None, unk_token_id=None)
    config = NS(bos_token_id=5, eos_token_id=[7, 8], unk_token_id=None)
    assert published_roles(bare, config) == (5, 7, None)
    with pytest.raises(UserError, match="no end-of-sequence"):
        published_roles(bare)


def test_the_decodings_move_every_sampling_setting():
    """The matrix below covers the whole class: each setting departs from the default in one."""
    from dataclasses import fields

    default = SampleConfig()
    moved = {
        f.name
        for d in DECODINGS.values()
        if d is not None
        for f in fields(SampleConfig)
        if getattr(d, f.name) != getattr(default, f.name)
    }
    assert moved == {f.name for f in fields(SampleConfig)} - {"max_new_tokens", "seed"}


@pytest.mark.parametrize("decoding", DECODINGS)
@pytest.mark.parametrize("layout", ["gpt2", "llama"])
def test_stories_past_the_window_are_gpt_studys_own(layout, decoding, folders, tmp_path):
    """A transformers model re-encodes what it keeps when a story slides; gpt-study does the same
    for learned positions, so the export of such a checkpoint writes the checkpoint's stories
    token for token, slides and left-padded batches included, for every decoding: gpt-study's
    sampler draws on both paths, each row from its own seed, and the repetition penalty counts
    the whole row past a slide. A rotary cache keeps its keys instead (generate/window.py), so
    for Llama only the stories' first window agrees."""
    from gpt_study.checkpoint import load_for_inference
    from gpt_study.evaluate.stories import write_stories
    from gpt_study.generate.text import encode_prompt

    llama = {"positions": "rope", "norm": "rmsnorm", "mlp": "swiglu"} if layout == "llama" else {}
    window = 24
    ckpt = _checkpoint(folders["bpe"], tmp_path, window, **llama)
    export_hf(ckpt, tmp_path / "hf", log=lambda _: None)
    protocol = STORY_PROTOCOL.overridden(max_new_tokens=3 * window, samples_per_opening=1)
    sample = DECODINGS[decoding]
    ours = load_for_inference(str(ckpt), "cpu")
    mine = write_stories(ours.model, ours.tokenizer, sample, ours.window, protocol)
    theirs = write_hf_stories(load_hf(str(tmp_path / "hf"), "cpu", "float32"), sample, protocol)
    assert max(map(len, mine.new_ids)) > window  # some stories slide, some more than once
    for prompt, a, b in zip(protocol.prompts(), mine.new_ids, theirs.new_ids, strict=True):
        if llama:  # the same while the prompt and the story fit in the window
            first = window - len(encode_prompt(ours.tokenizer, prompt, window)[0]) + 1
            assert a[:first] == b[:first]
            assert len(a) > first or a == b  # a story that ends inside its first window
        else:
            assert a == b
    assert mine.finished == theirs.finished or llama
    if not llama:  # one text of a story on both paths: the opening and what follows it
        assert mine.texts == theirs.texts
        assert mine.texts[0].startswith(protocol.prompts()[0])


# ---------------------------------------------------------------------------- the command


def test_bad_input_is_one_line(gpt2, folders, tmp_path, capsys, monkeypatch):
    tiny = gpt2
    cases = [
        (["evaluate", "--data", str(folders["bpe"])], "--checkpoint"),
        (["evaluate", "--hf", str(tiny), "--checkpoint", "x"], "--checkpoint"),
        (["evaluate", "--hf", str(tiny)], "--hf needs --data"),
        (["evaluate", "--hf", str(tmp_path / "none"), "--data", str(folders["bpe"])], "no such folder"),
        (["evaluate", "--hf", str(tiny), "--data", str(folders["bpe"]), "--window", str(2 * WINDOW)], "positions"),
        (["evaluate", "--hf", str(tiny), "--data", str(folders["bpe"]), "--by_context"], "--by_context is for gpt-study checkpoints"),
        (["evaluate", "--hf", str(tiny), "--data", str(folders["bpe"]), "--quantize", "int8"], "--quantize is for gpt-study checkpoints"),
    ]  # fmt: skip
    for argv, want in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and want in err[0], (argv, err)
    monkeypatch.setitem(sys.modules, "transformers", None)  # import transformers fails
    assert main(["evaluate", "--hf", str(tiny), "--data", str(folders["bpe"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[export]"' in err[0]


def test_compare_puts_published_models_beside_a_run(gpt2, folders, tmp_path, capsys):
    tiny = gpt2
    from gpt_study.train.fit import fit
    from gpt_study.train.setup import build_config

    train = dict(data=str(folders["bpe"]), save_root=str(tmp_path / "run"), context_size=16,
                 batch_size=4, epoch=1, iters_per_epoch=4, dtype="float32", sample_tokens=0,
                 warmup_steps=0, eval_iters=0)  # fmt: skip
    fit(build_config("tiny", train=train, model=dict(max_len=16, d_model=32, d_ff=64,
                                                      n_layers=2, n_heads=4)))  # fmt: skip
    report = tmp_path / "eval.json"
    argv = ["evaluate", "--hf", str(tiny), "--data", str(folders["bpe"]), "--no_stories"]
    assert main([*argv, "--json", str(report)]) == 0
    out = tmp_path / "cmp"
    argv = ["compare", str(tmp_path / "run"), "--hf", str(tiny), "--evaluated", str(report)]
    assert main([*argv, "--no_stories", "--out", str(out)]) == 0
    result = json.loads((out / "compare.json").read_text())
    refs = result["references"]
    assert [r["source"] for r in refs] == [f"evaluate JSON {report}", "--hf"]
    want = json.loads(report.read_text())["valid"]["bits_per_byte"]
    assert refs[0]["bits_per_byte"] == refs[1]["bits_per_byte"] == pytest.approx(want)
    assert (
        len(result["runs"]) == 1 and "## Models beside the runs" in (out / "compare.md").read_text()
    )
    assert "models beside the runs" in capsys.readouterr().out
