"""compare: settings that differ, figures equal to the metrics files, the PNG, deterministic
stories (equal to evaluate's and the quality benchmark's: one story protocol), what cannot be
compared, and bad input as one line."""

from __future__ import annotations

import importlib.util
import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import tiny_fit, write_prepared
from gpt_study.checkpoint import load_for_inference
from gpt_study.cli import main
from gpt_study.compare import (
    JSON,
    MARKDOWN,
    PNG,
    RunData,
    StorySettings,
    compare_runs,
    compare_stories,
    differing_settings,
    load_runs,
)
from gpt_study.config import SampleConfig
from gpt_study.config.presets import preset_config
from gpt_study.evaluate.report import evaluate_stories
from gpt_study.evaluate.stories import OPENINGS, STORY_PROTOCOL, write_stories
from gpt_study.runs import read_metrics
from gpt_study.runtime.errors import UserError

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"
STORIES = StorySettings(openings=2, samples=2, seed=7, max_new_tokens=12)


def train_run(data: Path, save_root: Path, **kw) -> Path:
    tiny_fit(data, save_root, **{"sample_tokens": 0, "warmup_steps": 0, "eval_iters": 0, **kw})
    return save_root


@pytest.fixture(scope="module")
def runs(tiny_prepared, tmp_path_factory) -> dict[str, Path]:
    """Three tiny runs (about a second each): ``a`` and ``b`` differ in sp_weight and seed;
    ``w`` was trained on another vocabulary; ``empty`` has a config but no metrics yet."""
    root = tmp_path_factory.mktemp("runs")
    small = write_prepared(root / "word-small", vocab_size=20)
    out = {
        "a": train_run(tiny_prepared, root / "a", sp_weight=1.0, seed=1),
        "b": train_run(tiny_prepared, root / "b", sp_weight=2.0, seed=2, batch_size=8),
        "w": train_run(small, root / "w", seed=1),
    }
    (root / "empty").mkdir()
    shutil.copy(root / "a" / "config.json", root / "empty" / "config.json")
    out["empty"] = root / "empty"
    return out


def run_data(name: str, **train) -> RunData:
    cfg = preset_config("tiny", model={"vocab_size": 50}, train=train)
    return RunData(name, Path(name), cfg)


# ---------------------------------------------------------------------------- settings


def test_differing_settings_are_exactly_those_that_differ():
    same = dict(data="/x/data", save_root="/x/a", wb_name="one", progress=True)
    a = run_data("a", **same, sp_weight=1.0)
    b = run_data("b", **{**same, "save_root": "/y/b", "data": "/y/data"}, sp_weight=2.0)
    b.config.train.log.wb_name, b.config.train.log.progress = "two", False
    assert differing_settings([a, b]) == {"sp_weight": [1.0, 2.0]}  # paths and logging ignored
    c = run_data("c", **same, sp_weight=2.0, lr=1e-3, lr_betas=(0.9, 0.95))
    assert differing_settings([a, b, c]) == {
        "lr": [2e-3, 2e-3, 1e-3],
        "lr_betas": [[0.9, 0.98], [0.9, 0.98], [0.9, 0.95]],
        "sp_weight": [1.0, 2.0, 2.0],
    }
    assert differing_settings([a, run_data("a2", **same, sp_weight=1.0)]) == {}


def test_table_figures_equal_the_metrics_files(runs, tmp_path):
    result = compare_runs([str(runs["a"]), str(runs["b"])], tmp_path / "out")
    assert result["settings"] == {"batch_size": [4, 8], "seed": [1, 2], "sp_weight": [1.0, 2.0]}
    for row, name in zip(result["runs"], "ab", strict=True):
        records = read_metrics(runs[name] / "metrics.jsonl")
        valid = [r for r in records if r["kind"] == "valid"]
        train = [r for r in records if r["kind"] == "train"]
        best = min(valid, key=lambda r: r["valid_nll"])
        assert row["run"] == name
        assert row["final_valid_nll"] == valid[-1]["valid_nll"]
        assert row["final_valid_bpb"] == valid[-1]["valid_bpb"]
        assert row["final_valid_ppl"] == valid[-1]["valid_ppl"]
        assert row["valid_fraction"] == valid[-1]["valid_fraction"]
        assert (row["best_valid_nll"], row["best_step"]) == (best["valid_nll"], best["step"])
        assert row["best_valid_bpb"] == best["valid_bpb"]
        assert row["steps"] == records[-1]["step"] and row["tokens"] == records[-1]["tokens"]
        assert row["minutes"] == records[-1]["elapsed_s"] / 60
        rates = [r["tokens_per_s"] for r in train]
        assert row["tokens_per_s"] == pytest.approx(sum(rates) / len(rates))
    written = json.loads((tmp_path / "out" / JSON).read_text())
    assert written["runs"] == result["runs"] and written["settings"] == result["settings"]
    md = (tmp_path / "out" / MARKDOWN).read_text()
    assert "| sp_weight | 1.0 | 2.0 |" in md
    assert f"| best valid NLL | {result['runs'][0]['best_valid_nll']:.4f} (step" in md
    assert result["stories"] is None and "## Stories" not in md


def test_png_is_written(runs, tmp_path):
    compare_runs([str(runs["a"]), str(runs["b"])], tmp_path)
    data = (tmp_path / PNG).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_seeds_are_pooled_beside_the_setting(runs, tmp_path, tiny_prepared):
    c = train_run(tiny_prepared, tmp_path / "c", sp_weight=2.0, seed=1, batch_size=8)
    result = compare_runs([str(runs["a"]), str(runs["b"]), str(c)], tmp_path / "out")
    groups = {g["settings"]: g for g in result["groups"]}
    assert set(groups) == {"batch_size 4, sp_weight 1.0", "batch_size 8, sp_weight 2.0"}
    two = groups["batch_size 8, sp_weight 2.0"]
    nlls = [r["best_valid_nll"] for r in result["runs"][1:]]
    assert two["runs"] == ["b", "c"] and two["best_valid_nll_mean"] == pytest.approx(sum(nlls) / 2)
    assert two["best_valid_nll_spread"] == pytest.approx(max(nlls) - min(nlls))


# ---------------------------------------------------------------------------- stories


def test_stories_are_deterministic_and_the_same_prompts_for_every_run(runs):
    loaded, _ = load_runs([str(runs["a"]), str(runs["b"])])
    one = compare_stories(loaded, STORIES)
    assert one == compare_stories(loaded, STORIES)
    assert one["prompts"] == [OPENINGS[0]] * 2 + [OPENINGS[1]] * 2
    assert [s["run"] for s in one["runs"]] == ["a", "b"]
    for s in one["runs"]:
        assert len(s["texts"]) == 4 and s["metrics"]["stories"] == 4
        assert set(s["metrics"]) >= {"eot_share", "mean_length", "repeated_4gram", "distinct_2"}
    other = compare_stories(loaded, replace(STORIES, seed=8))
    assert other["runs"][0]["texts"] != one["runs"][0]["texts"]


def test_story_metrics_are_evaluates_on_the_same_openings(runs):
    """The oracle: with all openings, compare's figures are `evaluate`'s for the checkpoint."""
    loaded, _ = load_runs([str(runs["a"]), str(runs["b"])])
    settings = StorySettings(openings=len(OPENINGS), samples=3, seed=5, max_new_tokens=10)
    ours = compare_stories(loaded, settings)["runs"][0]["metrics"]
    ckpt = load_for_inference(str(runs["a"] / "best"))
    theirs = evaluate_stories(ckpt.model, ckpt.tokenizer, SampleConfig(), 16, settings.protocol())
    assert ours == {k: theirs[k] for k in ours}


def test_evaluate_compare_and_the_benchmark_write_the_same_stories(runs, tmp_path):
    """One protocol: at their defaults, compare (all openings), `gpt-study evaluate` as the
    quality benchmark runs it, and evaluate_stories write the same stories, capped at 512."""
    assert StorySettings(openings=len(OPENINGS)).protocol() == STORY_PROTOCOL
    loaded, _ = load_runs([str(runs["a"]), str(runs["b"])])
    compared = compare_stories(loaded, StorySettings(openings=len(OPENINGS)))["runs"][0]
    ckpt = load_for_inference(str(runs["a"] / "best"))
    written = write_stories(ckpt.model, ckpt.tokenizer, None, 16)
    assert written.sample.max_new_tokens == 512 and compared["texts"] == written.texts
    evaluated = evaluate_stories(ckpt.model, ckpt.tokenizer, SampleConfig(), 16)
    spec = importlib.util.spec_from_file_location("bench_quality", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    shutil.copytree(runs["a"] / "best", tmp_path / "best")
    config = json.loads((tmp_path / "best" / "config.json").read_text())
    config["sample"].update(temperature=1.5, top_p=1.0)  # the checkpoint's own decoding: unused
    (tmp_path / "best" / "config.json").write_text(json.dumps(config))
    assert main(bench.evaluate_args(tmp_path, threads=1) + ["--no_valid"]) == 0
    benched = json.loads((tmp_path / "eval.json").read_text())["stories"]
    assert evaluated["examples"] == benched["examples"] == written.texts[:3]
    assert evaluated["settings_text"] == benched["settings_text"] == compared["settings_text"]
    for theirs in (evaluated, benched):
        assert compared["metrics"] == {k: theirs[k] for k in compared["metrics"]}


# ---------------------------------------------------------------------------- what cannot compare


def test_different_tokenizers_are_one_line_and_bits_per_byte_still_compare(runs, tmp_path):
    result = compare_runs([str(runs["a"]), str(runs["w"])], tmp_path)
    notes = [n for n in result["notes"] if "tokenizers" in n]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "compare bits per byte" in notes[0] and "a (word" in notes[0] and "w (word" in notes[0]
    assert all(r["best_valid_bpb"] is not None for r in result["runs"])
    assert "vocab_size" in result["settings"]
    assert f"note: {notes[0]}" in (tmp_path / MARKDOWN).read_text()


def test_a_run_without_metrics_is_named_and_left_out(runs, tmp_path):
    paths = [str(runs[k]) for k in ("a", "empty", "b")]
    result = compare_runs(paths, tmp_path)
    assert [r["run"] for r in result["runs"]] == ["a", "b"]
    assert any("left out: empty" in n for n in result["notes"])
    with pytest.raises(UserError, match="fewer than two runs"):
        load_runs([str(runs["a"]), str(runs["empty"])])


def test_runs_with_one_folder_name_are_told_apart(runs, tmp_path):
    for parent in ("x", "y"):
        shutil.copytree(runs["a"], tmp_path / parent / "run")
    loaded, _ = load_runs([str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")])
    assert [r.name for r in loaded] == ["x/run", "y/run"]


# ---------------------------------------------------------------------------- the command


def test_cli_prints_the_table_and_writes_beside_other_files(runs, tmp_path, capsys):
    out = tmp_path / "report"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    argv = ["compare", str(runs["a"]), str(runs["b"]), "--out", str(out), "--openings", "1"]
    assert main(argv + ["--samples", "1", "--max_new_tokens", "8", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    for label in ("sp_weight", "best valid NLL", "ended with <eot>", "opening 1:", "  a: "):
        assert label in printed
    assert sorted(p.name for p in out.iterdir()) == sorted(["notes.txt", PNG, MARKDOWN, JSON])
    assert (out / "notes.txt").read_text() == "mine"
    assert main(argv + ["--no_stories"]) == 0  # its own files: replaced
    assert json.loads((out / JSON).read_text())["stories"] is None


def test_default_out_is_beside_the_first_run(runs, capsys):
    assert main(["compare", str(runs["a"]), str(runs["b"]), "--no_stories"]) == 0
    assert (runs["a"].parent / "compare" / PNG).exists()


def tree(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*")}


@pytest.mark.parametrize(
    "make,message",
    [
        (lambda r, t: [str(t / "missing"), str(r["a"])], "no run folder at"),
        (lambda r, t: [str(r["a"])], "at least two runs"),
        (lambda r, t: [str(r["a"]), str(r["a"])], "given twice"),
        (lambda r, t: [str(r["a"] / "best"), str(r["b"])], "is a checkpoint, not a run"),
        (lambda r, t: [str(r["a"]), str(t)], "holds no config.json"),
        (lambda r, t: [str(r["a"]), str(r["empty"])], "fewer than two runs"),
        (lambda r, t: [str(r["a"]), str(r["b"]), "--openings", "0"], "--openings 0"),
        (lambda r, t: [str(r["a"]), str(r["b"]), "--samples", "0"], "--samples"),
        (lambda r, t: [str(r["a"]), str(r["b"]), "--out", str(t / "f.txt")], "is a file"),
        (lambda r, t: [str(r["a"]), str(r["b"]), "--out", str(t)], "not written by"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys, make, message):
    (tmp_path / "f.txt").write_text("a file")
    (tmp_path / MARKDOWN).write_text("# my own report\n")
    before = tree(runs["a"].parent), tree(tmp_path)
    assert main(["compare", *make(runs, tmp_path), "--no_stories"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert (tree(runs["a"].parent), tree(tmp_path)) == before
    assert (tmp_path / MARKDOWN).read_text() == "# my own report\n"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_runs_stories_load_in_the_dtype_asked(runs, tmp_path, monkeypatch, dtype):
    """compare --dtype reaches the runs' own stories, as evaluate's does (it reached only the
    --hf references), and a library user gets the same range check as the CLI."""
    import gpt_study.compare.stories as compare_stories_module

    seen = []

    def loading(path, device="auto", dtype="auto"):
        seen.append(dtype)
        return load_for_inference(path, device, dtype)

    monkeypatch.setattr(compare_stories_module, "load_for_inference", loading)
    argv = ["compare", str(runs["a"]), str(runs["b"]), "--out", str(tmp_path / "o"), "--dtype"]
    assert main([*argv, dtype, "--openings", "1", "--samples", "1"]) == 0
    assert seen == [dtype, dtype]
    for bad in (0, len(OPENINGS) + 1):
        with pytest.raises(UserError, match=f"--openings {bad} is out of range"):
            StorySettings(openings=bad)
