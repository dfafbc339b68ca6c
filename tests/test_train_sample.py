"""The sample story after each epoch: a failure keeps the user's run alive but is never hidden
(a warning, a ``sample_error`` in metrics.jsonl, and a failed test: see tests/conftest.py)."""

from __future__ import annotations

import json
import logging

import pytest

from conftest import tiny_fit
from gpt_study.train import loop as train_loop


def _run(data, root):
    return tiny_fit(data, root, iters_per_epoch=2, sample_tokens=8, print_interval=2)


@pytest.mark.sample_may_fail
def test_a_failing_sample_warns_is_recorded_and_the_run_goes_on(
    tiny_prepared, tmp_path, monkeypatch, capsys
):
    def broken(*_args, **_kw):
        raise RuntimeError("the decoder broke\nsecond line")

    monkeypatch.setattr(train_loop, "sample_story", broken)
    root = tmp_path / "run"
    res = _run(tiny_prepared, root)
    assert res.stopped == "done" and res.step == 4 and (root / "last").exists()
    warnings = [line for line in capsys.readouterr().out.splitlines() if "sample story" in line]
    assert len(warnings) == 2  # one line per epoch
    assert "after step 2 failed (RuntimeError: the decoder broke second line)" in warnings[0]
    assert f"gpt-study generate --checkpoint {root / 'last'}" in warnings[0]
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    valid = [r for r in records if r["kind"] == "valid"]
    assert [r["sample_error"] for r in valid] == ["RuntimeError: the decoder broke second line"] * 2


def test_a_working_sample_records_no_error(tiny_prepared, tmp_path, capsys):
    root = tmp_path / "run"
    _run(tiny_prepared, root)
    assert "sample: " in capsys.readouterr().out
    records = [json.loads(line) for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert not any("sample_error" in r for r in records)


class _Item:
    """What the hook reads of a test item: its marker."""

    def __init__(self, marked: bool) -> None:
        self.marked = marked

    def get_closest_marker(self, name: str) -> object:
        return object() if self.marked and name == "sample_may_fail" else None


@pytest.mark.sample_may_fail  # it logs sample failures itself, for the hook under test
def test_the_suite_fails_a_test_whose_sample_fails():
    """The conftest hook: a test during which the loop logged a sample failure fails, unless
    marked; a test without one passes."""
    import conftest

    def call(marked: bool, fail: bool) -> None:
        hook = conftest.pytest_runtest_call(_Item(marked))
        next(hook)
        if fail:
            extra = {"sample_error": "RuntimeError: boom"}
            logging.getLogger("gpt_study.train").warning("failed", extra=extra)
        with pytest.raises(StopIteration):
            hook.send(None)

    with pytest.raises(AssertionError, match="sample story failed: RuntimeError: boom"):
        call(marked=False, fail=True)
    call(marked=True, fail=True)
    call(marked=False, fail=False)
