"""The quality benchmark's recipes are configs: each ablation arm must switch exactly the option
it names away from the ``cpu`` preset, or the ablation measures nothing. Its stories are the story
protocol's (test_compare checks they equal evaluate's and compare's for a trained model)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gpt_study.cli import evaluate as evaluate_cli
from gpt_study.cli import train as train_cli
from gpt_study.cli.common import story_protocol
from gpt_study.config import EOT_ID, SOT_ID, config_to_dict
from gpt_study.evaluate.stories import STORY_PROTOCOL

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_quality.py"


def _bench():
    spec = importlib.util.spec_from_file_location("bench_quality", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _config(flags: list[str], data: Path):
    parser = argparse.ArgumentParser()
    train_cli.configure(parser)
    return train_cli.config_from_flags(parser.parse_args([*flags, "--data", str(data)]))


def _changed(a, b) -> dict[str, object]:
    flat_a, flat_b = config_to_dict(a, flat=True), config_to_dict(b, flat=True)
    return {
        f"{section}.{k}": v
        for section in ("model", "train")
        for k, v in flat_b[section].items()
        if flat_a[section][k] != v
    }


EXPECTED = {
    "cpu-learned": {"model.positions": "learned"},
    "cpu-layernorm": {"model.norm": "layernorm"},
    "cpu-gelu": {"model.mlp": "gelu", "model.d_ff": 768},
    "cpu-untied": {"model.tie_embeddings": False},
    "cpu-bias": {"model.bias": True, "model.head_bias": True},
    "cpu-muon": {"train.optimizer": "muon"},
    "cpu-ls0.1": {"train.label_smoothing": 0.1},
    "cpu-starts0": {"train.story_starts": 0.0},
    "cpu-adam98": {"train.lr_betas": (0.9, 0.98), "train.lr": 2e-3},
    "cpu-ctx256": {"train.context_size": 256, "model.max_len": 256, "train.batch_size": 8},
    "cpu-cosine": {"train.lr_schedule": "cosine"},
    "cpu-cd0.2": {"train.cooldown": 0.2},
}


CANDIDATES = {
    "cpu-ema": {"train.ema": 0.995},
    "cpu-edrop": {"model.embedding_drop": 0.1},
    "cpu-zero_init": {"model.zero_init": True},
    "cpu-scalars": {"model.residual_scalars": True},
    "cpu-ve": {"model.value_embeds": True},
    "cpu-softcap": {"model.logit_softcap": 15.0},
    "cpu-late": {"train.dropout_from": 0.25},
    "cpu-relu2": {"model.mlp": "relu2", "model.d_ff": 768},
    "cpu-bpe8192": {},  # the same config on a folder prepared with --vocab_size 8192
    "cpu-ff384": {"model.d_ff": 384},
}


@pytest.mark.parametrize("arm", sorted(EXPECTED | CANDIDATES))
def test_each_ablation_and_candidate_arm_switches_only_its_option(arm, tiny_prepared):
    bench = _bench()
    assert set(bench.ABLATIONS) == set(EXPECTED) and set(bench.CANDIDATES) == set(CANDIDATES)
    tok, flags = bench.NAMED[arm]
    cpu_tok = "prepare:--vocab_size 4096"  # the cpu recipe's folder: bpe with 4,096 entries
    assert bench.RECIPES["cpu"][0] == cpu_tok
    assert tok == ("prepare:--vocab_size 8192" if arm == "cpu-bpe8192" else cpu_tok)
    cpu = _config(bench.RECIPES["cpu"][1], tiny_prepared)
    assert _changed(cpu, _config(flags, tiny_prepared)) == (EXPECTED | CANDIDATES)[arm]


def test_an_arm_of_ones_own_is_the_cpu_recipe_plus_its_flags():
    bench = _bench()
    name, tok, flags = bench.arm("wide=--d_model 192 --n_heads 6")
    assert (name, tok, flags) == (
        "wide",
        bench.RECIPES["cpu"][0],
        [*bench.RECIPES["cpu"][1], *"--d_model 192 --n_heads 6".split()],
    )
    assert bench.arm("v=prepare:--vocab_size 2048;--ema 0.9")[1] == "prepare:--vocab_size 2048"
    with pytest.raises(SystemExit, match="NAME="):
        bench.arm("no-flags")


def test_seed_table_reports_mean_spread_and_difference_from_cpu():
    bench = _bench()
    rows = [
        {"recipe": "cpu", "bits_per_byte": 1.0},
        {"recipe": "cpu", "bits_per_byte": 1.2},
        {"recipe": "cpu-untied", "bits_per_byte": 0.9},
        {"recipe": "cpu-untied", "bits_per_byte": 1.0},
    ]
    lines = bench.seed_table(rows).splitlines()
    assert lines[2] == "| cpu | 2 | 1.1000 | 0.2000 |  |"
    assert lines[3] == "| cpu-untied | 2 | 0.9500 | 0.1000 | -0.1500 |"
    assert bench.seed_table(rows[::2]) == ""  # one seed each: no noise to report


def test_evaluate_is_run_with_the_story_protocol(tmp_path):
    """No story flag is passed, so evaluate's stories are the protocol's (cap 512, its seeds)."""
    parser = argparse.ArgumentParser()
    evaluate_cli.configure(parser)
    args = parser.parse_args(_bench().evaluate_args(tmp_path, threads=1)[1:])
    assert story_protocol(args) == STORY_PROTOCOL


def test_real_stories_are_held_to_the_protocols_cap(tmp_path):
    """A story ends within the cap when its words and its <eot> fit in the protocol's new
    tokens: cap - 1 words do, cap words do not (the model would need cap + 1)."""
    from conftest import write_prepared

    cap = STORY_PROTOCOL.max_new_tokens
    folder = write_prepared(tmp_path / "data")
    ids = []
    for n in (10, cap - 1, cap, 20):  # two short, one that just fits, one a token too long
        ids += [SOT_ID, *([7] * n), EOT_ID]
    np.array(ids, dtype=np.uint16).tofile(folder / "valid.bin")
    meta = json.loads((folder / "meta.json").read_text())
    meta["splits"]["valid"]["tokens"] = len(ids)
    (folder / "meta.json").write_text(json.dumps(meta))
    _, _, ended = _bench().real_stories(folder, 8)
    assert ended == 3 / 4


def test_the_eot_column_carries_its_interval():
    bench = _bench()
    assert bench.eot_text({"stories": 32, "eot_share": 31 / 32}) == "97% ± 6 (95% CI 84-99%)"
    assert bench.eot_text({"eot_share": 0.5}) == "50%"  # a row from before the count was kept
