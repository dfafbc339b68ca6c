"""A full disk in the middle of a write: one line naming the path and the space, exit code 2,
temp files removed, and what was there before (the last good checkpoint, an exported folder)
untouched; the command then works once space is back."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from gpt_study import checkpoint
from gpt_study.cli import main


def _full(real, after: int):
    """``real``, failing with ENOSPC from its ``after``-th call on (counting from 0)."""
    calls = []

    def write(*args, **kw):
        calls.append(1)
        if len(calls) > after:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kw)

    return write


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


TRAIN = ["--preset", "tiny", "--max_len", "32", "--d_model", "32", "--d_ff", "64"]
TRAIN += ["--n_layers", "1", "--context_size", "16", "--batch_size", "4", "--iters_per_epoch", "2"]
TRAIN += ["--sample_tokens", "0", "--eval_iters", "1", "--dtype", "float32"]


def test_a_full_disk_while_training_keeps_the_last_checkpoint(
    tiny_prepared, tmp_path, capsys, monkeypatch
):
    root = tmp_path / "run"
    argv = ["train", "--data", str(tiny_prepared), "--save_root", str(root), *TRAIN]
    assert main([*argv, "--epoch", "1"]) == 0
    last = _snapshot(root / "last")
    capsys.readouterr()
    monkeypatch.setattr(checkpoint, "save_file", _full(checkpoint.save_file, 0))
    assert main(["train", "--save_root", str(root), "--resume", "--epoch", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no space left on the disk" in err and str(root / "last") in err, err
    assert "free" in err and "needed" in err and "still holds what it held before" in err
    assert _snapshot(root / "last") == last  # the last good checkpoint, byte for byte
    assert _hidden(root) == [] and _hidden(tmp_path) == []  # no temp folder, no lock left
    monkeypatch.undo()
    assert main(["train", "--save_root", str(root), "--resume", "--epoch", "2"]) == 0


def test_a_full_disk_while_exporting_keeps_the_folder_there(tiny_prepared, tmp_path, capsys):
    pytest.importorskip("transformers")
    from gpt_study.export import folder as export_folder

    root, out = tmp_path / "run", tmp_path / "hf"
    assert main(["train", "--data", str(tiny_prepared), "--save_root", str(root), *TRAIN]) == 0
    assert main(["export", "--checkpoint", str(root / "best"), "--out", str(out)]) == 0
    before = _snapshot(out)
    capsys.readouterr()
    mp = pytest.MonkeyPatch()
    mp.setattr(export_folder, "save_file", _full(export_folder.save_file, 0))
    try:
        assert main(["export", "--checkpoint", str(root / "best"), "--out", str(out)]) == 2
    finally:
        mp.undo()
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no space left on the disk" in err and str(out) in err, err
    assert _snapshot(out) == before and _hidden(tmp_path) == []


def test_a_full_disk_while_preparing_leaves_no_temp_folder(tmp_path, capsys, monkeypatch):
    from gpt_study.data.prepare import folder as prepare_folder

    corpus = tmp_path / "corpus.txt"
    story = "once upon a time there was a cat . the cat liked to play in the park all day . " * 6
    corpus.write_text("\n<|endoftext|>\n".join([story] * 30))
    monkeypatch.setattr(
        prepare_folder, "write_json_atomic", _full(prepare_folder.write_json_atomic, 0)
    )
    out = tmp_path / "out"
    argv = ["prepare", "--data", str(corpus), "--out", str(out), "--tokenizer", "byte"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "no space left on the disk" in err and str(out) in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


@pytest.mark.parametrize("code", [errno.EACCES, errno.EPERM, errno.EROFS])
def test_a_folder_it_may_not_write_is_named_with_the_way_out(tmp_path, code):
    """A permission or read-only file system that no command foresaw: the line names the file
    the user asked for (not the hidden temp name the write went to) and how to get past it."""
    from gpt_study.runtime.files import os_error_line, temp_name

    target = tmp_path / "ro" / "e.json"
    line = os_error_line(OSError(code, os.strerror(code), str(temp_name(target))))
    assert line.startswith(f"cannot write to {target} (") and ".tmp-" not in line
    assert f"change the permissions of {target.parent}" in line
    full = os_error_line(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(target)))
    assert "no space left" in full and ".tmp-" not in full
    assert os_error_line(OSError(errno.EIO, "I/O error", "x")) == "I/O error: x"


def test_every_command_reports_an_unforeseen_permission_error_in_one_line(
    tiny_prepared, tmp_path, capsys, monkeypatch
):
    """The CLI's one handler: here plot's atomic rename refused, as a read-only folder would."""
    from conftest import one_layer_run

    run = one_layer_run(tiny_prepared, tmp_path / "run")
    out = tmp_path / "x.png"

    def refuse(src, dst):
        raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), str(src))

    monkeypatch.setattr(os, "replace", refuse)
    assert main(["plot", "--save_root", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"cannot write to {out} (" in err[0], err
