"""Config: study defaults, presets, JSON round trip, contradictions rejected."""

import argparse

import pytest

from gpt_study.cli.flags import add_dataclass_args, dataclass_overrides
from gpt_study.config import (
    Config,
    GPTConfig,
    TrainConfig,
    load_config,
    save_config,
)
from gpt_study.config.presets import preset_config
from gpt_study.runtime.errors import UserError


def test_study_defaults():
    cfg = preset_config("seed")
    assert (cfg.model.d_model, cfg.model.d_ff, cfg.model.n_heads, cfg.model.n_layers) == (
        256,
        512,
        16,
        8,
    )
    assert cfg.model.max_len == 256 and cfg.train.context_size == 128
    assert cfg.train.lr == 2.5e-4 and cfg.train.lr_betas == (0.9, 0.98) and cfg.train.eps == 1e-9
    assert cfg.train.weight_decay == 5e-4 and cfg.train.label_smoothing == 0.1
    assert (
        cfg.train.batch_size == 64 and cfg.train.iters_per_epoch == 1024 and cfg.train.epoch == 512
    )
    # The study's recipe: fp32, constant lr without warmup, no clipping, AdamW decaying every
    # parameter, rows of 128 tokens (127 inputs), the three dropouts at 0.1.
    t = cfg.train
    assert t.dtype == "float32" and t.lr_schedule == "constant" and t.warmup_steps == 0
    assert t.grad_clip == 0.0 and t.decay_all and t.study_rows and t.window == 127
    assert t.sp_weight == 1.0 and t.grad_accum == 1 and not t.compile
    assert t.best_by == "loss"  # best_val.pt: the lowest valid loss
    m = cfg.model
    assert m.attention_drop == m.residual_drop == m.embedding_drop == 0.1
    assert preset_config("tiny").train.dtype == "auto"


def test_json_round_trip(tmp_path):
    cfg = preset_config("tiny", train={"lr": 1e-3}, model={"vocab_size": 123})
    save_config(tmp_path / "c.json", cfg)
    back = load_config(tmp_path / "c.json")
    assert back == cfg
    assert back.train.lr == 1e-3 and back.model.vocab_size == 123 and back.preset == "tiny"


def test_unknown_key_rejected(tmp_path):
    (tmp_path / "c.json").write_text('{"train": {"lrr": 1}}')
    with pytest.raises(UserError, match="lrr"):
        load_config(tmp_path / "c.json")


@pytest.mark.parametrize(
    "make",
    [
        lambda: GPTConfig(d_model=100, n_heads=16),
        lambda: Config(model=GPTConfig(max_len=64), train=TrainConfig(context_size=128)),
        lambda: preset_config("nope"),
    ],
)
def test_contradictions_rejected(make):
    with pytest.raises(UserError):
        make()


def test_cli_flags_override_only_what_was_given():
    p = argparse.ArgumentParser()
    add_dataclass_args(p, TrainConfig)
    ns = p.parse_args(["--lr", "0.01", "--lr_betas", "0.8", "0.9", "--compile"])
    assert dataclass_overrides(ns, TrainConfig) == {
        "lr": 0.01,
        "lr_betas": [0.8, 0.9],
        "compile": True,
    }
