"""Usage errors, in every command: one line that says where to look, exit code 2, nothing
written (a wrong flag used to print the whole usage, 39 lines for train)."""

from __future__ import annotations

import pytest

from gpt_study.cli import COMMANDS, main


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("flags", [["--no_such_flag"], ["--help_me", "x"]])
def test_a_usage_error_is_one_line_naming_help(command, flags, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([command, *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"gpt-study {command}: error:") and f"gpt-study {command} --help" in err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "argv,words",
    [
        (["nosuch"], "unknown command 'nosuch'"),
        (["--bogus"], "gpt-study --help"),
        (["train", "--preset", "unknown"], "invalid choice: 'unknown'"),
        (["train", "--lr"], "expected one argument"),
    ],
)
def test_top_level_and_value_errors_are_one_line(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "flags,words",
    [
        (["--preset", "nope"], "unknown preset 'nope'"),
        (["--tokenizer", "nope"], "unknown --tokenizer 'nope'"),
        (["--minutes", "-1"], "--max_time -1.0 is out of range"),
        (["--epoch", "-2"], "--epoch -2 is out of range"),
        (["--max_steps", "-1"], "--max_steps -1 is out of range"),
        (["--data", "no/such/corpus"], "no such file or folder"),
    ],
)
def test_demo_checks_every_flag_before_writing_anything(flags, words, capsys, tmp_path):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "there,flags,words",
    [
        ("last", [], "already holds a run: pass --resume"),  # a second demo without --resume
        ("notes.txt", [], "holds files gpt-study did not write (notes.txt)"),
        (None, ["--resume"], "holds no checkpoint 'last'"),
    ],
)
def test_demo_checks_its_run_folder_before_prepare_writes(there, flags, words, capsys, tmp_path):
    """The demo's run folder follows train's --save_root rule, checked before prepare writes out/data
    (a second demo used to prepare its data again and only then stop in train)."""
    out = tmp_path / "demo"
    if there is not None:
        (out / "run").mkdir(parents=True)
        target = out / "run" / there
        target.mkdir() if there == "last" else target.write_text("mine")
    assert main(["demo", "--out", str(out), "--max_steps", "1", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err, err
    assert not (out / "data").exists()
