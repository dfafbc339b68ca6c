"""--ema: the moving average of the weights, what validation and best/ use, and exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from gpt_study.model.gpt import GPT, GPTConfig
from gpt_study.runtime.errors import UserError
from gpt_study.train import loop as train_loop
from gpt_study.train.ema import WeightAverage, evaluated_weights, weight_average
from gpt_study.train.fit import fit
from gpt_study.train.setup import build_config
from test_train import DROPOUT, MODEL, tiny_train, weights


def test_the_average_follows_its_formula_with_the_warmed_up_decay():
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=16, tie_embeddings=True, **MODEL))
    avg = WeightAverage(net, 0.9)
    expect = [p.detach().clone() for p in avg.params]
    for n in range(1, 4):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        avg.update()
        d = min(0.9, (1 + n) / (10 + n))
        expect = [d * e + (1 - d) * p.detach() for e, p in zip(expect, avg.params, strict=True)]
    for got, want in zip(avg.average, expect, strict=True):
        torch.testing.assert_close(got, want)
    # Tied weights are one parameter, averaged once.
    assert len(avg.params) == len(list(net.parameters()))


def test_swapped_in_puts_the_live_weights_back_bit_for_bit():
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=16, **MODEL))
    live = {k: v.clone() for k, v in net.state_dict().items()}
    avg = WeightAverage(net, 0.5)
    avg.average = [torch.randn_like(t) for t in avg.average]
    with evaluated_weights(avg):
        for p, a in zip(avg.params, avg.average, strict=True):
            assert torch.equal(p, a)
    for k, v in net.state_dict().items():
        assert torch.equal(v, live[k]), k
    with evaluated_weights(None):  # --ema 0: the live weights
        assert all(torch.equal(v, live[k]) for k, v in net.state_dict().items())
    assert weight_average(net, 0.0) is None


def test_a_saved_average_that_does_not_fit_is_refused():
    avg = WeightAverage(GPT(GPTConfig(vocab_size=16, **MODEL)), 0.9)
    with pytest.raises(UserError, match="--ema it was started with"):
        avg.load_state_dict({}, "runs/x/last")
    with pytest.raises(UserError, match="no weight average"):
        avg.load_state_dict({"average": avg.average[:-1]}, "runs/x/last")


def _fit(data, root, **kw):
    train = tiny_train(data, root, ema=0.8, sample_tokens=0, **kw)
    return fit(build_config("tiny", train=train, model=dict(MODEL, **DROPOUT)))


def test_validation_and_best_use_the_average_and_last_the_live_weights(
    tiny_prepared, tmp_path, monkeypatch
):
    scored = []
    real = train_loop.validate

    def spy(model, *a, **kw):
        scored.append({k: v.clone() for k, v in model.state_dict().items()})
        return real(model, *a, **kw)

    monkeypatch.setattr(train_loop, "validate", spy)
    root = tmp_path / "ema"
    result = _fit(tiny_prepared, root)
    extra = torch.load(root / "last" / "optimizer.pt", weights_only=True)
    assert extra["ema"]["decay"] == 0.8 and extra["ema"]["updates"] == result.step == 12
    best, last = weights(root / "best"), weights(root / "last")
    state = json.loads((root / "best" / "state.json").read_text())
    net = GPT(GPTConfig(vocab_size=len(scored[0]["tok_emb.weight"]), **MODEL, **DROPOUT))
    names = [n for n, _ in net.named_parameters()]
    for name, avg in zip(names, extra["ema"]["average"], strict=True):
        assert torch.equal(scored[-1][name], avg), name  # validation scored the average
    at_best = scored[state["best_step"] // 6 - 1]  # validations at steps 6 and 12
    assert all(torch.equal(best[name], at_best[name]) for name in names)  # best/: what scored
    assert any(not torch.equal(best[k], last[k]) for k in best)  # last/: the live weights


def test_resume_with_ema_equals_uninterrupted_bit_for_bit(tiny_prepared, tmp_path):
    whole = _fit(tiny_prepared, tmp_path / "a")
    _fit(tiny_prepared, tmp_path / "b", max_steps=8)
    resumed = fit(
        build_config(train={"save_root": str(tmp_path / "b"), "max_steps": 0}, resume=True),
        resume=True,
    )
    assert resumed.step == whole.step == 12
    for folder in ("last", "best"):
        a, b = weights(tmp_path / "a" / folder), weights(tmp_path / "b" / folder)
        assert all(torch.equal(a[k], b[k]) for k in a), folder
    ea = torch.load(tmp_path / "a" / "last" / "optimizer.pt", weights_only=True)["ema"]
    eb = torch.load(tmp_path / "b" / "last" / "optimizer.pt", weights_only=True)["ema"]
    assert ea["updates"] == eb["updates"]
    assert all(torch.equal(x, y) for x, y in zip(ea["average"], eb["average"], strict=True))
    assert resumed.last_valid["valid_nll"] == whole.last_valid["valid_nll"]


def test_without_ema_nothing_is_averaged_or_saved(tiny_prepared, tmp_path):
    root = tmp_path / "plain"
    fit(build_config("tiny", train=tiny_train(tiny_prepared, root, max_steps=6), model=MODEL))
    assert "ema" not in torch.load(root / "last" / "optimizer.pt", weights_only=True)
