"""Flushing before publishing: :func:`gpt_study.runtime.files.fsync_path` is the one fsync, and both an
atomic file write and a checkpoint save flush every file they publish through it."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_study.checkpoint import save_checkpoint
from gpt_study.cli import main as cli_main
from gpt_study.config.presets import preset_config
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import TMP_MARK, fsync_path, old_name, temp_name, write_text_atomic

pytestmark = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names fds via /proc")


@pytest.fixture
def flushed(monkeypatch) -> list[str]:
    """Names of the files os.fsync was called on (read from /proc before the fd closes)."""
    names: list[str] = []
    real = os.fsync

    def spy(fd: int) -> None:
        names.append(os.path.basename(os.readlink(f"/proc/self/fd/{fd}")))
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    return names


def test_fsync_path_flushes_a_file_and_every_file_under_a_folder(tmp_path, flushed):
    (tmp_path / "a").write_text("a")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b").write_text("b")
    fsync_path(tmp_path / "a")
    assert flushed == ["a"]
    fsync_path(tmp_path)
    assert sorted(flushed[1:]) == ["a", "b"]


def test_an_atomic_write_and_a_checkpoint_flush_what_they_publish(tiny_prepared, tmp_path, flushed):
    write_text_atomic(tmp_path / "note.txt", "hi")
    assert flushed == [f".note.txt.tmp-{os.getpid()}"]  # flushed under its temp name
    cfg = preset_config("tiny", model=dict(vocab_size=51, d_model=32, n_heads=4, n_layers=1))
    folder = save_checkpoint(
        tmp_path / "c", GPT(cfg.model), cfg, tiny_prepared / "tokenizer.json", {"step": 1}
    )
    assert {p.name for p in folder.iterdir()} <= set(flushed)


def _dead_pid() -> int:
    """The pid of a process that has ended: a writer killed before it could clean up."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _folder_writer(kind: str, tmp_path: Path, tiny_prepared: Path):
    """(module whose publish_folder the writer calls, write(out) -> None) for each folder writer."""
    if kind == "checkpoint":
        import gpt_study.checkpoint as module

        cfg = preset_config("tiny", model=dict(vocab_size=51, d_model=32, n_heads=4, n_layers=1))
        model, tok = GPT(cfg.model), tiny_prepared / "tokenizer.json"
        return module, lambda out: save_checkpoint(out, model, cfg, tok, {"step": 1})
    if kind == "prepare":
        import gpt_study.data.prepare.folder as module

        corpus = tmp_path / "corpus"
        corpus.mkdir()
        story = "Once upon a time, a cat sat on a warm mat in the sun and was happy all day long."
        (corpus / "train.txt").write_text(f"{story}\n<|endoftext|>\n" * 8, encoding="utf-8")
        argv = ["prepare", "--data", str(corpus), "--tokenizer", "byte", "--min_chars", "10"]
        argv += ["--valid_fraction", "0.25", "--workers", "1", "--no_progress", "--force"]
        return module, lambda out: cli_main([*argv, "--out", str(out)]) == 0 or _raise()
    pytest.importorskip("transformers")
    import gpt_study.export.folder as module
    from test_export import _bpe, _checkpoint

    ckpt = _checkpoint(tmp_path, _bpe(), head_bias=False)
    return module, lambda out: module.export_hf(ckpt, out, log=lambda _: None)


def _raise():
    raise UserError("the writer failed")


@pytest.mark.parametrize("kind", ["checkpoint", "prepare", "export"])
def test_every_folder_writer_flushes_and_survives_killed_writers(
    kind, tiny_prepared, tmp_path, flushed, monkeypatch
):
    """One publishing rule for every folder gpt-study writes: each file flushed before the
    rename; temp folders of dead writers removed and a live writer's kept; a swap killed between
    its two renames finished back, so that a writer failing after it leaves the old folder."""
    module, write = _folder_writer(kind, tmp_path, tiny_prepared)
    out = tmp_path / "out"
    write(out)
    before = sorted(p.name for p in out.iterdir())
    assert set(before) <= set(flushed)
    os.replace(out, old_name(out))  # killed between the two renames: no folder at out
    dead = out.with_name(f".out{TMP_MARK}{_dead_pid()}")
    live = out.with_name(f".out{TMP_MARK}{os.getppid()}")  # the process that runs the tests
    for temp in (dead, live):
        temp.mkdir()
        (temp / "half.bin").write_bytes(b"half")

    def disk_full(tmp: Path, target: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(module, "publish_folder", disk_full)
    with pytest.raises((UserError, SystemExit)):
        write(out)
    assert sorted(p.name for p in out.iterdir()) == before  # the old folder, back in place
    assert not old_name(out).exists() and not temp_name(out).exists()
    assert not dead.exists() and (live / "half.bin").exists()
