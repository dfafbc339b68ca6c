"""--fit_epochs: the schedule sized to --max_time from the first epoch's measured time."""

from __future__ import annotations

import json

import pytest

from gpt_study.config import load_config
from gpt_study.train import budget
from gpt_study.train.fit import fit
from gpt_study.train.optim import lr_at
from gpt_study.train.setup import build_config
from test_train import MODEL, tiny_train


def test_epochs_in_budget_counts_whole_epochs_and_at_least_one():
    assert budget.epochs_in_budget(900, 61) == 14
    assert budget.epochs_in_budget(900, 60) == 15
    assert budget.epochs_in_budget(900, 1000) == 1


@pytest.mark.parametrize("fitted", [3, 1])
def test_the_fitted_schedule_is_the_one_trained_saved_and_resumed(
    tiny_prepared, tmp_path, monkeypatch, fitted
):
    seen = []

    def fake(budget_s, first_epoch_s):
        seen.append((budget_s, first_epoch_s))
        return fitted

    monkeypatch.setattr(budget, "epochs_in_budget", fake)
    root = tmp_path / "fit"
    kw = dict(fit_epochs=True, max_time=5.0, epoch=2, lr_schedule="cosine", min_lr=1e-4)
    result = fit(build_config("tiny", train=tiny_train(tiny_prepared, root, **kw), model=MODEL))
    assert len(seen) == 1 and seen[0][0] == 300 and seen[0][1] > 0  # once, after epoch 1
    assert result.stopped == "done" and result.step == fitted * 6
    for path in (root / "config.json", root / "last" / "config.json"):
        assert load_config(path).train.budget.epoch == fitted, path
    tc = load_config(root / "last" / "config.json").train
    assert lr_at(result.step, tc) == pytest.approx(1e-4)  # the cosine ends at the last step
    assert lr_at(result.step - 1, tc) > 1e-4
    again = fit(build_config(train={"save_root": str(root)}, resume=True), resume=True)
    assert again.step == result.step and len(seen) == 1  # complete; never fitted again
    steps = [json.loads(x)["step"] for x in (root / "metrics.jsonl").read_text().splitlines()]
    assert max(steps) == fitted * 6


def test_without_a_time_budget_the_schedule_stays(tiny_prepared, tmp_path, monkeypatch):
    monkeypatch.setattr(budget, "epochs_in_budget", lambda *a: pytest.fail("fitted"))
    root = tmp_path / "plain"
    train = tiny_train(tiny_prepared, root, fit_epochs=True, epoch=2)
    assert fit(build_config("tiny", train=train, model=MODEL)).step == 12
    assert load_config(root / "last" / "config.json").train.budget.epoch == 2
