"""Flushing before publishing: :func:`gpt_study.runtime.files.fsync_path` is the one fsync, and both an
atomic file write and a checkpoint save flush every file they publish through it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gpt_study.checkpoint import save_checkpoint
from gpt_study.config.presets import preset_config
from gpt_study.model.gpt import GPT
from gpt_study.runtime.files import fsync_path, write_text_atomic

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
