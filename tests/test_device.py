"""A few checks on the device that ``GPT_STUDY_TEST_DEVICE`` names (default ``cpu``).

``benchmarks/gpu_check.sh`` sets it to ``cuda`` on a GPU machine; everywhere else these run on the
CPU, like the rest of the suite. Each is small and checks what changes with the device: cached
decoding against uncached, a few training steps with the runtime plan's ``auto`` choices (bf16,
fused AdamW, pinned batches and SDPA with dropout on a GPU; the CPU kernels here), the fused
attention kernel against the plain formula, and greedy tokens equal on the device and the CPU.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gpt_study.config import EOT_ID, SOT_ID, SampleConfig
from gpt_study.generate import generate_ids, reference_generate
from gpt_study.model import kernels
from gpt_study.model.gpt import GPT, GPTConfig
from gpt_study.runs import INFO_LOG
from gpt_study.runtime.device import resolve_device
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.plan import resolve_plan
from gpt_study.train.fit import fit
from gpt_study.train.setup import build_config

ENV = "GPT_STUDY_TEST_DEVICE"
V = 60
GREEDY = SampleConfig(greedy=True, max_new_tokens=24)
PROMPT = [SOT_ID, 5, 9, 17, 4]


@pytest.fixture(scope="module")
def device() -> str:
    """The device under test: ``$GPT_STUDY_TEST_DEVICE`` (cpu, cuda, cuda:N, mps), default cpu;
    one that is not there fails the tests rather than skipping them."""
    name = os.environ.get(ENV, "cpu")
    try:
        return resolve_device(name)
    except UserError as e:
        pytest.fail(f"{ENV}={name}: {e}")


def _tol(device: str) -> dict[str, float]:
    """fp32 on a CPU agrees closely; a GPU's kernels sum in other orders."""
    return dict(rtol=1e-4, atol=1e-4) if device == "cpu" else dict(rtol=2e-3, atol=2e-3)


def tiny_model(device: str = "cpu", seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(vocab_size=V, max_len=32, d_model=32, d_ff=64, n_layers=2, n_heads=4)
    model = GPT(cfg).eval()
    with torch.no_grad():  # larger logits than the 0.02 init, so greedy choices are not near-ties
        model.head.weight.mul_(20)
        model.head.bias[EOT_ID] = -1e4
    return model.to(device)


def test_cached_decoding_equals_uncached_on_the_device(device):
    model = tiny_model(device)
    got = generate_ids(model, [PROMPT], GREEDY, window=32, return_logits=True)
    want, want_logits = reference_generate(model, PROMPT, GREEDY.max_new_tokens)
    assert got.new_ids[0] == want
    torch.testing.assert_close(torch.stack(got.logits[0]), torch.stack(want_logits), **_tol(device))


def test_greedy_tokens_are_the_same_on_the_device_and_the_cpu(device):
    """A batch on the device writes the CPU's uncached oracle's tokens (on a CPU-only machine
    this still holds the batched loop to the oracle; on a GPU it also compares devices)."""
    oracle = tiny_model("cpu")
    there = generate_ids(tiny_model(device), [PROMPT, PROMPT[:3]], GREEDY, window=32)
    for prompt, row in zip([PROMPT, PROMPT[:3]], there.new_ids, strict=True):
        assert row == reference_generate(oracle, prompt, GREEDY.max_new_tokens, window=32)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_attention_matches_the_plain_formula(device, dtype):
    """What the model runs without dropout (``scaled_dot_product_attention``, causal) against
    the textbook formula, values and gradients."""
    torch.manual_seed(0)
    q, k, v = (
        torch.randn(2, 4, 24, 8, device=device, dtype=dtype, requires_grad=True) for _ in range(3)
    )
    y = kernels.causal_attention(q, k, v)
    mask = torch.ones(24, 24, dtype=torch.bool, device=device).tril()
    want, _ = kernels.plain_attention(q, k, v, mask)
    tol = _tol(device) if dtype == torch.float32 else dict(rtol=0.03, atol=0.03)
    torch.testing.assert_close(y, want, **tol)
    g = torch.randn_like(y)
    got_grads = torch.autograd.grad(y, (q, k, v), g)
    want_grads = torch.autograd.grad(want, (q, k, v), g)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, **tol)


def test_a_few_training_steps_with_the_plans_choices(device, tiny_prepared, tmp_path):
    """``auto`` everything on the device, dropout on (SDPA's on a GPU, the CPU kernels here)."""
    plan = resolve_plan(device, "auto")
    t = {
        **dict(data=str(tiny_prepared), save_root=str(tmp_path / "run"), device=device),
        **dict(dtype="auto", context_size=16, batch_size=4, epoch=1, iters_per_epoch=4),
        **dict(sample_tokens=4, lr=3e-3, warmup_steps=0, lr_schedule="constant"),
    }
    model = dict(max_len=32, d_model=32, d_ff=64, n_layers=2, n_heads=4, attention_drop=0.1)
    res = fit(build_config("tiny", train=t, model=model))
    assert res.step == 4 and math.isfinite(res.last_valid["valid_nll"])
    assert f"device choices: {plan.describe()}" in (tmp_path / "run" / INFO_LOG).read_text()


def test_gpu_check_without_a_gpu_says_so_in_one_line_and_exits_0():
    """benchmarks/gpu_check.sh with no CUDA device in sight (hidden here even on a GPU machine):
    nothing may require a GPU."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "GPU_CHECK_DEVICE": "cuda",
        "PYTHON": sys.executable,
    }
    out = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("gpu_check: no CUDA device here") and out.stdout.count("\n") == 1
