"""The runtime plan: every device-dependent choice decided in one place, ``auto`` as before, each
forced branch that a CPU can run trained here, and one line for each that it cannot."""

from __future__ import annotations

import copy
import dataclasses
import math
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import TINY_MODEL, tiny_fit
from gpt_study.cli import main
from gpt_study.config import TrainConfig
from gpt_study.model import kernels
from gpt_study.model.gpt import GPT, GPTConfig
from gpt_study.runtime import plan as plan_module
from gpt_study.runtime.device import cpu_has_fast_bf16, resolve_pin_memory, to_device
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.plan import (
    RuntimePlan,
    grad_scaler,
    resolve_attention,
    resolve_fused_adamw,
    resolve_plan,
)
from gpt_study.train.fit import fit, runtime_plan
from gpt_study.train.optim import make_optimizer
from gpt_study.train.setup import build_config

MODEL = TINY_MODEL
NO_DROPOUT = dict(attention_drop=0.0, residual_drop=0.0, embedding_drop=0.0)
DROPOUT = dict(attention_drop=0.25, residual_drop=0.1, embedding_drop=0.1)


def quick_fit(data, root, model=MODEL, **train):
    """A 2-layer model trained 3 steps on a CPU (one epoch: validation and a checkpoint)."""
    fast = dict(device="cpu", epoch=1, iters_per_epoch=3, sample_tokens=4, lr=3e-3)
    fast.update(warmup_steps=0, lr_schedule="constant")
    return tiny_fit(data, root, model, **{**fast, **train})


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


def _can_pin() -> bool:
    try:
        torch.empty(1).pin_memory()
    except RuntimeError:
        return False
    return True


# ---------------------------------------------------------------------------- auto


def test_auto_resolves_on_a_cpu_as_before_the_plan():
    """What the code chose before the settings existed: bf16 autocast only where the CPU computes
    it natively, fused AdamW (torch has it for CPUs), no pinning, the CPU kernels, gloo."""
    native = torch.bfloat16 if cpu_has_fast_bf16() else torch.float32
    want = RuntimePlan("cpu", native, False, True, False, "cpu_kernels", False, "gloo")
    assert resolve_plan("cpu", "auto") == want
    # the study's default stays float32, and the plan of a config is the same resolution
    default = runtime_plan(dataclasses.replace(TrainConfig().runtime, device="cpu"))
    assert default == dataclasses.replace(want, dtype=torch.float32)
    assert "fused AdamW" in default.describe() and "backend gloo" in default.describe()
    assert make_optimizer(GPT(GPTConfig(vocab_size=20, **MODEL)), TrainConfig(), "cpu").defaults[
        "fused"
    ]


def test_auto_on_a_gpu_is_decided_without_one():
    """The rules for CUDA, read without touching a GPU: SDPA, nccl, pinned batches."""
    assert resolve_attention("auto", "cuda:1") == "sdpa"
    assert resolve_pin_memory("auto", "cuda:0") and not resolve_pin_memory("auto", "cpu")
    from gpt_study.runtime.plan import resolve_backend

    assert resolve_backend("auto", "cuda") == "nccl" and resolve_backend("auto", "cpu") == "gloo"


# ---------------------------------------------------------------------------- forced on a CPU


def test_forced_fused_adamw_steps_like_unfused():
    """One step from the same gradients. (Over several steps the two drift apart where a gradient
    is zero up to rounding, as for the key biases: Adam scales that noise up to full steps.)"""
    torch.manual_seed(0)
    net = GPT(GPTConfig(vocab_size=40, **MODEL, **NO_DROPOUT))  # the same gradients for both
    other = copy.deepcopy(net)
    fused = make_optimizer(net, TrainConfig(fused_adamw="on", lr=1e-2), "cpu")
    plain = make_optimizer(other, TrainConfig(fused_adamw="off", lr=1e-2), "cpu")
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    x = torch.randint(0, 40, (4, 16))
    for m, opt in ((net, fused), (other, plain)):
        m(x).float().logsumexp(-1).mean().backward()
        opt.step()
    for (name, a), b in zip(net.named_parameters(), other.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)
        ma, mb = fused.state[a], plain.state[b]
        torch.testing.assert_close(ma["exp_avg_sq"], mb["exp_avg_sq"], msg=name)


def test_forced_sdpa_with_dropout_trains_on_a_cpu(tiny_prepared, tmp_path, monkeypatch):
    """--attention sdpa: PyTorch's attention and dropout, never the CPU kernels, for the run
    only; --attention cpu_kernels (auto's choice on a CPU) runs them."""
    calls = []

    def spy(name, apply):
        def wrapped(*args):
            calls.append(name)
            return apply(*args)

        return wrapped

    attention, dropout = kernels._CausalAttentionDropout, kernels._Dropout
    monkeypatch.setattr(attention, "apply", spy("attention", attention.apply))
    monkeypatch.setattr(dropout, "apply", spy("dropout", dropout.apply))
    res = quick_fit(tiny_prepared, tmp_path / "sdpa", model={**MODEL, **DROPOUT}, attention="sdpa")
    assert calls == [] and math.isfinite(res.last_valid["valid_nll"])
    assert "attention sdpa" in (tmp_path / "sdpa" / "info.log").read_text()
    assert kernels._cpu_path  # put back when the run returned
    quick_fit(tiny_prepared, tmp_path / "cpu", model={**MODEL, **DROPOUT}, attention="cpu_kernels")
    assert "attention" in calls and "dropout" in calls


def test_sdpa_dropout_keeps_the_expected_share_in_expectation():
    """On the SDPA path the attention dropout keeps 1 - p of the weights and scales them by
    1 / (1 - p): with values of ones, each output row is 1 in expectation."""
    torch.manual_seed(0)
    p = 0.25
    q, k = torch.randn(2, 8, 2, 64, 4).unbind(0)  # 2 x (B, nh, T, hs)
    v = torch.ones(8, 2, 64, 4)
    with kernels.cpu_path(False):
        y = kernels.causal_attention(q, k, v, dropout_p=p)
        x = kernels.dropout(torch.ones(200_000), p)
    assert y.mean().item() == pytest.approx(1.0, abs=0.02)
    assert (x == 0).float().mean().item() == pytest.approx(p, abs=0.005)
    assert x.mean().item() == pytest.approx(1.0, abs=0.01)


def test_float16_trains_with_a_grad_scaler_and_resumes_with_it(tiny_prepared, tmp_path):
    """--dtype float16 runs on a CPU too (fp16 autocast, GradScaler("cpu")); the scaler's state
    is saved with the optimizer's and a resumed run takes it back."""
    plan = resolve_plan("cpu", "float16")
    assert plan.dtype == torch.float16 and plan.scaler
    assert isinstance(grad_scaler(plan), torch.amp.GradScaler)
    assert grad_scaler(resolve_plan("cpu", "float32")) is None
    root = tmp_path / "fp16"
    res = quick_fit(tiny_prepared, root, dtype="float16", grad_clip=1.0)
    assert math.isfinite(res.last_valid["valid_nll"])
    saved = torch.load(root / "last" / "optimizer.pt", weights_only=True)
    assert saved["scaler"]["scale"] == 2.0**16  # the initial scale: no overflow in 3 steps
    t = dict(data=str(tiny_prepared), save_root=str(root), epoch=2)
    again = fit(build_config(train=t, resume=True), resume=True)
    assert again.step == 6 and math.isfinite(again.last_valid["valid_nll"])


def test_pinned_memory_forced_on_a_cpu_runs_where_torch_can_pin_else_one_line():
    assert not resolve_plan("cpu", pin_memory="off").pin_memory
    batch = np.arange(6, dtype=np.int64).reshape(2, 3)
    if _can_pin():  # a CUDA build with a GPU
        assert resolve_plan("cpu", pin_memory="on").pin_memory
        assert torch.equal(to_device(batch, "cpu", pin=True), torch.from_numpy(batch))
    else:
        with pytest.raises(UserError) as e:
            resolve_plan("cpu", pin_memory="on")
        assert _one_line(e).startswith("--pin_memory on, but this torch cannot pin memory")
    assert torch.equal(to_device(batch, "cpu"), torch.from_numpy(batch))  # auto: not pinned


def test_nccl_is_refused_on_a_cpu_with_one_line(tiny_prepared, tmp_path, capsys):
    assert resolve_plan("cpu", backend="gloo").backend == "gloo"
    with pytest.raises(UserError) as e:
        resolve_plan("cpu", backend="nccl")
    assert _one_line(e).startswith("--backend nccl needs CUDA GPUs")
    argv = ["train", "--preset", "tiny", "--data", str(tiny_prepared), "--device", "cpu"]
    code = main([*argv, "--save_root", str(tmp_path / "r"), "--backend", "nccl"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--backend nccl needs CUDA GPUs" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_what_cannot_run_on_the_device_is_refused_with_one_line(monkeypatch):
    with pytest.raises(UserError) as e:
        resolve_attention("cpu_kernels", "cuda")
    assert _one_line(e).startswith("--attention cpu_kernels runs on a CPU only")
    # a device for which this torch has no fused AdamW (every device here has one)
    monkeypatch.setattr(plan_module, "_fused_adamw_runs", lambda device: False)
    with pytest.raises(UserError) as e:
        resolve_fused_adamw("on", "cpu")
    assert _one_line(e).startswith("--fused_adamw on, but torch")
    assert not resolve_fused_adamw("auto", "cpu")  # auto falls back to unfused, as before


def test_compile_without_a_cpp_compiler_warns_and_trains_eagerly(monkeypatch, caplog):
    """torch.compile needs a C++ compiler on a CPU; the cpu preset asks for it, so a machine
    without one gets a warning and an eager run, not an error. A GPU does not need one."""
    from torch._inductor import config as inductor

    monkeypatch.setattr(inductor.cpp, "cxx", (None, "no-such-compiler-here"))
    with caplog.at_level("WARNING"):
        assert not resolve_plan("cpu", compile=True).compile
    assert "no C++ compiler" in caplog.text and "--no-compile" in caplog.text
    assert plan_module.resolve_compile(True, "cuda:0")  # the check is a CPU's only
    assert not resolve_plan("cpu", compile=False).compile
    monkeypatch.setattr(inductor.cpp, "cxx", (None, "sh"))  # a program on PATH stands for one
    assert resolve_plan("cpu", compile=True).compile
    # what inductor reads, not $CXX as it is now: torch read that once, when it was imported
    monkeypatch.setenv("CXX", "no-such-compiler-here")
    assert plan_module.cpp_compiler() == shutil.which("sh")


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])  # bf16: the CPU kernels' branch
def test_forced_compile_trains_on_a_cpu(tiny_prepared, tmp_path, dtype):
    """--compile: torch.compile of the model and the loss (about a minute of compiling here),
    with --ema on and dropout switched on after two of the three steps (--dropout_from, which
    compiles the step's graphs once more): the compiled run trains and averages what the eager
    one does."""
    assert resolve_plan("cpu", compile=True).compile
    kw = dict(ema=0.5, dtype=dtype, dropout_from=0.5)
    model = {**MODEL, **DROPOUT}  # the switch moves these weights by 3-4e-3, over fp32's atol
    res = quick_fit(tiny_prepared, tmp_path / "compiled", model, compile=True, **kw)
    assert math.isfinite(res.last_valid["valid_nll"])
    quick_fit(tiny_prepared, tmp_path / "eager", model, **kw)
    tol = {"float32": dict(rtol=1e-3, atol=3e-4), "bfloat16": dict(rtol=0.02, atol=3e-3)}[dtype]
    for kind in ("best", "last"):  # the average, the live weights
        a = load_file(str(tmp_path / "compiled" / kind / "model.safetensors"))
        b = load_file(str(tmp_path / "eager" / kind / "model.safetensors"))
        for k in a:  # fused kernels sum in another order; Adam magnifies that near zero
            torch.testing.assert_close(a[k], b[k], **tol)
