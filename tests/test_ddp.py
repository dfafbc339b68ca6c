"""Training under torchrun: 2 CPU processes with gloo, against a single process.

Each test launches ``python -m torch.distributed.run --standalone --nproc_per_node=2 -m
gpt_study train ...`` in a subprocess, as a user would, on a tiny model.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL
from gpt_study.train.fit import fit
from gpt_study.train.setup import build_config

MODEL = TINY_MODEL
TRAIN = dict(
    context_size=16,
    epoch=1,
    iters_per_epoch=4,
    dtype="float32",
    device="cpu",
    sample_tokens=8,
    print_interval=1,
    lr=3e-3,
    warmup_steps=0,
    lr_schedule="constant",
)


def flags(d: dict) -> list[str]:
    out = []
    for k, v in d.items():
        out += [f"--{k}"] if v is True else [f"--{k}", str(v)]
    return out


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


@pytest.fixture(autouse=True)
def _own_tmpdir(tmp_path, monkeypatch):
    """torchrun's elastic agent makes a ``torchelastic_*`` folder in the temporary directory and
    leaves it there: each test gives it one of its own, so the suite leaves nothing in /tmp."""
    (tmp_path / "tmp").mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp_path / "tmp"))


def torchrun_env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def torchrun(args: list[str], timeout: float = 300, script: str | None = None):
    target = [script] if script else ["-m", "gpt_study"]
    return subprocess.run(
        TORCHRUN + target + args,
        env=torchrun_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def ddp_train(data, root, **kw) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--save_root", str(root)] + flags(
        {**TRAIN, **MODEL, "batch_size": 4, **kw}
    )


def weights(path):
    return load_file(str(path / "model.safetensors"))


def single_process(data, root, **kw):
    t = dict(TRAIN, data=str(data), save_root=str(root), batch_size=8, **kw)
    return fit(build_config("tiny", train=t, model=MODEL))


def assert_same_weights(a_dir, b_dir):
    a, b = weights(a_dir), weights(b_dir)
    assert a.keys() == b.keys()
    for k in a:
        # Summation order differs; Adam turns a tiny gradient difference into at most a small
        # share of one step (lr 3e-3) on near-zero gradients.
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=3e-4)


def test_two_processes_match_one_with_the_same_global_batch(tiny_prepared, tmp_path):
    """2 ranks x 4 rows give the weights of 1 process x 8 rows; only rank 0 writes."""
    root = tmp_path / "ddp"
    run = torchrun(ddp_train(tiny_prepared, root))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "global batch = 4 rows x 2 process(es) x 1 accumulation = 8 rows" in run.stdout
    assert run.stdout.count("valid @ step 4") == 1  # rank 0 alone logs
    log_lines = (root / "info.log").read_text().splitlines()
    assert sum("valid @ step 4" in line for line in log_lines) == 1
    assert sorted(p.name for p in root.iterdir()) == [
        "best",
        "config.json",
        "info.log",
        "last",
        "loss.png",
        "metrics.csv",
        "metrics.jsonl",
    ]  # one checkpoint of each, no debris of a second writer
    state = json.loads((root / "last" / "state.json").read_text())
    assert state["step"] == 4 and state["world_size"] == 2 and len(state["rng"]) == 2
    assert state["rng"][0]["torch"] != state["rng"][1]["torch"]  # each rank its own dropout RNG

    single = single_process(tiny_prepared, tmp_path / "one")
    assert_same_weights(root / "last", tmp_path / "one" / "last")
    train_losses = [
        json.loads(line)["train_loss"]
        for line in (root / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    one_losses = [
        json.loads(line)["train_loss"]
        for line in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()
        if '"train"' in line
    ]
    assert train_losses == pytest.approx(one_losses, rel=1e-5)
    valid = state["last_valid"]
    assert valid["valid_nll"] == pytest.approx(single.last_valid["valid_nll"], rel=1e-5)
    assert valid["valid_tokens"] == single.last_valid["valid_tokens"]  # sharded, all scored


@pytest.mark.slow
def test_resume_under_torchrun_continues_the_step_count(tiny_prepared, tmp_path):
    root = tmp_path / "ddp"
    first = torchrun(ddp_train(tiny_prepared, root, max_steps=2))
    assert first.returncode == 0, first.stdout + first.stderr
    assert json.loads((root / "last" / "state.json").read_text())["step"] == 2
    resume = ["train", "--save_root", str(root), "--resume", "--max_steps", "0"]
    second = torchrun(resume + ["--device", "cpu"])
    assert second.returncode == 0, second.stdout + second.stderr
    assert "resuming run" in second.stdout and "step 4/4" in second.stdout
    steps = [json.loads(line)["step"] for line in (root / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 2, 3, 4, 4]  # train 1, 2, valid 2, train 3, 4, valid 4: no repeats
    single_process(tiny_prepared, tmp_path / "one")
    assert_same_weights(root / "last", tmp_path / "one" / "last")


@pytest.mark.slow
def test_a_two_process_run_resumes_in_one_process_with_the_same_global_batch(
    tiny_prepared, tmp_path, caplog
):
    """Rows depend on the global batch only, so the run may move to another process count."""
    root = tmp_path / "ddp"
    first = torchrun(ddp_train(tiny_prepared, root, max_steps=2))
    assert first.returncode == 0, first.stdout + first.stderr
    with caplog.at_level("WARNING", logger="gpt_study.train"):
        res = fit(
            build_config(
                train={"save_root": str(root), "max_steps": 0, "batch_size": 8}, resume=True
            ),
            resume=True,
        )
    assert res.step == 4
    assert "written by 2 process(es), this run has 1" in caplog.text
    assert "global batch was" not in caplog.text  # 4 rows x 2 processes = 8 rows x 1
    single_process(tiny_prepared, tmp_path / "one")
    assert_same_weights(root / "last", tmp_path / "one" / "last")


@pytest.mark.slow
def test_grad_accumulation_under_ddp_matches_one_process(tiny_prepared, tmp_path):
    """2 ranks x 2 rows x 2 micro-steps (no all-reduce on the first) = 1 process x 8 rows."""
    root = tmp_path / "acc"
    run = torchrun(ddp_train(tiny_prepared, root, batch_size=2, grad_accum=2, sample_tokens=0))
    assert run.returncode == 0, run.stdout + run.stderr
    assert "= 2 rows x 2 process(es) x 2 accumulation = 8 rows" in run.stdout
    fit(
        build_config(
            "tiny",
            train=dict(
                TRAIN, data=str(tiny_prepared), save_root=str(tmp_path / "one"), batch_size=8
            ),
            model=MODEL,
        )
    )
    a, b = weights(root / "last"), weights(tmp_path / "one" / "last")
    for k in a:
        # Summation order differs; Adam turns a tiny gradient difference into at most a small
        # share of one step (lr 3e-3) on near-zero gradients.
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=3e-4)


@pytest.mark.slow
def test_ema_under_torchrun_matches_one_process(tiny_prepared, tmp_path):
    """--ema: every rank keeps the same average; best/ (the average) and last/ (the live
    weights) match one process with the same global batch."""
    root = tmp_path / "ddp"
    run = torchrun(ddp_train(tiny_prepared, root, ema=0.9, sample_tokens=0))
    assert run.returncode == 0, run.stdout + run.stderr
    single_process(tiny_prepared, tmp_path / "one", ema=0.9, sample_tokens=0)
    assert_same_weights(root / "last", tmp_path / "one" / "last")
    assert_same_weights(root / "best", tmp_path / "one" / "best")
    assert not torch.equal(
        weights(root / "best")["head.weight"], weights(root / "last")["head.weight"]
    )


@pytest.mark.slow
def test_fit_epochs_under_torchrun_gives_every_rank_one_schedule(tiny_prepared, tmp_path):
    """The ranks average their first epoch's time, so they fit the same --epoch and stop
    together; the fitted value is what the checkpoint and config.json keep."""
    root = tmp_path / "fit"
    run = torchrun(ddp_train(tiny_prepared, root, max_time=0.02, fit_epochs=True, sample_tokens=0))
    assert run.returncode == 0, run.stdout + run.stderr
    fits = [ln for ln in run.stdout.splitlines() if "--fit_epochs: epoch" in ln]
    assert fits and len(fits) == len(set(fits))  # rank 0 alone logs, after each epoch it fits
    fitted = int(fits[-1].split(" holds ")[1].split()[0])
    saved = json.loads((root / "last" / "config.json").read_text())
    assert saved["train"]["budget"]["epoch"] == fitted


FAILING_WORKER = """
    import os, sys
    from gpt_study.train import loop

    real = loop.train_step

    def step(r, s):
        if os.environ["RANK"] == "1" and s == 2:
            raise RuntimeError("rank 1 broke on purpose")
        return real(r, s)

    loop.train_step = step
    from gpt_study.cli import main
    sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_failing_rank_brings_the_job_down(tiny_prepared, tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(FAILING_WORKER))
    run = torchrun(
        ddp_train(tiny_prepared, tmp_path / "fail", iters_per_epoch=50),
        timeout=90,
        script=str(script),
    )
    assert run.returncode != 0
    assert "rank 1 broke on purpose" in run.stdout + run.stderr


@pytest.mark.slow
def test_sigterm_to_torchrun_saves_and_the_job_resumes(tiny_prepared, tmp_path):
    """A cluster's preemption: torchrun forwards SIGTERM, the ranks agree, rank 0 saves."""
    root = tmp_path / "pre"
    args = ddp_train(tiny_prepared, root, iters_per_epoch=100_000, sample_tokens=0)
    job = subprocess.Popen(
        TORCHRUN + ["-m", "gpt_study"] + args,
        env=torchrun_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    metrics = root / "metrics.jsonl"
    deadline = time.time() + 90
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert time.time() < deadline and job.poll() is None, "training did not start"
        time.sleep(0.2)
    job.send_signal(signal.SIGTERM)
    out, _ = job.communicate(timeout=90)
    assert out.count("SIGTERM: stopping at step") == 1, out
    assert "checkpoint saved in" in out
    step = json.loads((root / "last" / "state.json").read_text())["step"]
    assert step >= 3
    resume = ["train", "--save_root", str(root), "--resume", "--max_steps", str(step + 2)]
    again = torchrun(resume + ["--device", "cpu"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((root / "last" / "state.json").read_text())["step"] == step + 2


@pytest.mark.slow
def test_compiled_step_under_torchrun_matches_one_eager_process(tiny_prepared, tmp_path):
    """``--compile`` under torchrun (DDP over the compiled loss module): 2 ranks x 4 rows give
    the weights of one eager process x 8 rows, within the tolerance of a different summation
    order and of the compiler's fused kernels."""
    root = tmp_path / "ddp"
    run = torchrun(ddp_train(tiny_prepared, root, compile=True, sample_tokens=0), timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "compile on" in run.stdout, run.stdout
    single_process(tiny_prepared, tmp_path / "one", sample_tokens=0)
    assert_same_weights(root / "last", tmp_path / "one" / "last")


def test_shutdown_leaves_the_group_but_keeps_it_alive_to_the_end(tmp_path, monkeypatch):
    """A gloo group's destructor joins its workers with the GIL held and can hang if one still
    releases its last collective's tensors; shutdown() leaves the group and retires it instead,
    so that destructor runs only when the process ends."""
    import torch.distributed as dist

    from gpt_study.runtime import distributed

    monkeypatch.setattr(distributed, "_retired", [])
    dist.init_process_group(
        "gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1
    )
    group = dist.group.WORLD
    assert distributed.all_reduce_sum([1.0, 2.0]) == [1.0, 2.0]
    distributed.shutdown()
    assert not dist.is_initialized()
    assert distributed._retired == [group]
    distributed.shutdown()  # alone again: nothing to leave
    assert distributed._retired == [group]
