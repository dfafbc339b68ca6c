"""Config: study defaults, presets, JSON round trip, contradictions rejected, configs saved
before TrainConfig had sections, and what may change on --resume."""

import argparse
import dataclasses
import json

import pytest

from gpt_study.cli.flags import add_dataclass_args, dataclass_overrides
from gpt_study.config import (
    Config,
    GPTConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    save_config,
)
from gpt_study.config.fields import fixed_on_resume, flat_fields, free_on_resume, thread_count
from gpt_study.config.learning import DECAY_SHAPES, OptimConfig
from gpt_study.config.presets import preset_config
from gpt_study.config.train import BudgetConfig
from gpt_study.runtime.errors import UserError


def test_study_defaults():
    cfg = preset_config("seed")
    assert (cfg.model.d_model, cfg.model.d_ff, cfg.model.n_heads, cfg.model.n_layers) == (
        256,
        512,
        16,
        8,
    )
    o, rows, budget = cfg.train.optim, cfg.train.rows, cfg.train.budget
    assert cfg.model.max_len == 256 and rows.context_size == 128
    assert o.lr == 2.5e-4 and o.lr_betas == (0.9, 0.98) and o.eps == 1e-9
    assert o.weight_decay == 5e-4 and cfg.train.loss.label_smoothing == 0.1
    assert rows.batch_size == 64 and budget.iters_per_epoch == 1024 and budget.epoch == 512
    # The study's recipe: fp32, constant lr without warmup, no clipping, AdamW decaying every
    # parameter, rows of 128 tokens (127 inputs), the three dropouts at 0.1.
    t = cfg.train.flat()
    assert t["dtype"] == "float32" and t["lr_schedule"] == "constant" and t["warmup_steps"] == 0
    assert t["grad_clip"] == 0.0 and t["decay_all"] and t["study_rows"]
    assert cfg.train.window == 127
    assert t["sp_weight"] == 1.0 and t["grad_accum"] == 1 and not t["compile"]
    assert t["best_by"] == "loss"  # best_val.pt: the lowest valid loss
    m = cfg.model
    assert m.attention_drop == m.residual_drop == m.embedding_drop == m.inner_dropout == 0.1
    assert preset_config("tiny").train.runtime.dtype == "auto"


def test_json_round_trip(tmp_path):
    cfg = preset_config("tiny", train={"lr": 1e-3}, model={"vocab_size": 123})
    save_config(tmp_path / "c.json", cfg)
    back = load_config(tmp_path / "c.json")
    assert back == cfg
    assert back.train.optim.lr == 1e-3 and back.model.vocab_size == 123 and back.preset == "tiny"


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


# ---------------------------------------------------------------------------- sections, old files

# config.json as gpt-study wrote it before TrainConfig had sections (git show, the commit before
# them), for the tiny preset: every train setting flat, ``resume`` stored, ``threads`` 0 for auto.
TINY_MODEL = {
    "vocab_size": 30000,
    "max_len": 128,
    "d_model": 128,
    "d_ff": 512,
    "n_layers": 4,
    "n_heads": 4,
    "attention_drop": 0.0,
    "residual_drop": 0.0,
    "embedding_drop": 0.0,
    "positions": "learned",
    "rope_base": 10000.0,
    "norm": "layernorm",
    "mlp": "gelu",
    "tie_embeddings": False,
    "bias": True,
    "norm_bias": True,
    "head_bias": True,
    "qk_norm": False,
    "zero_init": False,
}
TINY_TRAIN = {
    "data": None,
    "save_root": "runs/gpt",
    "resume": False,
    "label_smoothing": 0.1,
    "sp_weight": 1.0,
    "weight_decay": 0.1,
    "lr": 0.002,
    "lr_betas": [0.9, 0.98],
    "eps": 1e-09,
    "optimizer": "adamw",
    "muon_lr": 0.02,
    "muon_momentum": 0.95,
    "lr_schedule": "cosine",
    "warmup_steps": 100,
    "min_lr": 0.0002,
    "context_size": 128,
    "batch_size": 16,
    "grad_accum": 1,
    "grad_clip": 0.0,
    "ema": 0.0,
    "epoch": 10,
    "iters_per_epoch": 200,
    "eval_iters": 20,
    "max_steps": 0,
    "max_time": 0.0,
    "fit_epochs": False,
    "print_interval": 50,
    "progress": None,
    "sample_tokens": 200,
    "device": "auto",
    "dtype": "auto",
    "compile": False,
    "threads": 0,
    "seed": 1234,
    "wb_flag": False,
    "wb_project": "gpt_study",
    "wb_name": None,
    "wb_notes": None,
    "wb_tags": [],
    "decay_all": False,
    "study_rows": False,
    "best_by": "nll",
}
OLD_REST = {
    "sample": {
        "max_new_tokens": 256,
        "greedy": False,
        "temperature": 0.8,
        "top_k": 0,
        "top_p": 0.95,
        "repetition_penalty": 1.1,
        "seed": None,
    },
    "data": {
        "data": [],
        "dataset_root": "data",
        "tokenizer": "word",
        "vocab_size": 30000,
        "min_freq": 2,
        "min_chars": 300,
        "lowercase": True,
        "out": None,
        "force": False,
        "workers": 0,
        "valid_fraction": 0.01,
        "bpe_train_chars": 5000000,
    },
}
# The cpu preset as that version resolved it: tiny's values but these (label smoothing 0 and
# --fit_epochs joined it in the second per-CPU-minute round, weight decay 0.3 in the third; 16
# rows a step, 28 epochs and a compiled step in the fifth).
CPU_MODEL = {**TINY_MODEL, "residual_drop": 0.1, "positions": "rope", "norm": "rmsnorm"}
CPU_MODEL.update(mlp="swiglu", tie_embeddings=True, bias=False, head_bias=False)
CPU_TRAIN = {**TINY_TRAIN, "sp_weight": 2.0, "min_lr": 0.0001, "batch_size": 16, "grad_clip": 1.0}
CPU_TRAIN.update(epoch=28, iters_per_epoch=250, fit_epochs=True, label_smoothing=0.0)
CPU_TRAIN.update(weight_decay=0.3, compile=True)


def _old_file(tmp_path, preset, model, train):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model": model, "train": train, **OLD_REST, "preset": preset}))
    return path


@pytest.mark.parametrize(
    "name,model,train", [("tiny", TINY_MODEL, TINY_TRAIN), ("cpu", CPU_MODEL, CPU_TRAIN)]
)
def test_presets_resolve_to_the_values_they_had(tmp_path, name, model, train):
    """tiny and cpu now derive from one base; every setting is what it was."""
    now = preset_config(name)
    flat = json.loads(json.dumps(config_to_dict(now, flat=True)))
    want = {k: v for k, v in train.items() if k != "resume"}
    # 0 and None are both auto; init_from (fine-tuning), story_starts, dropout_from, wsd's
    # cooldown and the device choices came later, off by default (auto: as before)
    later = {"init_from": None, "story_starts": 0.0, "dropout_from": 0.0, "cooldown": 0.2}
    later.update(dict.fromkeys(DEVICE_CHOICES, "auto"))
    # the preset's since round eleven (story_starts), thirteen (the betas and lr), fifteen (4
    # rows of 512 tokens), nineteen (wsd) and twenty (its cooldown)
    new = {"story_starts": 0.25, "lr_betas": [0.9, 0.999], "lr": 3e-3} if name == "cpu" else {}
    new.update(
        {"context_size": 512, "batch_size": 4, "lr_schedule": "wsd"} if name == "cpu" else {}
    )
    new.update({"cooldown": 0.4} if name == "cpu" else {})  # round twenty
    assert flat["train"] == {**want, "threads": None, **later, **new}
    later_model = {  # came later, off by default
        "inner_drop": None,
        "residual_scalars": False,
        "value_embeds": False,
        "logit_softcap": 0.0,
    }
    assert flat["model"] == {**later_model, **model, **({"max_len": 512} if name == "cpu" else {})}
    # a run saved before keeps what it trained with (its file has lr, betas, schedule, rows and
    # window, not story_starts, nor the cooldown: round nineteen's wsd runs had a fifth)
    kept = {"story_starts": 0.0, "lr_betas": tuple(train["lr_betas"]), "cooldown": 0.2}
    kept.update({k: train[k] for k in ("lr", "context_size", "batch_size", "lr_schedule")})
    before = dataclasses.replace(
        now,
        train=TrainConfig(**{**now.train.flat(), **kept}),
        model=dataclasses.replace(now.model, max_len=model["max_len"]),
    )
    assert load_config(_old_file(tmp_path, name, model, train)) == before


def test_a_flat_config_json_from_before_the_sections_still_loads(tmp_path):
    train = {**TINY_TRAIN, "data": "/x/data", "save_root": "/x/run", "resume": True}
    train.update(lr=1e-3, lr_betas=[0.8, 0.9], wb_tags=["a"], study_rows=True)
    cfg = load_config(_old_file(tmp_path, "tiny", TINY_MODEL, train))
    same = {"data": "/x/data", "save_root": "/x/run", "lr": 1e-3, "lr_betas": (0.8, 0.9)}
    assert cfg == preset_config("tiny", train={**same, "wb_tags": ["a"], "study_rows": True})
    assert cfg.train.optim.lr_betas == (0.8, 0.9) and cfg.train.window == 127
    assert cfg.train.runtime.threads is None  # "threads": 0 was auto, and still is
    save_config(tmp_path / "new.json", cfg)  # saved again: in sections, without resume
    saved = json.loads((tmp_path / "new.json").read_text())["train"]
    assert saved["optim"]["lr"] == 1e-3 and "resume" not in json.dumps(saved)
    assert load_config(tmp_path / "new.json") == cfg


@pytest.mark.parametrize(
    "text,message",
    [
        ("[]", "is not a table of settings"),
        ('{"train": 5}', "[train] is not a table of settings"),
        ('{"train": {"optim": 5}}', "[train] optim is not a table of settings"),
        ('{"train": {"optim": {"lrr": 1}}}', "unknown setting(s) optim.lrr"),
        ('{"train": {"optim": {"context_size": 1}}}', "unknown setting(s) optim.context_size"),
        ('{"train": {"lr": "x"}}', "--lr 'x' is not a number"),
        ('{"train": {"rows": {"batch_size": 0}}}', "--batch_size 0 is out of range"),
    ],
)
def test_a_damaged_train_section_gets_one_line(tmp_path, text, message):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(UserError) as e:
        load_config(tmp_path / "c.json")
    assert message in str(e.value) and len(str(e.value).splitlines()) == 1


def test_inner_drop_follows_residual_drop_until_set():
    assert GPTConfig(residual_drop=0.3).inner_dropout == 0.3
    assert GPTConfig(residual_drop=0.3, inner_drop=0.0).inner_dropout == 0.0
    assert GPTConfig(inner_drop=0.2).inner_dropout == 0.2
    with pytest.raises(UserError, match="--inner_drop 1.0 is out of range"):
        GPTConfig(inner_drop=1.0)


def test_flat_names_and_sections_build_the_same_config():
    assert TrainConfig(lr=1e-3, epoch=3) == TrainConfig(
        optim=OptimConfig(lr=1e-3), budget=BudgetConfig(epoch=3)
    )
    assert TrainConfig(optim=OptimConfig(lr=1e-3), lr=2e-3).optim.lr == 2e-3  # the flat name wins
    assert preset_config("tiny", train={"optim": {"lr": 1e-3}}).train.optim.lr == 1e-3
    assert dataclasses.replace(TrainConfig(), lr=1e-3).optim.lr == 1e-3
    with pytest.raises(TypeError, match="lrr"):
        TrainConfig(lrr=1)


# ---------------------------------------------------------------------------- --resume

# What may change on --resume without changing what the run computes: declared on each field
# (doc(..., resume="free")), pinned here.
DEVICE_CHOICES = ("fused_adamw", "pin_memory", "attention", "backend")  # runtime.plan's settings
FREE_ON_RESUME = {
    *("data", "save_root", "epoch", "max_steps", "max_time", "fit_epochs", "eval_iters"),
    "print_interval",
    *("progress", "device", "compile", "batch_size", "grad_accum", "threads"),
    *DEVICE_CHOICES,  # which kernels compute the same thing
    *("wb_flag", "wb_project", "wb_name", "wb_notes", "wb_tags"),
}
# A valid other value where the generic rule below does not give one.
OTHER = {
    "context_size": 64,  # tiny's max_len is 128
    "lr_betas": (0.8, 0.9),
    "progress": True,
    "threads": 2,
    "data": "/elsewhere/data",
    "init_from": "/elsewhere/checkpoint",
    "device": "cpu",
    "wb_project": "other",
    "wb_name": "other",
    "wb_notes": "other",
    "wb_tags": ["other"],
}


def _other(f, value):
    if f.name in OTHER:
        return OTHER[f.name]
    if "choices" in f.metadata:
        return next(c for c in f.metadata["choices"] if c != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value / 2 if value else 0.5
    raise AssertionError(f"give OTHER a valid changed value for {f.name}")


def test_the_settings_free_on_resume_are_declared_on_their_fields():
    marked = {n for n, (_, f) in flat_fields(TrainConfig).items() if free_on_resume(f)}
    assert marked == FREE_ON_RESUME


@pytest.mark.parametrize("name", sorted(flat_fields(TrainConfig)))
def test_a_setting_changed_on_resume_warns_unless_it_is_free(tmp_path, caplog, name):
    """Every setting, so that a new one cannot go unchecked: changed on resume, it is applied,
    and a warning says the run is no longer the same unless its field says resume="free"."""
    from gpt_study.train.setup import build_config

    run = tmp_path / "run"
    saved = preset_config("tiny", train={"data": str(tmp_path / "data"), "save_root": "/was/here"})
    (run / "last").mkdir(parents=True)
    save_config(run / "last" / "config.json", saved)
    f = flat_fields(TrainConfig)[name][1]
    new = str(run) if name == "save_root" else _other(f, saved.train.flat()[name])
    if fixed_on_resume(f):  # how the run started (init_from): refused, not applied
        with pytest.raises(UserError, match=f"--{name} .* with --resume"):
            build_config(train={"save_root": str(run), name: new}, resume=True)
        return
    with caplog.at_level("WARNING", logger="gpt_study.train"):
        cfg = build_config(train={"save_root": str(run), name: new}, resume=True)
    assert cfg.train.flat()[name] == new and cfg.train.flat()[name] != saved.train.flat()[name]
    assert (f"--{name} " in caplog.text) == (not free_on_resume(f)), caplog.text


def test_resume_is_an_argument_not_a_setting():
    from gpt_study.train.setup import build_config

    with pytest.raises(UserError, match=r"build_config\(..., resume=True\)"):
        build_config(train={"resume": True})
    assert "resume" not in flat_fields(TrainConfig)


# ---------------------------------------------------------------------------- --threads


def test_threads_auto_and_0_are_one_value_in_every_command():
    from gpt_study.cli import generate, serve, train

    assert [thread_count(t) for t in ("auto", "AUTO", "0", "3")] == [None, None, None, 3]
    for command in (train, generate, serve):
        p = argparse.ArgumentParser()
        command.configure(p)
        for text, want in (("auto", None), ("0", None), ("2", 2)):
            assert p.parse_args([*_required(command), "--threads", text]).threads == want
    assert TrainConfig(threads=0).runtime.threads is None and TrainConfig().runtime.threads is None
    with pytest.raises(UserError, match="--threads -1 is out of range"):
        TrainConfig(threads=-1)


def _required(command) -> list[str]:
    return ["--checkpoint", "x"] if command.__name__.endswith("generate") else []


@pytest.mark.parametrize("schedule", [n for n, shape in DECAY_SHAPES.items() if shape])
def test_a_decay_that_would_climb_is_refused(schedule):
    """Every schedule that decays to --min_lr refuses a floor above the peak; constant ignores
    --min_lr, so it keeps any."""
    with pytest.raises(UserError, match="--min_lr 0.01 is above --lr 0.001: lower it"):
        TrainConfig(lr=1e-3, min_lr=1e-2, lr_schedule=schedule)
    assert TrainConfig(lr=1e-3, min_lr=1e-2, lr_schedule="constant").schedule.min_lr == 1e-2


def test_a_runs_prepared_folder_is_its_recorded_data_else_prepares_name():
    """One answer for every reader of a run's data (evaluate, compare, export's check)."""
    from pathlib import Path

    from gpt_study.config import Config, DataConfig
    from gpt_study.config.presets import preset_config

    assert Config().prepared_folder() == DataConfig().output_dir()  # an imported model's config
    cfg = preset_config("tiny", train={"data": "/somewhere/prepared"})
    assert cfg.prepared_folder() == Path("/somewhere/prepared")


def test_each_preset_is_timed_at_the_vocabulary_it_is_prepared_with():
    from gpt_study.config.presets import PREPARED_WITH, PRESETS, prepared_vocab

    assert {p: prepared_vocab(p) for p in PRESETS} == {"seed": 30000, "tiny": 30000, "cpu": 4096}
    assert prepared_vocab("cpu") == PREPARED_WITH["cpu"]["vocab_size"]
