"""examples/minimal.py, the library walk the README points to, runs and writes a story."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT.parent / "shared" / "data" / "tinystories"
END = "<|endoftext|>\n"


def _slice(folder: Path, stories: dict[str, int]) -> Path:
    """The first stories of each split of the shared sample, in its own format: prepare takes
    a second or two instead of the whole sample's several."""
    folder.mkdir()
    for name, n in stories.items():
        text = (SAMPLE / name).read_text(encoding="utf-8")
        (folder / name).write_text(END.join(text.split(END)[:n]) + END, encoding="utf-8")
    return folder


@pytest.mark.skipif(
    not (SAMPLE / "train.txt").exists(), reason="../shared/data/tinystories (the sample) is absent"
)
def test_the_minimal_example_prepares_trains_and_writes_a_story(tmp_path):
    corpus = _slice(tmp_path / "corpus", {"train.txt": 200, "valid.txt": 40})
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "examples" / "minimal.py"), str(corpus), "--out", str(out)]
    done = subprocess.run(
        [*cmd, "--steps", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    story = done.stdout.strip().split("\n\n")[-1]
    assert story.lower().startswith("once upon a time"), done.stdout[-2000:]
    assert len(story.split()) > len("once upon a time".split()) + 3, story
    assert (out / "run" / "best" / "model.safetensors").exists()
    assert (out / "data" / "meta.json").exists()
