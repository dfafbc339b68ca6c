"""Inputs are checked for what they hold, not only their size: ids beyond the vocabulary, weights
that are not finite, JSON of the wrong shape, a corpus from which no story survives. Each gets
exit code 2, one line naming the file and the fix, and nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from conftest import one_layer_run
from gpt_study.cli import main
from gpt_study.data.tokenizer import load_tokenizer
from test_trust import refused


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_prepared):
    root = tmp_path_factory.mktemp("inputs") / "run"
    return one_layer_run(tiny_prepared, root)


@pytest.fixture
def copy(run, tmp_path):
    """A copy of the run's best checkpoint, to damage."""
    return shutil.copytree(run / "best", tmp_path / "ckpt")


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("command", ["generate", "evaluate"])
def test_weights_that_are_not_finite_are_refused_at_load(copy, capsys, value, command):
    weights = load_file(str(copy / "model.safetensors"))
    name = sorted(weights)[-1]
    weights[name].view(-1)[0] = value
    save_file(weights, str(copy / "model.safetensors"))
    argv = [command, "--checkpoint", str(copy)]
    argv += ["--prompt", "a"] if command == "generate" else ["--no_stories", "--max_rows", "1"]
    err = refused(argv, capsys, copy)
    assert f"weight {name} holds NaN or infinite values" in err


@pytest.mark.parametrize("content", ["[1, 2]", '"state"', "7"])
def test_a_state_json_that_is_not_an_object_is_damaged(run, tmp_path, capsys, content):
    ckpt = shutil.copytree(run / "last", tmp_path / "last")
    (ckpt / "state.json").write_text(content)
    err = refused(["generate", "--checkpoint", str(ckpt), "--prompt", "a"], capsys, ckpt)
    assert "state.json is damaged" in err and "not an object" in err


@pytest.mark.parametrize("split", ["train", "valid"])
def test_ids_beyond_the_vocabulary_are_refused_when_a_folder_is_opened(
    tiny_prepared, run, tmp_path, capsys, split
):
    data = shutil.copytree(tiny_prepared, tmp_path / "data")
    meta = json.loads((data / "meta.json").read_text())
    vocab = load_tokenizer(data / "tokenizer.json").vocab_size
    meta["vocab_size"] = vocab
    (data / "meta.json").write_text(json.dumps(meta))
    ids = np.fromfile(data / f"{split}.bin", dtype=np.uint16)
    ids[len(ids) // 2] = vocab + 5
    ids.tofile(data / f"{split}.bin")
    argv = ["evaluate", "--checkpoint", str(run / "best"), "--data", str(data), "--no_stories"]
    err = refused(argv, capsys, data)
    assert f"{split}.bin holds token id {vocab + 5}, beyond the vocabulary of {vocab}" in err


@pytest.mark.parametrize(
    "text,cause",
    [
        ("once upon a time " * 50000, "leaving none to train on"),  # one long story
        ("<|endoftext|>\n<|endoftext|>\n", "hold no story"),
        ("a short one\n<|endoftext|>\nanother", "shorter than --min_chars 300"),
    ],
    ids=["one-long-story", "empty", "all-short"],
)
def test_prepare_names_the_real_cause_when_no_story_survives(tmp_path, capsys, text, cause):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(text)
    out = tmp_path / "out"
    argv = ["prepare", "--data", str(corpus), "--out", str(out), "--tokenizer", "byte"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and cause in err and "no train story" in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]  # no temp folder left


@pytest.mark.parametrize("command", ["generate", "evaluate", "export"])
def test_a_tokenizer_of_the_same_size_from_elsewhere_is_refused(copy, capsys, command):
    """Another run's tokenizer.json of the same vocabulary size decodes every id into another
    word: the digest recorded at save time catches it in every command that loads the folder."""
    tok = load_tokenizer(copy / "tokenizer.json")
    words = list(tok.vocab)
    words[3:] = reversed(words[3:])  # the same words and size, other ids
    type(tok)(words, lowercase=tok.lowercase).save(copy / "tokenizer.json")
    argv = {
        "generate": ["generate", "--checkpoint", str(copy), "--prompt", "a"],
        "evaluate": ["evaluate", "--checkpoint", str(copy), "--no_stories", "--max_rows", "1"],
        "export": ["export", "--checkpoint", str(copy), "--out", str(copy.parent / "hf")],
    }[command]
    err = refused(argv, capsys, copy.parent)
    assert "is not the tokenizer this model was saved with" in err


def _stories(word: str, n: int) -> str:
    story = f"once upon a time there was a {word} . the {word} liked to play in the park . " * 6
    return "\n<|endoftext|>\n".join([story] * n)


def test_resume_on_a_folder_prepared_again_from_another_corpus_is_refused(tmp_path, capsys):
    """prepare --force of another corpus into a run's data folder, then --resume: the ids mean
    other text now; the run's recorded digests say so before a step is taken."""
    corpus, data, root = tmp_path / "corpus.txt", tmp_path / "data", tmp_path / "run"
    corpus.write_text(_stories("cat", 40))
    prep = ["prepare", "--data", str(corpus), "--out", str(data), "--tokenizer", "byte"]
    assert main(prep) == 0
    train = ["train", "--preset", "tiny", "--data", str(data), "--save_root", str(root)]
    train += ["--max_len", "32", "--d_model", "32", "--d_ff", "64", "--n_layers", "1"]
    train += ["--context_size", "16", "--batch_size", "4", "--epoch", "1"]
    train += ["--iters_per_epoch", "2", "--sample_tokens", "0", "--eval_iters", "1"]
    assert main(train) == 0
    corpus.write_text(_stories("dog", 60))
    assert main([*prep, "--force"]) == 0
    capsys.readouterr()
    resume = ["train", "--save_root", str(root), "--resume", "--epoch", "2"]
    err = refused(resume, capsys, root)
    assert f"{data} changed since this run started" in err and "train.bin" in err


@pytest.mark.parametrize(
    "edit,words",
    [
        (lambda d: [d], "is not a table of settings"),
        (lambda d: {**d, "model": {**d["model"], "n_layers": None}}, "--n_layers None is not"),
        (lambda d: {**d, "model": {**d["model"], "d_model": "32"}}, "--d_model '32' is not"),
        (lambda d: {**d, "model": 7}, "is not a table of settings"),
        (lambda d: {**d, "sample": {**d["sample"], "top_p": [1]}}, "--top_p [1] is not"),
        (lambda d: {**d, "train": {**d["train"], "lr_schedule": "wavy"}}, "unknown --lr_schedule"),
        (lambda d: {**d, "train": {**d["train"], "dtype": "fp8"}}, "unknown --dtype 'fp8'"),
        (lambda d: {**d, "bogus": {}}, "a gpt-study config holds only model, train"),
    ],
    ids=["list", "null", "string", "section", "list-for-number", "schedule", "dtype", "unknown"],
)
def test_a_config_json_of_the_wrong_shape_is_one_line_naming_it(copy, capsys, edit, words):
    d = json.loads((copy / "config.json").read_text())
    flat = {
        **d,
        "train": {k: v for s in d["train"].values() if isinstance(s, dict) for k, v in s.items()},
    }
    flat["train"].update({k: v for k, v in d["train"].items() if not isinstance(v, dict)})
    (copy / "config.json").write_text(json.dumps(edit(flat)))
    err = refused(["generate", "--checkpoint", str(copy), "--prompt", "a"], capsys, copy)
    assert words in err and "config.json" in err, err


def test_a_prompt_file_that_is_not_utf8_is_one_line(run, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes(b"once upon a time\n" + b"\xff\xfe caf\xe9\n")
    argv = ["generate", "--checkpoint", str(run / "best"), "--prompt_file", str(prompts)]
    err = refused(argv, capsys, tmp_path)
    assert "is not UTF-8 text" in err


@pytest.mark.parametrize("command", ["generate", "evaluate", "export", "serve"])
@pytest.mark.parametrize("missing", ["tokenizer.json", "config.json"])
def test_a_checkpoint_missing_a_file_names_it_and_the_fix(copy, capsys, command, missing):
    (copy / missing).unlink()
    argv = {
        "generate": ["generate", "--checkpoint", str(copy), "--prompt", "a"],
        "evaluate": ["evaluate", "--checkpoint", str(copy), "--no_stories"],
        "export": ["export", "--checkpoint", str(copy), "--out", str(copy.parent / "hf")],
        "serve": ["serve", "--checkpoint", str(copy), "--port", "0"],
    }[command]
    if command in ("export", "serve"):
        pytest.importorskip("transformers" if command == "export" else "fastapi")
    err = refused(argv, capsys, copy.parent)
    assert f"not a complete checkpoint (no {missing})" in err, err


def test_flags_and_files_are_named_as_the_user_gave_them(run, tmp_path, capsys):
    """The flag a message names is one the command has; a damaged file is called damaged; a file
    given for a folder is told how to become one."""
    err = refused(["evaluate", "--checkpoint", str(run / "best"), "--samples", "0"], capsys, run)
    assert "--samples 0 is out of range" in err
    metrics = tmp_path / "r" / "metrics.jsonl"
    metrics.parent.mkdir()
    metrics.write_text("not a record\n")
    err = refused(["plot", "--save_root", str(metrics.parent)], capsys, tmp_path)
    assert "it is damaged or not a run's metrics" in err
    corpus = tmp_path / "train.txt"
    corpus.write_text("once upon a time")
    argv = ["train", "--preset", "tiny", "--data", str(corpus), "--save_root", str(tmp_path / "x")]
    err = refused(argv, capsys, tmp_path)
    assert f"{corpus} is a file, not a prepared folder" in err and "--out <a new folder>" in err
