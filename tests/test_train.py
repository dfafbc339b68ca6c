"""Training: schedule, row sampling, validation against closed forms, learning, resume, errors."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL, synthetic_story, tiny_settings
from gpt_study.cli import main
from gpt_study.config import SOT_ID, DataConfig, TrainConfig
from gpt_study.config.learning import DECAY_SHAPES
from gpt_study.config.presets import PRESETS
from gpt_study.data.dataset import (
    RowSampler,
    eval_windows,
    iter_eval_batches,
    open_prepared,
    positions_of,
)
from gpt_study.data.prepare import prepare
from gpt_study.model.gpt import GPT, GPTConfig
from gpt_study.runtime.errors import UserError
from gpt_study.train import loop as train_loop
from gpt_study.train.fit import fit
from gpt_study.train.optim import MuonWithAdamW, dropout_on, lr_at, make_optimizer
from gpt_study.train.setup import build_config
from gpt_study.train.validate import validate

MODEL = TINY_MODEL
DROPOUT = dict(attention_drop=0.1, residual_drop=0.1, embedding_drop=0.1)


def tiny_train(data, save_root, **kw):
    """A test run's settings (conftest's), at a constant rate without warmup, with a sample."""
    fast = dict(sample_tokens=8, lr=3e-3, warmup_steps=0, lr_schedule="constant")
    return tiny_settings(data, save_root, **{**fast, **kw})


def weights(path):
    return load_file(str(path / "model.safetensors"))


# ---------------------------------------------------------------------------- pure parts


def test_lr_schedules():
    const = TrainConfig(lr=1e-3)
    assert lr_at(0, const) == lr_at(5000, const) == 1e-3
    shape = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, epoch=2, iters_per_epoch=55)
    cos = TrainConfig(**shape, lr_schedule="cosine")
    assert lr_at(0, cos) == pytest.approx(1e-4)  # (0 + 1) / 10 of the peak
    assert lr_at(9, cos) == pytest.approx(1e-3)
    assert lr_at(10, cos) == pytest.approx(1e-3)
    assert lr_at(60, cos) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way: the cosine's middle
    assert lr_at(110, cos) == pytest.approx(1e-4)
    # linear: the same warmup and ends, a straight line between them (a quarter of the way down
    # at a quarter of the decay, where the cosine is still 85% up)
    lin = TrainConfig(**shape, lr_schedule="linear")
    assert [lr_at(i, lin) for i in (0, 9, 10, 110)] == pytest.approx([1e-4, 1e-3, 1e-3, 1e-4])
    assert lr_at(35, lin) == pytest.approx(1e-3 - 0.25 * 9e-4)
    assert lr_at(60, lin) == pytest.approx(lr_at(60, cos))
    assert lr_at(35, cos) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi / 4)))
    warm_const = TrainConfig(lr=1e-3, warmup_steps=4)
    assert [lr_at(i, warm_const) for i in range(5)] == pytest.approx(
        [2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]
    )


@pytest.mark.parametrize("name", [n for n, shape in DECAY_SHAPES.items() if shape])
def test_every_decay_runs_from_the_peak_down_to_the_floor(name):
    """Each decaying schedule starts at --lr after the warmup, never climbs, falls at every step
    of its last fifth and reaches --min_lr at the schedule's last step, where it stays (a resumed
    or overrun step reads it)."""
    cfg = TrainConfig(
        lr=1e-3, min_lr=1e-4, warmup_steps=10, epoch=2, iters_per_epoch=55, lr_schedule=name
    )
    rates = [lr_at(i, cfg) for i in range(10, 111)]
    assert rates[0] == pytest.approx(1e-3) and rates[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in zip(rates[:-1], rates[1:], strict=True))
    assert all(a > b for a, b in zip(rates[-21:-1], rates[-20:], strict=True))
    assert lr_at(500, cfg) == pytest.approx(1e-4)


def test_wsd_holds_the_peak_for_four_fifths_then_falls_as_one_minus_sqrt():
    wsd = TrainConfig(lr=1e-3, min_lr=0.0, epoch=1, iters_per_epoch=100, lr_schedule="wsd")
    assert [lr_at(i, wsd) for i in (0, 40, 80)] == pytest.approx([1e-3] * 3)
    assert lr_at(85, wsd) == pytest.approx(1e-3 * (1 - math.sqrt(0.25)))  # a quarter of the way
    assert lr_at(90, wsd) == pytest.approx(1e-3 * (1 - math.sqrt(0.5)))
    assert lr_at(100, wsd) == pytest.approx(0.0)


@pytest.mark.parametrize("cooldown", [0.1, 0.4, 1.0])
def test_wsd_cooldown_moves_where_the_fall_starts_and_nothing_else(cooldown):
    """--cooldown c: the peak until 1 - c of the decay, then the same 1 - sqrt curve stretched
    over c (c = 1: no stable phase), to the same floor at the same step."""
    cfg = TrainConfig(
        lr=1e-3, min_lr=1e-4, epoch=1, iters_per_epoch=100, lr_schedule="wsd", cooldown=cooldown
    )
    start = round(100 * (1 - cooldown))
    assert all(lr_at(i, cfg) == pytest.approx(1e-3) for i in range(start + 1))
    half = start + round(50 * cooldown)  # half way through the cooldown
    assert lr_at(half, cfg) == pytest.approx(1e-4 + 9e-4 * (1 - math.sqrt(0.5)))
    assert lr_at(100, cfg) == pytest.approx(1e-4) and lr_at(99, cfg) > 1e-4


@pytest.mark.parametrize("name", [n for n in DECAY_SHAPES if n != "wsd"])
def test_cooldown_changes_no_other_schedule(name):
    """A preset's --cooldown stays harmless when its schedule is switched (--preset cpu
    --lr_schedule cosine): every other schedule's rates are the same at any cooldown."""
    shape = dict(lr=1e-3, min_lr=1e-4, warmup_steps=10, epoch=2, iters_per_epoch=55)
    a = TrainConfig(**shape, lr_schedule=name)
    b = TrainConfig(**shape, lr_schedule=name, cooldown=0.5)
    assert [lr_at(i, a) for i in range(120)] == [lr_at(i, b) for i in range(120)]
    with pytest.raises(UserError, match=r"--cooldown 0.0 is out of range: use a value in \(0, 1\]"):
        TrainConfig(lr_schedule="wsd", cooldown=0.0)


def test_row_sampler_is_deterministic_and_world_size_invariant():
    tokens = np.arange(1000, dtype=np.uint16)
    one = RowSampler(tokens, 16, batch_size=4, seed=7, grad_accum=2)
    x, y = one.batch(3, 0)
    assert x.shape == y.shape == (4, 16)
    np.testing.assert_array_equal(y[:, :-1], x[:, 1:])  # targets are inputs shifted by one
    np.testing.assert_array_equal(x, one.batch(3, 0)[0])  # same step, same rows
    assert not np.array_equal(x, one.batch(4, 0)[0])
    # Two ranks without accumulation see exactly the rows of one process with grad_accum 2,
    # and never each other's rows.
    ranks = [RowSampler(tokens, 16, 4, seed=7, rank=r, world_size=2) for r in (0, 1)]
    np.testing.assert_array_equal(ranks[0].batch(3)[0], x)
    np.testing.assert_array_equal(ranks[1].batch(3)[0], one.batch(3, 1)[0])
    assert not np.array_equal(ranks[0].batch(3)[0], ranks[1].batch(3)[0])
    # Every window fits in the stream, and the last position can be drawn.
    starts = np.concatenate([one.offsets(s) for s in range(2000)])
    assert starts.min() == 0 and starts.max() == 1000 - 17


def test_study_rows_are_the_split_cut_into_context_size_rows():
    """The study: N = len // 128 rows of 128 tokens (tail dropped), drawn with replacement,
    inputs row[:-1] (127 tokens), targets row[1:]."""
    tokens = np.arange(1000, dtype=np.uint16)  # 62 rows of 16, a tail of 8 dropped
    rows = RowSampler(tokens, 16, batch_size=64, seed=7, aligned=True)
    assert rows.inputs == 15
    x, y = rows.batch(0)
    assert x.shape == y.shape == (64, 15)
    assert (x[:, 0] % 16 == 0).all()  # every row starts on a row boundary of the N x 16 array
    np.testing.assert_array_equal(x, x[:, :1] + np.arange(15))  # row[:-1]
    np.testing.assert_array_equal(y, x + 1)  # row[1:]
    starts = np.concatenate([rows.offsets(s) for s in range(200)])
    assert set(starts.tolist()) == set(range(0, 62 * 16, 16))  # all 62 rows, none in the tail
    assert len(set(rows.offsets(0).tolist())) < 64  # with replacement: 64 draws of 62 rows
    with pytest.raises(UserError, match="context_size"):
        RowSampler(np.zeros(10, dtype=np.uint16), 16, 4, seed=0, aligned=True)


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("study_rows", [False, True])
def test_every_presets_rows_have_the_window_the_config_names(preset, study_rows, tiny_prepared):
    """The inputs a training row gives are the window that validation and generation keep to:
    one rule (row_inputs) for the sampler and the config, whatever the preset and row kind."""
    from gpt_study.train.fit import _sampler
    from gpt_study.train.state import TrainState

    train = dict(data=str(tiny_prepared), context_size=16, study_rows=study_rows, batch_size=2)
    train |= {"story_starts": 0.0} if study_rows else {}  # the study's rows have no such choice
    cfg = build_config(preset, train=train, model={**MODEL, "max_len": 16})
    sampler = _sampler(open_prepared(tiny_prepared), cfg.train, TrainState(), SOT_ID)
    assert sampler.inputs == cfg.train.window == (15 if study_rows else 16)
    assert sampler.batch(0)[0].shape == (2, cfg.train.window)


def test_seed_trains_on_study_rows_and_tiny_on_windows(tiny_prepared):
    from gpt_study.train.fit import _sampler
    from gpt_study.train.state import TrainState

    seed = build_config("seed", train=dict(data=str(tiny_prepared), context_size=16), model=MODEL)
    assert seed.train.rows.study_rows and seed.train.window == 15
    sampler = _sampler(open_prepared(tiny_prepared), seed.train, TrainState(), SOT_ID)
    assert sampler.aligned and sampler.batch(0)[0].shape == (64, 15)
    tiny = build_config("tiny", train=dict(data=str(tiny_prepared), context_size=16), model=MODEL)
    assert not tiny.train.rows.study_rows and tiny.train.window == 16
    assert _sampler(open_prepared(tiny_prepared), tiny.train, TrainState(), SOT_ID).batch(0)[
        0
    ].shape == (
        16,
        16,
    )


def test_story_starts_put_that_share_of_rows_at_a_sot_and_leave_the_others_as_they_were():
    """round(f x rows) windows of each step start at a <sot> that leaves a whole row; the other
    rows are the plain sampler's, so f = 0 draws exactly what runs drew before the option."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 50, size=3000).astype(np.uint16)
    sot = np.sort(rng.choice(3000, size=40, replace=False))
    tokens[sot] = SOT_ID
    plain = RowSampler(tokens, 16, batch_size=4, seed=7, grad_accum=2)
    mixed = RowSampler(tokens, 16, batch_size=4, seed=7, grad_accum=2, story_starts=0.25)
    whole = set(sot[sot < 3000 - 16].tolist())  # every <sot> with a row after it
    assert set(mixed.starts.tolist()) == whole
    np.testing.assert_array_equal(positions_of(SOT_ID, tokens, 2984, block=7), mixed.starts)
    seen = set()
    for step in range(300):
        a, b = plain.offsets(step), mixed.offsets(step)
        moved = a != b
        assert moved.sum() <= 2 and all(int(o) in whole for o in b[moved])
        assert sum(int(o) in whole for o in b) >= 2  # round(0.25 x 8) rows at a <sot>
        seen |= set(b[moved].tolist())
    assert seen == whole  # every story start gets drawn
    x, _ = mixed.batch(5, 1)
    np.testing.assert_array_equal(x, mixed.batch(5, 1)[0])  # deterministic in (seed, step)
    with pytest.raises(UserError, match="no <sot>"):
        RowSampler(np.where(tokens == SOT_ID, 3, tokens), 16, 4, seed=0, story_starts=0.5)
    with pytest.raises(UserError, match="--no-study_rows"):
        TrainConfig(story_starts=0.5)  # the study's rows are fixed cuts of the split


def test_row_sampler_rejects_a_stream_shorter_than_a_row():
    with pytest.raises(UserError, match="context_size"):
        RowSampler(np.zeros(10, dtype=np.uint16), 16, 4, seed=0)


@pytest.mark.parametrize("n", [17, 100, 161])
def test_eval_windows_score_every_target_once(n):
    tokens = np.arange(n)
    targets = []
    for _, y in iter_eval_batches(tokens, eval_windows(n, 16), batch_size=3):
        targets += y.ravel().tolist()
    assert sorted(targets) == list(range(1, n))


def test_eval_windows_capped_spread_over_the_split():
    w = eval_windows(16 * 100 + 1, 16, max_rows=5)
    assert [s for s, _ in w] == [0, 16 * 25, 16 * 50, 16 * 74, 16 * 99]
    assert all(length == 17 for _, length in w)


def test_validation_of_a_uniform_model_has_closed_form_values(tiny_prepared):
    """Zero output weights give uniform predictions: NLL = ln V, and the study's smoothed,
    weighted loss ln V * sum_n sum_c w_c q_nc / sum_n w_(y_n) (its class weights also weigh the
    smoothing mass of every target)."""
    data = open_prepared(tiny_prepared)
    V = 51
    model = GPT(GPTConfig(vocab_size=V, **MODEL))
    torch.nn.init.zeros_(model.head.weight)
    v = validate(
        model, data, TrainConfig(context_size=16, batch_size=4, label_smoothing=0.1, sp_weight=3.0)
    )
    n_valid = data.split_meta("valid")["tokens"]
    assert v.tokens == n_valid - 1 and v.fraction == 1.0
    assert v.nll == pytest.approx(math.log(V), rel=1e-6)
    targets = data.tokens("valid")[1:].astype(np.int64)  # every target scored once
    w_y = np.where((targets == 1) | (targets == 2), 3.0, 1.0)  # sp_weight on <sot>, <eot>
    mass = 0.9 * w_y + 0.1 * (V + 2 * (3.0 - 1)) / V  # sum_c w_c q_nc
    assert v.loss == pytest.approx(math.log(V) * mass.sum() / w_y.sum(), rel=1e-6)
    assert v.ppl == pytest.approx(V, rel=1e-5)
    bytes_ = data.split_meta("valid")["bytes"]
    assert v.bpb == pytest.approx(math.log2(V) * (n_valid - 1) / bytes_, rel=1e-6)
    # A capped validation scales the byte count with the share of targets it scored.
    capped = validate(
        model,
        data,
        TrainConfig(
            context_size=16, batch_size=4, label_smoothing=0.1, sp_weight=3.0, eval_iters=2
        ),
    )
    assert capped.tokens == 2 * 4 * 15  # windows of context_size - 1 inputs, as the study's rows
    assert capped.bpb == pytest.approx(math.log2(V) * (n_valid - 1) / bytes_, rel=1e-6)


@pytest.mark.parametrize("study_rows,window", [(True, 15), (False, 16)])
def test_validation_nll_matches_a_direct_computation(tiny_prepared, study_rows, window):
    """Windows of the trained width: context_size - 1 inputs with the study's rows."""
    data = open_prepared(tiny_prepared)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=51, **MODEL)).eval()
    tokens = torch.from_numpy(data.tokens("valid").astype(np.int64))
    want, n = 0.0, 0
    for start in range(0, len(tokens) - 1, window):
        row = tokens[start : start + window + 1]
        logp = torch.log_softmax(model(row[None, :-1])[0], dim=-1)  # (T, V)
        want -= logp.gather(1, row[1:, None]).sum().item()
        n += len(row) - 1
    cfg = TrainConfig(
        context_size=16, batch_size=4, label_smoothing=0.0, sp_weight=1.0, study_rows=study_rows
    )
    v = validate(model, data, cfg)
    assert v.tokens == n
    assert v.nll == pytest.approx(want / n, rel=1e-5)
    assert v.loss == pytest.approx(want / n, rel=1e-5)  # no smoothing, no weights: the same


def test_training_loss_is_the_study_loss_of_the_model():
    """The step's fused output layer + loss equals reference_lm_loss(model(x)), in value and
    gradient."""
    from gpt_study.model.loss import LMLoss, reference_lm_loss

    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=51, **MODEL)).eval()  # no dropout: two passes must agree
    x, y = torch.randint(0, 51, (3, 16)), torch.randint(0, 51, (3, 16))
    y[0, :4] = 2  # some <eot> targets, so sp_weight matters
    fused = LMLoss(net, 0.1, 3.0)(x, y)
    fused.backward()
    grads = [p.grad.clone() for p in net.parameters()]
    net.zero_grad()
    plain = reference_lm_loss(net(x), y, 0.1, 3.0)
    plain.backward()
    assert fused.item() == pytest.approx(plain.item(), rel=1e-5)
    for g, p in zip(grads, net.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-4, atol=1e-6)


def _decays(optimizer):
    """Each parameter's weight decay, by its dimension: {dim: set of decays}."""
    out = {}
    for g in optimizer.param_groups:
        for p in g["params"]:
            out.setdefault(min(p.dim(), 2), set()).add(g["weight_decay"])
    return out


def test_seed_decays_every_parameter_and_tiny_only_the_matrices():
    """The study's AdamW decays biases and LayerNorms too; tiny keeps them undecayed."""
    from gpt_study.config.presets import preset_config

    net = GPT(GPTConfig(vocab_size=51, **MODEL))
    seed = preset_config("seed").train
    assert seed.optim.decay_all is True and seed.optim.weight_decay == 5e-4
    opt = make_optimizer(net, seed, "cpu")
    assert _decays(opt) == {1: {5e-4}, 2: {5e-4}}
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(net.parameters()))
    tiny = preset_config("tiny").train
    assert tiny.optim.decay_all is False
    assert _decays(make_optimizer(net, tiny, "cpu")) == {1: {0.0}, 2: {tiny.optim.weight_decay}}


@pytest.mark.parametrize("saved_all,now_all", [(False, True), (True, False), (True, True)])
def test_resumed_optimizer_decays_as_the_config_says(saved_all, now_all):
    from gpt_study.train.optim import load_optimizer_state, make_optimizer

    net = GPT(GPTConfig(vocab_size=51, **MODEL))
    saved = make_optimizer(net, TrainConfig(decay_all=saved_all), "cpu").state_dict()
    now = TrainConfig(decay_all=now_all, weight_decay=1e-3)
    opt = make_optimizer(net, now, "cpu")
    load_optimizer_state(opt, saved, now)
    assert _decays(opt) == {1: {1e-3 if now_all else 0.0}, 2: {1e-3}}


def test_a_config_saved_before_the_study_settings_keeps_what_it_computed(tmp_path):
    from gpt_study.config import Config, config_to_dict, load_config

    d = config_to_dict(Config())
    d["train"] = Config().train.flat()  # flat, as configs were saved then
    del d["train"]["decay_all"], d["train"]["study_rows"], d["train"]["best_by"]
    (tmp_path / "config.json").write_text(json.dumps(d))
    old = load_config(tmp_path / "config.json").train
    assert old.optim.decay_all is False and old.rows.study_rows is False and old.window == 128
    assert old.valid.best_by == "nll"
    assert Config().train.optim.decay_all is True and Config().train.rows.study_rows is True


# ---------------------------------------------------------------------------- whole runs


def test_a_few_steps_lower_the_loss_and_write_everything(tiny_prepared, tmp_path):
    root = tmp_path / "run"
    res = fit(build_config("tiny", train=tiny_train(tiny_prepared, root, epoch=3), model=MODEL))
    assert res.stopped == "done" and res.step == 18 and res.epoch == 3
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["step"] for r in valid] == [6, 12, 18]
    assert valid[0]["valid_nll"] < math.log(51)  # already better than uniform
    assert valid[-1]["valid_nll"] < valid[0]["valid_nll"] - 0.3
    train = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train] == [3, 6, 9, 12, 15, 18]
    assert train[-1]["train_loss"] < train[0]["train_loss"]
    assert (root / "metrics.csv").read_text().count("\n") == len(records) + 1
    assert (root / "loss.png").stat().st_size > 1000
    log_text = (root / "info.log").read_text()
    assert "valid @ step 18" in log_text and "sample:" in log_text and "global batch" in log_text
    for name in ("last", "best"):
        assert (root / name / "model.safetensors").exists()
    state = json.loads((root / "last" / "state.json").read_text())
    assert state["step"] == 18 and state["sampler"]["position"] == 18
    assert state["best_valid_nll"] == pytest.approx(valid[-1]["valid_nll"])
    assert not (root / "best" / "optimizer.pt").exists()  # best is for use, last for resuming


@pytest.mark.parametrize("preset,best_step", [("seed", 12), ("tiny", 6)])
def test_best_is_the_lowest_valid_loss_in_seed_and_the_lowest_nll_in_tiny(
    tiny_prepared, tmp_path, monkeypatch, preset, best_step
):
    """The study kept the checkpoint of lowest valid loss (smoothed, weighted); here the two
    numbers disagree on purpose: step 6 has the lower NLL, step 12 the lower loss. Compare's
    table and the server's run list report the validation ``best/`` holds, by either rule."""
    from gpt_study.compare.runs import load_runs, summarize
    from gpt_study.serve.registry import Runs
    from gpt_study.train.validate import Validation

    scripted = iter([(3.0, 2.0), (2.5, 2.2), (2.5, 2.0)])  # (loss, nll) at steps 6, 12, 18

    def fake_validate(*a, **kw):
        loss, nll = next(scripted)
        return Validation(loss=loss, nll=nll, ppl=math.exp(nll), bpb=None, tokens=1, fraction=1.0)

    monkeypatch.setattr(train_loop, "validate", fake_validate)
    root = tmp_path / preset
    train = tiny_train(tiny_prepared, root, sample_tokens=0, batch_size=2, epoch=3)
    fit(build_config(preset, train=train, model=MODEL))
    best = json.loads((root / "best" / "state.json").read_text())
    assert best["best_step"] == best_step == best["step"]
    assert (best["best_valid_loss"], best["best_valid_nll"]) == (
        (3.0, 2.0) if preset == "tiny" else (2.5, 2.2)
    )  # step 18 ties the best on either number: the first stays best
    assert json.loads((root / "last" / "state.json").read_text())["step"] == 18
    row = summarize(load_runs([str(root)], min_runs=1)[0][0])
    assert (row["best_step"], row["best_valid_nll"]) == (best_step, best["best_valid_nll"])
    listed = Runs(tmp_path).summaries()
    assert [(r["name"], r["best_valid_nll"]) for r in listed] == [(preset, best["best_valid_nll"])]


def _interrupt_at(step_to_stop, signum, monkeypatch):
    real = train_loop.train_step

    def step(r, s):
        out = real(r, s)
        if s + 1 == step_to_stop:
            os.kill(os.getpid(), signum)  # as Ctrl-C or a scheduler would, mid-run
        return out

    monkeypatch.setattr(train_loop, "train_step", step)


def test_dropout_from_trains_the_first_share_without_dropout_and_resumes_across_the_switch(
    tiny_prepared, tmp_path
):
    """--dropout_from 0.5 of 12 steps: steps 0-5 as a model without dropout trains them (no
    mask drawn, so the same generator too), the rest with every dropout, and a run stopped
    before the switch and resumed reaches the uninterrupted weights bit for bit."""
    assert [dropout_on(s, TrainConfig(dropout_from=0.5, epoch=2, iters_per_epoch=6)) for s in
            (0, 5, 6, 11)] == [False, False, True, True]  # fmt: skip
    with pytest.raises(UserError, match="--dropout_from 1.5 is out of range"):
        TrainConfig(dropout_from=1.5)
    late = dict(MODEL, **DROPOUT, inner_drop=0.1)

    def run(name, model, **kw):
        train = tiny_train(tiny_prepared, tmp_path / name, sample_tokens=0, **kw)
        return fit(build_config("tiny", train=train, model=model))

    assert run("whole", late, dropout_from=0.5).step == 12
    run("none6", MODEL, max_steps=6)
    run("late6", late, dropout_from=0.5, max_steps=6)
    a, b = weights(tmp_path / "none6" / "last"), weights(tmp_path / "late6" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)  # no dropout before the switch
    run("late4", late, dropout_from=0.5, max_steps=4)
    resumed = build_config(
        train={"save_root": str(tmp_path / "late4"), "max_steps": 0}, resume=True
    )
    assert fit(resumed, resume=True).step == 12
    a, b = weights(tmp_path / "whole" / "last"), weights(tmp_path / "late4" / "last")
    assert all(torch.equal(a[k], b[k]) for k in a)
    run("none", MODEL)
    c = weights(tmp_path / "none" / "last")
    assert not all(torch.equal(a[k], c[k]) for k in a)  # it drops after the switch


@pytest.mark.parametrize("how", ["max_steps", "SIGINT", "SIGTERM"])
def test_resume_equals_uninterrupted_bit_for_bit(tiny_prepared, tmp_path, monkeypatch, how):
    """Dropout on and grad accumulation: RNG, optimizer, schedule and data position all count."""
    kw = dict(grad_accum=2, lr_schedule="cosine", warmup_steps=3)
    model = dict(MODEL, **DROPOUT)
    whole = fit(
        build_config("tiny", train=tiny_train(tiny_prepared, tmp_path / "a", **kw), model=model)
    )
    assert whole.step == 12

    if how == "max_steps":
        first = fit(
            build_config(
                "tiny",
                train=tiny_train(tiny_prepared, tmp_path / "b", max_steps=8, **kw),
                model=model,
            )
        )
        assert first.stopped == "max_steps" and first.step == 8
    else:
        signum = getattr(signal, how)
        with monkeypatch.context() as m:
            _interrupt_at(8, signum, m)
            first = fit(
                build_config(
                    "tiny", train=tiny_train(tiny_prepared, tmp_path / "b", **kw), model=model
                )
            )
        assert first.stopped == how and first.step == 8 and first.exit_code == 128 + signum
        assert json.loads((tmp_path / "b" / "last" / "state.json").read_text())["step"] == 8
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handlers restored
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    second = fit(
        build_config(train={"save_root": str(tmp_path / "b"), "max_steps": 0}, resume=True),
        resume=True,
    )
    assert second.step == 12 and second.stopped == "done"

    a, b = weights(tmp_path / "a" / "last"), weights(tmp_path / "b" / "last")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a = torch.load(tmp_path / "a" / "last" / "optimizer.pt", weights_only=True)
    opt_b = torch.load(tmp_path / "b" / "last" / "optimizer.pt", weights_only=True)
    for i, st in opt_a["optimizer"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], opt_b["optimizer"]["state"][i]["exp_avg_sq"])
    assert second.last_valid["valid_nll"] == whole.last_valid["valid_nll"]
    # The resumed run's metrics continue the stopped one's without duplicates.
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    assert steps == [3, 6, 9, 12]


def test_resume_continues_with_a_larger_epoch_budget(tiny_prepared, tmp_path):
    fit(build_config("tiny", train=tiny_train(tiny_prepared, tmp_path / "r", epoch=1), model=MODEL))
    res = fit(
        build_config(train={"save_root": str(tmp_path / "r"), "epoch": 2}, resume=True),
        resume=True,
    )
    assert res.step == 12 and res.epoch == 2
    done = fit(build_config(train={"save_root": str(tmp_path / "r")}, resume=True), resume=True)
    assert done.step == 12 and done.stopped == "done"  # nothing left to do


def test_nan_loss_stops_with_one_line_and_keeps_the_last_good_checkpoint(
    tiny_prepared, tmp_path, monkeypatch
):
    import gpt_study.model.loss as loss_mod

    calls = {"n": 0}
    real = loss_mod.head_loss

    def poisoned(*a, **kw):
        calls["n"] += 1
        loss = real(*a, **kw)
        return loss * float("nan") if calls["n"] > 8 else loss

    monkeypatch.setattr(loss_mod, "head_loss", poisoned)  # training steps 1-8 fine, then NaN
    root = tmp_path / "nan"
    with pytest.raises(UserError, match=r"loss became nan at step 9.*last good checkpoint"):
        fit(build_config("tiny", train=tiny_train(tiny_prepared, root), model=MODEL))
    state = json.loads((root / "last" / "state.json").read_text())
    assert state["step"] == 6  # the epoch-1 checkpoint, untouched
    assert all(torch.isfinite(w).all() for w in weights(root / "last").values())


def test_cli_train_then_plot(tiny_prepared, tmp_path, capsys):
    root = tmp_path / "cli"
    argv = ["train", "--preset", "tiny", "--data", str(tiny_prepared), "--save_root", str(root)]
    argv += ["--context_size", "16", "--batch_size", "4", "--epoch", "1", "--iters_per_epoch"]
    argv += ["4", "--d_model", "32", "--n_heads", "4", "--n_layers", "1", "--max_len", "32"]
    argv += ["--dtype", "float32", "--sample_tokens", "0", "--lr_betas", "0.9", "0.95"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "valid @ step 4" in out and "NLL" in out and "bits/byte" in out
    cfg = json.loads((root / "last" / "config.json").read_text())
    assert cfg["train"]["optim"]["lr_betas"] == [0.9, 0.95] and cfg["model"]["d_model"] == 32
    assert cfg["model"]["vocab_size"] == 51 and cfg["preset"] == "tiny"
    (root / "loss.png").unlink()
    assert main(["plot", "--save_root", str(root)]) == 0
    assert (root / "loss.png").exists()


def test_default_data_folder_comes_from_dataset_root(tiny_prepared, tmp_path, monkeypatch):
    """Without --data, the study's --dataset_root/--vocab_size name the prepared folder."""
    import shutil

    shutil.copytree(tiny_prepared, tmp_path / "data" / "word-51")
    monkeypatch.chdir(tmp_path)
    t = tiny_train(tiny_prepared, tmp_path / "run", epoch=1, iters_per_epoch=2)
    del t["data"]
    res = fit(
        build_config("tiny", train=t, model=MODEL, data={"dataset_root": "data", "vocab_size": 51})
    )
    assert res.step == 2
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["train"]["data"] == str(tmp_path / "data" / "word-51")  # absolute: usable anywhere


# ---------------------------------------------------------------------------- options


def test_muon_moves_the_block_matrices_and_adamw_the_rest():
    net = GPT(GPTConfig(vocab_size=51, **MODEL))
    tc = TrainConfig(optimizer="muon", lr=1e-3, muon_lr=0.02, weight_decay=0.1)
    opt = make_optimizer(net, tc, "cpu")
    assert isinstance(opt, MuonWithAdamW) and isinstance(opt.muon, torch.optim.Muon)
    names = {id(p): n for n, p in net.named_parameters()}
    muon = {names[id(p)] for g in opt.muon.param_groups for p in g["params"]}
    assert muon == {
        f"blocks.{i}.{m}.weight"
        for i in range(2)
        for m in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
    }
    adamw = [names[id(p)] for g in opt.adamw.param_groups for p in g["params"]]
    assert sorted(muon | set(adamw)) == sorted(names.values()) and not muon & set(adamw)
    assert {"tok_emb.weight", "head.weight", "ln_f.weight"} <= set(adamw)
    (g,) = opt.muon.param_groups
    # the schedule's rate x 20 for Muon; its decay shrinks the matrices as AdamW's would per step
    assert g["lr_scale"] == pytest.approx(20) and g["momentum"] == 0.95
    assert g["lr_scale"] * g["weight_decay"] == pytest.approx(tc.optim.weight_decay)
    assert len(opt.param_groups) == 3


def test_muon_needs_a_torch_that_has_it(monkeypatch):
    monkeypatch.delattr(torch.optim, "Muon")
    net = GPT(GPTConfig(vocab_size=51, **MODEL))
    with pytest.raises(UserError, match=r"torch 2.9 or later.*--optimizer adamw"):
        make_optimizer(net, TrainConfig(optimizer="muon"), "cpu")


def test_muon_lowers_the_loss_and_resumes_bit_for_bit(tiny_prepared, tmp_path, capsys):
    kw = dict(optimizer="muon", muon_lr=0.02, lr_schedule="cosine", warmup_steps=3, grad_accum=2)
    model = dict(MODEL, **DROPOUT)
    whole = fit(
        build_config("tiny", train=tiny_train(tiny_prepared, tmp_path / "a", **kw), model=model)
    )
    records = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    nll = [r["valid_nll"] for r in records if r["kind"] == "valid"]
    assert nll[0] < math.log(51) and nll[1] < nll[0] - 0.1
    first = fit(
        build_config(
            "tiny", train=tiny_train(tiny_prepared, tmp_path / "b", max_steps=8, **kw), model=model
        )
    )
    assert first.step == 8
    resume = ["train", "--save_root", str(tmp_path / "b"), "--resume"]
    assert "optimizer state is muon's" in _err(resume + ["--optimizer", "adamw"], capsys)
    b_again = {"save_root": str(tmp_path / "b"), "max_steps": 0}
    second = fit(build_config(train=b_again, resume=True), resume=True)
    assert second.step == 12
    a, b = weights(tmp_path / "a" / "last"), weights(tmp_path / "b" / "last")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    opt_a, opt_b = (
        torch.load(tmp_path / r / "last" / "optimizer.pt", weights_only=True)["optimizer"]
        for r in ("a", "b")
    )
    for i, st in opt_a["muon"]["state"].items():
        assert torch.equal(st["momentum_buffer"], opt_b["muon"]["state"][i]["momentum_buffer"])
    for i, st in opt_a["adamw"]["state"].items():
        assert torch.equal(st["exp_avg_sq"], opt_b["adamw"]["state"][i]["exp_avg_sq"])
    assert second.last_valid["valid_nll"] == whole.last_valid["valid_nll"]


def test_a_byte_level_run_learns(tmp_path):
    """prepare --tokenizer byte on a tiny corpus, then a few steps on its 259 ids."""
    rng = random.Random(0)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for split, n in (("train", 40), ("valid", 8)):
        text = "".join(f"{synthetic_story(rng)}\n<|endoftext|>\n" for _ in range(n))
        (corpus / f"{split}.txt").write_text(text)
    out = str(tmp_path / "byte")
    cfg = DataConfig(data=[str(corpus)], out=out, tokenizer="byte", min_chars=0, workers=1)
    out = prepare(cfg, progress=False, log=lambda m: None)
    root = tmp_path / "run"
    train = tiny_train(out, root, context_size=32, iters_per_epoch=10, lr=1e-2)
    res = fit(build_config("tiny", train=train, model=MODEL))
    saved = json.loads((root / "config.json").read_text())
    assert saved["model"]["vocab_size"] == 259 and saved["data"]["tokenizer"] == "byte"
    nll = [
        json.loads(x)["valid_nll"]
        for x in (root / "metrics.jsonl").read_text().splitlines()
        if '"valid"' in x
    ]
    assert nll[0] < math.log(259) - 2 and nll[1] < nll[0] and res.step == 20


def test_auto_threads_tune_a_run_and_fit_puts_the_count_back(tiny_prepared, tmp_path):
    """Under the tests' one thread auto has nothing to choose (so the bit-exact tests above hold);
    with two, fit tunes and leaves torch as it found it."""
    train = tiny_train(tiny_prepared, tmp_path / "one", epoch=1, iters_per_epoch=10, threads=0)
    fit(build_config("tiny", train=train, model=MODEL))
    assert "threads:" not in (tmp_path / "one" / "info.log").read_text()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        train = dict(train, save_root=str(tmp_path / "two"))
        fit(build_config("tiny", train=train, model=MODEL))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    log_text = (tmp_path / "two" / "info.log").read_text()
    choices = [line for line in log_text.splitlines() if " INFO threads: " in line]
    assert len(choices) == 1 and "timed again every epoch" in choices[0]


# ---------------------------------------------------------------------------- bad input


def _err(argv, capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_bad_inputs_get_one_line(tiny_prepared, tmp_path, capsys):
    base = ["train", "--preset", "tiny", "--save_root", str(tmp_path / "r")]
    data = ["--data", str(tiny_prepared)]
    assert "no prepared data folder" in _err(base + ["--data", str(tmp_path / "nope")], capsys)
    (tmp_path / "empty").mkdir()
    assert "no meta.json" in _err(base + ["--data", str(tmp_path / "empty")], capsys)
    assert "above --max_len" in _err(base + data + ["--context_size", "200"], capsys)
    assert "does not divide" in _err(base + data + ["--n_heads", "5"], capsys)
    assert "no checkpoint" in _err(base + data + ["--resume"], capsys)
    assert "--min_freq 3 but" in _err(base + data + ["--min_freq", "3"], capsys)
    if importlib.util.find_spec("wandb") is None:  # where wandb is installed it would log in
        assert 'pip install -e ".[wandb]"' in _err(
            base + data + ["--wb_flag", "--epoch", "1"], capsys
        )
    assert "no metrics.jsonl" in _err(["plot", "--save_root", str(tmp_path / "none")], capsys)
    from conftest import write_prepared

    no_valid = write_prepared(tmp_path / "no-valid", n_valid=0)
    assert "no text to validate on" in _err(base + ["--data", str(no_valid)], capsys)


def test_existing_run_and_resume_mismatches(tiny_prepared, tmp_path, capsys):
    from conftest import write_prepared

    root = tmp_path / "r"
    fit(
        build_config(
            "tiny", train=tiny_train(tiny_prepared, root, epoch=1, iters_per_epoch=2), model=MODEL
        )
    )
    again = ["train", "--preset", "tiny", "--data", str(tiny_prepared), "--save_root", str(root)]
    assert "already holds a run" in _err(again, capsys)
    resume = ["train", "--save_root", str(root), "--resume"]
    assert "architecture cannot change" in _err(resume + ["--d_model", "64"], capsys)
    assert "used preset tiny" in _err(resume + ["--preset", "seed"], capsys)
    other = write_prepared(tmp_path / "other", vocab_size=40)
    assert "vocabulary of 40" in _err(resume + ["--data", str(other)], capsys)
    # another checkpoint's weights: the resume would ignore them and its config would say them
    before = (root / "config.json").read_text()
    err = _err(resume + ["--init_from", str(root / "best")], capsys)
    assert "--init_from" in err and "continues from its own last/" in err
    assert (root / "config.json").read_text() == before


def test_fit_applies_the_runs_process_settings_and_puts_them_back(
    tiny_prepared, tmp_path, monkeypatch
):
    """A library fit trains as `gpt-study train` does (the CLI used to apply the threads and
    speed settings around fit, a notebook's fit went without) and leaves the process as it was."""
    before = torch.get_num_threads()
    wanted = 1 if before > 1 else 2
    seen = []
    real = train_loop.train_step

    def step(r, s):
        seen.append(torch.get_num_threads())
        return real(r, s)

    monkeypatch.setattr(train_loop, "train_step", step)
    train = tiny_train(tiny_prepared, tmp_path / "run", sample_tokens=0, threads=wanted)
    fit(build_config("tiny", train=train, model=MODEL))
    assert seen and set(seen) == {wanted}
    assert torch.get_num_threads() == before
