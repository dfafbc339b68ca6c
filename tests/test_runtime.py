"""``--threads auto``: the thread tuner against a fake clock, and the restored thread count."""

from __future__ import annotations

import pytest
import torch

from gpt_study.runtime.device import ThreadTuner, thread_tuning


class FakeMachine:
    """A step costs ``cost[threads]`` seconds of a fake clock; records every count applied."""

    def __init__(self, cost: dict[int, float]) -> None:
        self.cost, self.now, self.threads, self.applied = dict(cost), 0.0, 2, []

    def clock(self) -> float:
        return self.now

    def apply(self, n: int) -> None:
        self.threads = n
        self.applied.append(n)

    def step(self) -> None:
        self.now += self.cost[self.threads]


def _epoch(tuner: ThreadTuner, m: FakeMachine, steps: int) -> list[int]:
    """The thread count of each step of one epoch."""
    tuner.new_epoch(steps)
    used = []
    for _ in range(steps):
        with tuner.step():
            used.append(m.threads)
            m.step()
    return used


def test_tuner_keeps_the_faster_count_and_checks_again_every_epoch():
    m = FakeMachine({1: 1.0, 2: 0.5})  # idle: two threads twice as fast
    lines: list[str] = []
    tuner = ThreadTuner([2, 1], clock=m.clock, apply=m.apply, log=lines.append)
    # 2 warm-up steps (one per count, starting their threads), a timed round of one step each:
    # 0.5 s against 1.0 s is plain (margin 1.5), so no more rounds; then the winner
    assert _epoch(tuner, m, 12) == [1, 2, 1, 2] + [2] * 8
    assert tuner.chosen == 2 and len(lines) == 1
    assert lines[0].startswith("threads: 2 (500 ms/step; 1 threads: 1000 ms/step; mean of 1 ")
    m.cost = {1: 1.0, 2: 3.0}  # another process took a core: two threads now wait
    # later epochs warm up on the count in use
    assert _epoch(tuner, m, 12) == [2, 2, 1, 2] + [1] * 8
    assert tuner.chosen == 1 and lines[1].startswith(
        "threads: now 1 (1000 ms/step; 2 threads: 3000"
    )
    _epoch(tuner, m, 12)  # same winner: no new line
    assert len(lines) == 2


def test_tuner_times_every_round_when_the_counts_are_close():
    m = FakeMachine({1: 1.0, 2: 0.75})  # 1.33x apart: not plain after one round
    tuner = ThreadTuner([1, 2], clock=m.clock, apply=m.apply)
    assert _epoch(tuner, m, 12) == [1, 2] + [1, 2] * 3 + [2] * 4
    assert tuner.times == {1: [pytest.approx(1.0)] * 3, 2: [pytest.approx(0.75)] * 3}
    assert tuner.chosen == 2


def test_tuner_breaks_a_tie_toward_one_thread_and_skips_short_epochs():
    m = FakeMachine({1: 1.0, 2: 1.0})
    tuner = ThreadTuner([1, 2], clock=m.clock, apply=m.apply)
    _epoch(tuner, m, 9)
    assert tuner.chosen == 1
    m.applied.clear()
    assert _epoch(tuner, m, 8) == [1] * 8  # 8 steps leave none for the winner: no trials
    assert m.applied == []


def test_tuner_does_nothing_with_one_candidate_and_ignores_a_failed_step():
    m = FakeMachine({1: 1.0, 2: 0.5})
    idle = ThreadTuner([4], clock=m.clock, apply=m.apply)
    assert not idle.active and _epoch(idle, m, 20) == [2] * 20 and m.applied == []
    tuner = ThreadTuner([1, 2], warmup=0, trials=1, clock=m.clock, apply=m.apply)
    tuner.new_epoch(10)
    with pytest.raises(RuntimeError), tuner.step():
        m.step()
        raise RuntimeError("a step that fails is not timed")
    assert tuner.times == {1: [], 2: []}


def test_thread_tuning_tunes_only_auto_on_a_cpu_with_threads_to_spare():
    before = torch.get_num_threads()  # 1: the session fixture
    try:
        with thread_tuning(0, "cpu") as tuner:
            assert not tuner.active  # one thread already: nothing to choose (tests rely on it)
        torch.set_num_threads(2)
        with thread_tuning(0, "cpu") as tuner:
            assert tuner.candidates == [1, 2]
            torch.set_num_threads(1)  # the tuner's choice ...
        assert torch.get_num_threads() == 2  # ... undone when the run ends
        with thread_tuning(0, "cpu", compiled=True) as tuner:
            assert not tuner.active  # each count would compile the step again
        for threads, device in ((3, "cpu"), (0, "cuda:0")):
            with thread_tuning(threads, device) as tuner:
                assert not tuner.active
    finally:
        torch.set_num_threads(before)


def test_every_install_hint_names_an_extra_the_package_has():
    """One piece of advice for a missing extra (runtime.errors.install): each extra the code
    names exists in pyproject.toml, so the advice works."""
    import re
    from pathlib import Path

    import tomllib

    root = Path(__file__).resolve().parents[1]
    extras = tomllib.loads((root / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    named = set()
    for path in (root / "src" / "gpt_study").rglob("*.py"):
        named |= set(re.findall(r"""install\(['"](\w+)['"]\)""", path.read_text()))
    assert named and named <= set(extras), named - set(extras)
    assert named >= {"export", "serve", "parquet", "hub", "wandb"}
