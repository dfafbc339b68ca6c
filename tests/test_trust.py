"""Trust: what a new user's mistakes do. Each refused case exits 2 with one line, no traceback,
and leaves every file as it was (the folder tree before and after is compared)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import one_layer_run, write_prepared
from gpt_study.cli import main
from gpt_study.train.setup import build_config

MODEL = ["--max_len", "32", "--d_model", "32", "--d_ff", "64", "--n_layers", "1", "--n_heads", "4"]
SHORT = ["--context_size", "16", "--batch_size", "4", "--epoch", "1", "--iters_per_epoch", "2"]
SHORT += ["--dtype", "float32", "--sample_tokens", "0"]


def tree(*roots: Path) -> dict[str, tuple[int, int]]:
    """Every file and folder under ``roots``: (size, modification time)."""
    out = {}
    for root in roots:
        for p in [root, *root.rglob("*")] if root.exists() else []:
            st = p.stat()
            out[str(p)] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def refused(argv: list[str], capsys, *roots: Path) -> str:
    """Run ``gpt-study argv``: exit 2, one line on stderr, no file written or deleted."""
    before = tree(*roots)
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert tree(*roots) == before, "files changed"
    return err


@pytest.fixture
def corpus(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    story = "once upon a time there was a cat . the cat liked to play in the park all day . " * 6
    (folder / "train.txt").write_text("\n<|endoftext|>\n".join([story] * 20))
    (folder / "valid.txt").write_text("\n<|endoftext|>\n".join([story] * 4))
    (folder / "notes.md").write_text("my notes")
    return folder


# ---------------------------------------------------------------- 1. nothing lost


def test_prepare_never_replaces_its_input(corpus, capsys):
    err = refused(
        ["prepare", "--data", str(corpus), "--out", str(corpus), "--force"], capsys, corpus
    )
    assert "holds the input" in err


def test_prepare_never_replaces_the_working_directory(corpus, tmp_path, capsys, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = ["prepare", "--data", str(corpus), "--out", ".", "--force"]
    assert "working directory" in refused(argv, capsys, tmp_path)


def test_prepare_force_never_replaces_a_folder_it_did_not_write(corpus, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "meta.json").write_text('{"fingerprint": "x", "splits": {}}')  # looks like ours
    (mine / "thesis.tex").write_text("years of work")
    argv = ["prepare", "--data", str(corpus), "--out", str(mine), "--force"]
    assert "did not write (thesis.tex)" in refused(argv, capsys, tmp_path)


def test_prepare_force_replaces_its_own_folder(corpus, tmp_path, capsys):
    out = tmp_path / "prepared"
    base = ["prepare", "--data", str(corpus / "train.txt"), str(corpus / "valid.txt")]
    base += ["--out", str(out), "--min_chars", "10", "--no-progress"]
    assert main(base) == 0
    assert main(base + ["--min_freq", "1", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "meta.json",
        "tokenizer.json",
        "train.bin",
        "valid.bin",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no debris


def test_train_never_starts_in_a_folder_holding_other_files(tiny_prepared, tmp_path, capsys):
    root = tmp_path / "run"
    root.mkdir()
    (root / "config.json").write_text("{}")  # a user's own file of the same name
    (root / "paper.pdf").write_bytes(b"%PDF")
    argv = ["train", "--data", str(tiny_prepared), "--save_root", str(root), *SHORT, *MODEL]
    assert "did not write (paper.pdf)" in refused(argv, capsys, tmp_path, tiny_prepared)


def test_train_never_writes_into_the_working_directory(
    tiny_prepared, tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--data", str(tiny_prepared), "--save_root", ".", *SHORT, *MODEL]
    assert "working directory" in refused(argv, capsys, tmp_path)


# ---------------------------------------------------------------- 3. flags checked at the door


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--lr", "-1"], "--lr -1.0 is out of range: use a value > 0"),
        (["--lr", "nan"], "--lr nan is out of range"),
        (["--lr", "inf"], "--lr inf is out of range"),
        (["--lr_betas", "1.5", "0.9"], "--lr_betas 1.5 0.9 is out of range: use a value in [0, 1)"),
        (["--attention_drop", "1.5"], "--attention_drop 1.5 is out of range"),
        (["--eval_iters", "-1"], "--eval_iters -1 is out of range: use a value >= 0"),
        (["--weight_decay", "-1"], "--weight_decay -1.0 is out of range"),
        (["--grad_clip", "-1"], "--grad_clip -1.0 is out of range"),
        (["--threads", "-1"], "--threads -1 is out of range"),
        (["--warmup_steps", "-50"], "--warmup_steps -50 is out of range"),
        (["--max_steps", "-1"], "--max_steps -1 is out of range"),
        (["--max_time", "-1"], "--max_time -1.0 is out of range"),
        (["--batch_size", "0"], "--batch_size 0 is out of range: use a value >= 1"),
        (["--label_smoothing", "1"], "--label_smoothing 1.0 is out of range"),
    ],
)
def test_train_refuses_out_of_range_flags_before_writing(
    tiny_prepared, tmp_path, capsys, flags, message
):
    argv = ["train", "--data", str(tiny_prepared), "--save_root", str(tmp_path / "r"), *SHORT]
    assert message in refused(argv + MODEL + flags, capsys, tmp_path, tiny_prepared)


def test_prepare_refuses_negative_min_chars(corpus, tmp_path, capsys):
    argv = ["prepare", "--data", str(corpus), "--out", str(tmp_path / "o"), "--min_chars", "-5"]
    assert "--min_chars -5 is out of range: use a value >= 0" in refused(argv, capsys, tmp_path)


def test_train_vocab_size_names_the_prepared_folder(tiny_prepared, tmp_path, monkeypatch):
    """--vocab_size is one setting: the data section's, which names <dataset_root>/word-<N>."""
    root = tmp_path / "data"
    write_prepared(root / "word-51")
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--dataset_root", "data", "--vocab_size", "51", "--save_root", "r", *SHORT]
    assert main(argv + MODEL) == 0
    cfg = build_config(train={"save_root": "r"}, resume=True)
    assert cfg.data.vocab_size == 51 and cfg.model.vocab_size == 51


# ---------------------------------------------------------------- generate's flags


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_prepared):
    root = tmp_path_factory.mktemp("trust") / "run"
    return one_layer_run(tiny_prepared, root)


def test_generate_greedy_ignores_the_temperature(run, capsys):
    argv = ["generate", "--checkpoint", str(run / "best"), "--greedy", "--temperature", "0"]
    assert main(argv + ["--max_new_tokens", "4"]) == 0


@pytest.mark.parametrize(
    "flags,message",
    [
        (["--max_new_tokens", "0"], "--max_new_tokens 0 is out of range: use a value >= 1"),
        (["--context_size", "0"], "--window 0 is out of range: use a window of at least 1"),
        (["--window", "17"], "--window 17 is longer than the 16 positions this model was trained"),
        (["--temperature", "-1"], "or --greedy"),
        (["--top_p", "0"], "--top_p 0.0 is out of range: use a value in (0, 1]"),
    ],
)
def test_generate_refuses_bad_flags(run, capsys, flags, message):
    err = refused(["generate", "--checkpoint", str(run / "best"), *flags], capsys, run)
    assert message in err and err.count("--") <= 2, err


def test_the_window_defaults_to_the_trained_one_and_context_size_is_its_alias(run, capsys):
    base = ["generate", "--checkpoint", str(run / "best"), "--greedy", "--max_new_tokens", "2"]
    for flags, window in (([], 16), (["--context_size", "8"], 8), (["--window", "12"], 12)):
        assert main(base + flags) == 0
        assert f"window {window}" in capsys.readouterr().err


def test_evaluate_from_another_directory(run, tmp_path, monkeypatch, capsys):
    """The checkpoint records its data folder as an absolute path."""
    monkeypatch.chdir(tmp_path)
    argv = ["evaluate", "--checkpoint", str(run / "best"), "--no_stories", "--max_rows", "2"]
    assert main(argv) == 0
    assert "bits per byte" in capsys.readouterr().out


def test_model_weights_are_as_readable_as_the_other_files(run):
    modes = {p.name: p.stat().st_mode & 0o777 for p in (run / "last").iterdir()}
    assert len(set(modes.values())) == 1, modes
    assert os.access(run / "last" / "model.safetensors", os.R_OK)


# ---------------------------------------------------------------- 2. damaged files


def test_evaluate_a_run_folder_names_its_checkpoints(run, capsys):
    err = refused(["evaluate", "--checkpoint", str(run)], capsys, run)
    assert "is a run folder" in err and str(run / "best") in err


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "state.json"])
def test_a_damaged_last_says_whether_best_can_be_used(run, tmp_path, capsys, name):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    f = copy / "last" / name
    f.write_bytes(f.read_bytes()[:10])
    err = refused(["train", "--save_root", str(copy), "--resume"], capsys, copy)
    assert f"{f} is damaged" in err and "best (step 2) is intact" in err


def test_a_damaged_prepared_folder_names_the_file_and_the_fix(tmp_path, capsys):
    import json

    folder = write_prepared(tmp_path / "data")
    meta = json.loads((folder / "meta.json").read_text())
    del meta["splits"]
    (folder / "meta.json").write_text(json.dumps(meta))
    argv = ["train", "--data", str(folder), "--save_root", str(tmp_path / "r"), *SHORT, *MODEL]
    err = refused(argv, capsys, tmp_path)
    assert "meta.json is damaged" in err and f"--out {folder} --force" in err
