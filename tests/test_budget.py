"""--fit_epochs: the schedule sized to --max_time from the first and second epochs' times, then
kept unless the mean epoch since says it overruns or wastes the budget."""

from __future__ import annotations

import json

import pytest

from gpt_study.config import TrainConfig, load_config
from gpt_study.train import budget
from gpt_study.train.fit import fit
from gpt_study.train.optim import lr_at
from gpt_study.train.setup import build_config
from test_train import MODEL, tiny_train


def test_epochs_in_budget_rounds_to_the_nearest_epoch_and_at_least_one():
    assert budget.epochs_in_budget(900, 61, 1, 61) == 15  # holds 14.75: ends 15 s past it
    assert budget.epochs_in_budget(900, 60, 1, 60) == 15
    assert budget.epochs_in_budget(900, 66, 1, 62) == 14  # holds 14.45: 28 s left over
    assert budget.epochs_in_budget(900, 1000, 1, 1000) == 1
    assert budget.epochs_in_budget(900, 105, 2, 45) == 20  # 795 s left hold 17.67 more
    assert budget.epochs_in_budget(900, 950, 2, 45) == 2  # over budget: the epochs done
    # With a fit made before: kept while the budget holds it -1/2 to +1 epochs.
    assert budget.epochs_in_budget(900, 450, 10, 45, current=19) == 19  # holds 20.0: +1
    assert budget.epochs_in_budget(900, 450, 10, 44, current=19) == 20  # holds 20.23: +1.23
    assert budget.epochs_in_budget(900, 450, 10, 45, current=21) == 20  # would overrun 1 epoch
    assert budget.epochs_in_budget(900, 450, 10, 50, current=19) == 19  # holds 19.0
    assert budget.epochs_in_budget(900, 450, 10, 40, current=19) == 21  # holds 21.25
    assert budget.epochs_in_budget(900, 470, 10, 50, current=19) == 19  # holds 18.6: -0.4
    assert budget.epochs_in_budget(900, 480, 10, 50, current=19) == 18  # holds 18.4: -0.6
    assert budget.epochs_in_budget(900, 455, 10, 50, current=20) == 19  # holds 18.9: -1.1


def _budgeted(epoch=14) -> TrainConfig:
    return TrainConfig(fit_epochs=True, max_time=15.0, iters_per_epoch=250, epoch=epoch)


def test_the_second_epoch_refits_from_its_own_time_not_the_first_ones():
    """A first epoch slowed by start-up (60 s, then 45 s per epoch) would leave 3 epochs of
    the budget unused if it alone were the fit."""
    tc, fit_once = _budgeted(), budget.EpochFit()
    assert not fit_once(tc, 100, 20.0, 20.0)  # not an epoch's end
    assert fit_once(tc, 250, 60.0, 60.0) and tc.budget.epoch == 15
    assert fit_once(tc, 500, 105.0, 105.0) and tc.budget.epoch == 20
    # From the third epoch, the mean of the last three (never the first): 45 s holds 19.7, so
    # 20 stays.
    assert not fit_once(tc, 750, 150.0, 150.0) and tc.budget.epoch == 20
    # The machine slows (epoch 4 takes 110 s): a mean of 67 s holds 13.6, so 14 ...
    assert fit_once(tc, 1000, 260.0, 260.0) and tc.budget.epoch == 14
    # ... and speeds up again (20 s an epoch): the fit follows as the recent mean falls.
    times = {e: 260.0 + 20 * (e - 4) for e in (5, 6, 7, 8)}
    moves = [fit_once(tc, 250 * e, t, t) and tc.budget.epoch for e, t in times.items()]
    assert moves == [16, 18, 36, False] and tc.budget.epoch == 36
    # Resumed after the first fit (the checkpoint kept 15): the second epoch's time is unknown.
    tc, resumed = _budgeted(epoch=15), budget.EpochFit()
    assert not resumed(tc, 500, 105.0, 40.0) and tc.budget.epoch == 15
    tc.budget.fit_epochs = False
    assert not budget.EpochFit()(tc, 250, 60.0, 60.0)


@pytest.mark.parametrize(("fitted", "schedule"), [(3, "cosine"), (1, "linear")])
def test_the_fitted_schedule_is_the_one_trained_saved_and_resumed(
    tiny_prepared, tmp_path, monkeypatch, fitted, schedule
):
    seen = []

    def fake(budget_s, spent_s, done, epoch_s, current=None):
        seen.append((budget_s, done, epoch_s))
        return fitted

    monkeypatch.setattr(budget, "epochs_in_budget", fake)
    root = tmp_path / "fit"
    kw = dict(fit_epochs=True, max_time=5.0, epoch=2, lr_schedule=schedule, min_lr=1e-4)
    result = fit(build_config("tiny", train=tiny_train(tiny_prepared, root, **kw), model=MODEL))
    # after every epoch the fitted schedule reaches
    assert [d for _, d, _ in seen] == [1, 2, 3][:fitted]
    assert all(b == 300 and t > 0 for b, _, t in seen)
    assert result.stopped == "done" and result.step == fitted * 6
    for path in (root / "config.json", root / "last" / "config.json"):
        assert load_config(path).train.budget.epoch == fitted, path
    tc = load_config(root / "last" / "config.json").train
    assert lr_at(result.step, tc) == pytest.approx(1e-4)  # the decay ends at the last step
    assert lr_at(result.step - 1, tc) > 1e-4
    again = fit(build_config(train={"save_root": str(root)}, resume=True), resume=True)
    assert again.step == result.step and len(seen) == fitted  # complete: not refitted
    steps = [json.loads(x)["step"] for x in (root / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == fitted * 6


def test_a_fit_that_outgrows_an_ended_schedule_is_trained(tiny_prepared, tmp_path, monkeypatch):
    """A schedule that ends with the epoch that fits it (--epoch 1 here) is followed as fitted:
    the run trains the epochs its saved config says (it once stopped and saved the fit)."""
    monkeypatch.setattr(budget, "epochs_in_budget", lambda *a: 3)
    root = tmp_path / "grown"
    kw = dict(fit_epochs=True, max_time=5.0, epoch=1, lr_schedule="cosine", min_lr=1e-4)
    result = fit(build_config("tiny", train=tiny_train(tiny_prepared, root, **kw), model=MODEL))
    assert result.stopped == "done" and result.step == 3 * 6
    for path in (root / "config.json", root / "last" / "config.json"):
        assert load_config(path).train.budget.epoch == 3, path


def test_without_a_time_budget_the_schedule_stays(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "epochs_in_budget", lambda *a: pytest.fail("fitted"))
    root = tmp_path / "plain"
    train = tiny_train(tiny_prepared, root, fit_epochs=True, epoch=2)
    assert fit(build_config("tiny", train=train, model=MODEL)).step == 12
    assert load_config(root / "last" / "config.json").train.budget.epoch == 2


@pytest.mark.parametrize(
    ("max_steps", "step", "done", "capped"),
    [
        (0, 0, False, False),
        (0, 2_999, False, False),
        (0, 3_000, True, False),
        (0, 10**9, True, False),
        (500, 499, False, False),
        (500, 500, False, True),
        (5_000, 3_000, True, False),
    ],
)
def test_the_schedule_ends_at_its_length_and_max_steps_caps_only_when_set(
    max_steps, step, done, capped
):
    b = TrainConfig(epoch=12, iters_per_epoch=250, max_steps=max_steps).budget
    assert (b.schedule_done(step), b.at_step_cap(step)) == (done, capped)
