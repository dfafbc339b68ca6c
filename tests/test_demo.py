"""The demo, the README's first command, runs every stage on the shared sample (a few steps)."""

import json
from pathlib import Path

import pytest

from gpt_study.cli import main

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "tinystories"


@pytest.mark.skipif(not (SAMPLE / "train.txt").exists(), reason="../shared sample not present")
def test_demo_trains_the_cpu_preset_on_bpe(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--data", str(SAMPLE), "--out", str(out), "--max_steps", "2"])
    assert code == 0
    meta = json.loads((out / "data" / "meta.json").read_text())
    assert meta["tokenizer"] == "bpe"
    cfg = json.loads((out / "run" / "best" / "config.json").read_text())
    assert cfg["model"]["positions"] == "rope" and cfg["model"]["mlp"] == "swiglu"
    budget = cfg["train"]["budget"]
    assert budget["fit_epochs"] and budget["max_time"] == 10  # the schedule fits the 10 minutes
    assert (out / "run" / "loss.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "$ gpt-study generate" in printed and "bits per byte" in printed
