"""Every single-file writer (plot's --out, evaluate's --json, compare's --out) goes through the one
guard, :func:`gpt_study.outputs.check_output_file`: across every writer and every kind of path it
must not write, exit 2, one line, nothing written or deleted. And the lock: one writer per run."""

from __future__ import annotations

import json
import multiprocessing
import os
import shutil
from pathlib import Path

import pytest

from conftest import one_layer_run
from gpt_study.cli import main
from gpt_study.outputs import check_output_file, is_own_file, mark
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.lock import folder_lock, lock_path
from test_trust import refused


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_prepared):
    root = tmp_path_factory.mktemp("outputs") / "run"
    return one_layer_run(tiny_prepared, root)


def _writers(run: Path) -> dict[str, list[str]]:
    """Each writer's command line, with the path to write left as {}."""
    return {
        "plot": ["plot", "--save_root", str(run), "--out", "{}"],
        "evaluate": ["evaluate", "--checkpoint", str(run / "best"), "--no_stories"]
        + ["--max_rows", "1", "--json", "{}"],
        # a transformers model: refused before it is loaded, so no folder is needed
        "evaluate --hf": ["evaluate", "--hf", str(run.parent / "no-model"), "--no_valid"]
        + ["--json", "{}"],
    }


def _targets(run: Path, prepared: Path, tmp: Path) -> dict[str, Path]:
    """Paths no writer may write, each with the words its one line must hold."""
    user = tmp / "user"
    user.mkdir(exist_ok=True)
    (user / "notes.txt").write_text("mine")
    (user / "folder").mkdir(exist_ok=True)
    return {
        "a user's file": user / "notes.txt",
        "a folder": user / "folder",
        "a missing folder": user / "nope" / "x.out",
        "a checkpoint's weights": run / "last" / "model.safetensors",
        "a checkpoint's config": run / "best" / "config.json",
        "a new file in a checkpoint": run / "best" / "extra.json",
        "the run's metrics": run / "metrics.jsonl",
        "the run's log": run / "info.log",
        "a prepared folder's meta": prepared / "meta.json",
        "a new file in a prepared folder": prepared / "extra.png",
    }


WORDS = {
    "a user's file": "was not written by gpt-study",
    "a folder": "is a folder",
    "a missing folder": "does not exist",
    "a checkpoint's weights": "inside a checkpoint",
    "a checkpoint's config": "inside a checkpoint",
    "a new file in a checkpoint": "inside a checkpoint",
    "the run's metrics": ("inside a run folder", "is an input"),  # plot reads it
    "the run's log": "inside a run folder",
    "a prepared folder's meta": "inside a prepared folder",
    "a new file in a prepared folder": "inside a prepared folder",
}


@pytest.mark.parametrize("writer", ["plot", "evaluate", "evaluate --hf"])
@pytest.mark.parametrize("target", list(WORDS))
def test_no_writer_writes_where_it_must_not(run, tiny_prepared, tmp_path, capsys, writer, target):
    path = _targets(run, tiny_prepared, tmp_path)[target]
    argv = [a.replace("{}", str(path)) for a in _writers(run)[writer]]
    err = refused(argv, capsys, run, tiny_prepared, tmp_path)
    words = WORDS[target]
    assert any(w in err for w in ((words,) if isinstance(words, str) else words)), err


COMPARE_OUTS = ["a user's compare.md", "a user's compare.json", "a file", "a run's metrics"]
COMPARE_OUTS += ["the best checkpoint", "the last checkpoint", "a prepared folder"]


@pytest.mark.parametrize("target", COMPARE_OUTS)
def test_compare_never_writes_its_reports_where_it_must_not(
    run, tiny_prepared, tmp_path, capsys, target
):
    """compare's --out is a folder: not a file, a checkpoint, a prepared folder, or one holding
    a user's compare.md or compare.json. (A run folder may hold its reports: they are none of
    the run's own files.)"""
    outs = {
        "a user's compare.md": tmp_path / "mine",
        "a user's compare.json": tmp_path / "mine",
        "a file": tmp_path / "notes.txt",
        "a run's metrics": run / "metrics.jsonl",
        "the best checkpoint": run / "best",
        "the last checkpoint": run / "last",
        "a prepared folder": tiny_prepared,
    }
    out = outs[target]
    if target.startswith("a user's"):
        out.mkdir()
        (out / target.split()[-1]).write_text("my own notes")
    elif target == "a file":
        out.write_text("mine")
    other = shutil.copytree(run, tmp_path / "other", ignore=shutil.ignore_patterns("*.lock"))
    argv = ["compare", str(run), str(other), "--out", str(out)]
    err = refused(argv, capsys, run, tiny_prepared, tmp_path)
    assert any(w in err for w in ("was not written by", "inside a", "is a file")), err


def test_each_writer_replaces_its_own_file_and_only_its_own(run, tmp_path, capsys):
    """A second run of the same writer replaces the file; another writer's file is refused."""
    png, js = tmp_path / "curves.png", tmp_path / "numbers.json"
    for _ in range(2):
        assert main(["plot", "--save_root", str(run), "--out", str(png)]) == 0
        argv = ["evaluate", "--checkpoint", str(run / "best"), "--no_stories", "--json", str(js)]
        assert main(argv + ["--max_rows", "1"]) == 0
    assert is_own_file(png, "plot") and is_own_file(js, "evaluate")
    assert json.loads(js.read_text())["written_by"] == mark("evaluate")
    assert main(["plot", "--save_root", str(run)]) == 0  # the run's own loss.png, redrawn
    capsys.readouterr()
    with pytest.raises(UserError, match="was not written by gpt-study plot"):
        check_output_file(js, "plot", "--out")  # evaluate's JSON is not plot's to replace


def test_an_output_that_is_an_input_is_refused(run, tmp_path):
    with pytest.raises(UserError, match="is an input of this command"):
        check_output_file(run / "metrics.jsonl", "plot", "--out", inputs=[run / "metrics.jsonl"])


def _hold(folder: str, ready, done) -> None:
    with folder_lock(folder, "--save_root"):
        ready.set()
        done.wait(30)


def test_a_second_writer_is_refused_with_the_holder_named_and_a_dead_holders_lock_is_taken(
    tmp_path,
):
    folder = tmp_path / "run"
    ctx = multiprocessing.get_context("spawn")
    ready, done = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(str(folder), ready, done))
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(UserError) as e, folder_lock(folder, "--save_root"):
            pass
        line = str(e.value)
        assert f"pid {holder.pid}" in line and "is being written by" in line
    finally:
        done.set()
        holder.join(30)
    assert not lock_path(folder).exists()  # released: the file went with it
    # a holder killed with its note still in the file: the OS lock is gone, so it is taken
    lock_path(folder).write_text(json.dumps({"pid": 999999, "host": "h", "since": "then"}))
    said = []
    with folder_lock(folder, "--save_root", warn=said.append):
        note = json.loads(lock_path(folder).read_text())
        assert note["pid"] == os.getpid()
    assert said and "pid 999999" in said[0] and "which is gone" in said[0]


@pytest.fixture
def held(tmp_path):
    """Hold the lock of a folder from another process while the test runs."""
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Event()
    procs = []

    def hold(folder: Path) -> int:
        ready = ctx.Event()
        proc = ctx.Process(target=_hold, args=(str(folder), ready, done))
        proc.start()
        procs.append(proc)
        assert ready.wait(30)
        return proc.pid

    yield hold
    done.set()
    for proc in procs:
        proc.join(30)


def test_a_second_prepare_into_one_folder_is_refused(tmp_path, capsys, held):
    corpus = tmp_path / "corpus.txt"
    story = "once upon a time there was a cat . the cat liked to play in the park all day . " * 6
    corpus.write_text("\n<|endoftext|>\n".join([story] * 20))
    out = tmp_path / "prepared"
    pid = held(out)
    argv = ["prepare", "--data", str(corpus), "--out", str(out), "--tokenizer", "byte"]
    err = refused(argv, capsys, tmp_path)
    assert "is being written by" in err and f"pid {pid}" in err


def test_a_second_train_on_one_run_folder_is_refused(tiny_prepared, tmp_path, capsys, held):
    """Two trainings (or a --resume while the run still writes) into one --save_root: the second
    gets one line naming the holder, and writes nothing."""
    root = tmp_path / "run"
    pid = held(root)
    argv = ["train", "--preset", "tiny", "--data", str(tiny_prepared), "--save_root", str(root)]
    argv += ["--max_len", "32", "--d_model", "32", "--d_ff", "64", "--n_layers", "1"]
    argv += ["--context_size", "16", "--batch_size", "4", "--max_steps", "1"]
    err = refused(argv, capsys, tmp_path)
    assert "is being written by" in err and f"pid {pid}" in err


def test_a_second_export_into_one_folder_is_refused(run, tmp_path, capsys, held):
    pytest.importorskip("transformers")
    out = tmp_path / "hf"
    pid = held(out)
    err = refused(["export", "--checkpoint", str(run / "best"), "--out", str(out)], capsys, run)
    assert "is being written by" in err and f"pid {pid}" in err
    assert not out.exists()


FOLDER_TARGETS = {
    "the working directory": (".", "working directory"),
    "a folder above it": ("..", "working directory"),
    "a folder holding a user's file": ("mine", "did not write (thesis.tex)"),
    # names every tool uses, written by another: each writer knows its folders by a mark
    # (state.json, meta.json, gpt_study_export.json, a run's config.json), not by names
    "another tool's config.json": ("cfg", "never replaces"),
    "another tool's tokenizer.json": ("tok", "never replaces"),
    # a run whose best/ holds a user's file: train refuses before it trains
    "a run folder whose best/ holds a user's file": ("runx", "never replaces"),
    # a trained checkpoint: import replaces only what it imported
    "a trained checkpoint": ("{best}", ""),
}


@pytest.mark.parametrize("writer", ["prepare", "train", "export", "import"])
@pytest.mark.parametrize("target", list(FOLDER_TARGETS))
def test_no_folder_writer_replaces_what_it_did_not_write(
    run, tiny_prepared, tmp_path, capsys, monkeypatch, writer, target
):
    """Every writer of a whole folder (prepare's --out, train's --save_root, export's and
    import's --out) refuses the working directory, a folder above it and a folder holding a
    user's file: one line, exit 2, nothing written."""
    if writer in ("export", "import"):
        pytest.importorskip("transformers", reason="the export extra")
    from test_trust import MODEL, SHORT

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("once upon a time there was a cat . the cat liked to play . " * 40)
    work = tmp_path / "work" / "here"
    work.mkdir(parents=True)
    (work / "mine").mkdir()
    (work / "mine" / "thesis.tex").write_text("years of work")
    for name in ("cfg", "tok"):
        (work / name).mkdir()
    (work / "cfg" / "config.json").write_text('{"my": "settings"}')
    (work / "tok" / "tokenizer.json").write_text('{"my": "vocabulary"}')
    (work / "runx" / "best").mkdir(parents=True)
    (work / "runx" / "best" / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    folder, words = FOLDER_TARGETS[target]
    folder = folder.format(best=run / "best")
    argv = {
        "prepare": ["prepare", "--data", str(corpus), "--out", folder, "--force"],
        "train": ["train", "--data", str(tiny_prepared), "--save_root", folder, *SHORT, *MODEL],
        "export": ["export", "--checkpoint", str(run / "best"), "--out", folder],
        "import": ["import", "--hf", str(tmp_path / "no-model"), "--out", folder],
    }[writer]
    err = refused(argv, capsys, tmp_path, run, tiny_prepared)
    assert words in err
    if target == "a trained checkpoint" and writer == "import":
        assert "is not a checkpoint gpt-study imported" in err
    own = {
        "config.json": ("train", "export", "import"),
        "tokenizer.json": ("prepare", "export", "import"),
    }
    if target.startswith("another tool's") and writer in own[target.split()[-1]]:
        assert " is not a" in err  # the writer's own name, known as another's by its mark
