"""head_loss, the chunked output layer + loss, against the plain oracle: head(hidden), then
reference_lm_loss (torch's own F.cross_entropy on the whole logits)."""

import pytest
import torch

from gpt_study.model.loss import head_loss, reference_lm_loss
from test_model_options import OPTIONS, cfg_of


def make(bias=True, V=97, C=24, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(C, V, bias=bias)
    h = torch.randn(3, 11, C, requires_grad=True)
    y = torch.randint(0, V, (3, 11))
    y[0, :4] = 1  # some <sot>
    y[1, :3] = 2  # and <eot> targets, for sp_weight
    return head, h, y


def grads(loss, head, h):
    params = [h, head.weight] + ([head.bias] if head.bias is not None else [])
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize("eps,sp_weight", [(0.0, 1.0), (0.1, 1.0), (0.1, 3.0), (0.3, 0.5)])
@pytest.mark.parametrize("chunk", [None, 1, 8, 33])
@pytest.mark.parametrize("bias", [True, False])
def test_head_loss_equals_lm_loss_in_fp32(eps, sp_weight, chunk, bias):
    head, h, y = make(bias)
    want = reference_lm_loss(head(h), y, eps, sp_weight)
    got = head_loss(head, h, y, eps, sp_weight, chunk_size=chunk)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(grads(got, head, h), grads(want, head, h), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)


def test_head_loss_under_bf16_autocast_is_as_close_as_bf16_allows():
    head, h, y = make(V=500, C=64)
    with torch.autocast("cpu", torch.bfloat16):
        want = reference_lm_loss(head(h), y, 0.1, 2.0)
        got = head_loss(head, h, y, 0.1, 2.0, chunk_size=16)
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 2e-3
    for g, w in zip(grads(got, head, h), grads(want, head, h), strict=True):
        assert g.dtype == torch.float32
        assert (g - w).abs().max() < 2e-2 * w.abs().max()


@pytest.mark.parametrize("multiple", [1, 2, 32])
def test_head_loss_is_the_same_whatever_the_bias_column_is_padded_to(monkeypatch, multiple):
    """Each CPU pads [h, 1] to its own multiple (column_multiple): every width gives the
    oracle's loss and gradients, in fp32 exactly and under bf16 autocast as closely as bf16
    allows; and the padding asked for is the padding made."""
    from gpt_study.model import loss as L

    monkeypatch.setattr(L, "column_multiple", lambda device_type: multiple)
    head, h, y = make(V=300, C=40)
    hx, wx = L._bias_as_column(h.reshape(-1, 40), head.weight, head.bias, torch.float32)
    assert hx.size(1) == wx.size(1) == -(-41 // multiple) * multiple
    want = reference_lm_loss(head(h), y, 0.1, 2.0)
    got = head_loss(head, h, y, 0.1, 2.0, chunk_size=8)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, w in zip(grads(got, head, h), grads(want, head, h), strict=True):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-7)
    with torch.autocast("cpu", torch.bfloat16):
        want = reference_lm_loss(head(h), y, 0.1, 2.0)
        got = head_loss(head, h, y, 0.1, 2.0, chunk_size=8)
    assert abs(got.item() - want.item()) < 2e-3
    for g, w in zip(grads(got, head, h), grads(want, head, h), strict=True):
        assert (g - w).abs().max() < 2e-2 * w.abs().max()


@pytest.mark.parametrize("amx, want", [(True, 32), (False, 2), (None, 2)])
def test_the_bias_column_pads_to_the_matmul_units_step(monkeypatch, amx, want):
    from gpt_study.model import loss as L

    if amx is None:  # a torch without the query: no AMX assumed
        monkeypatch.delattr(torch.cpu, "_is_amx_tile_supported", raising=False)
    else:
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    L.column_multiple.cache_clear()
    try:
        assert L.column_multiple("cpu") == want
        assert L.column_multiple("cuda") == 32
    finally:
        L.column_multiple.cache_clear()


def test_bf16_weight_gradient_over_many_chunks_is_as_close_as_one_matmul_over_all_rows():
    """The chunks' weight-gradient parts are summed by the matmul in bf16 only within a group of
    chunks, the groups in fp32: 256 chunks stay as close to the fp64 gradient as one chunk (one
    bf16 matmul over all rows). Summed in bf16 throughout, the error is over twice as large."""
    torch.manual_seed(0)
    N, V, C = 4096, 500, 64
    head, h = torch.nn.Linear(C, V), torch.randn(N, C)
    y = torch.randint(0, V, (N,))
    head64 = torch.nn.Linear(C, V).double()
    head64.load_state_dict(head.state_dict())
    (exact,) = torch.autograd.grad(
        reference_lm_loss(head64(h.double()), y, 0.1, 2.0), head64.weight
    )

    def error(chunk):
        with torch.autocast("cpu", torch.bfloat16):
            loss = head_loss(head, h, y, 0.1, 2.0, chunk_size=chunk)
        (g,) = torch.autograd.grad(loss, head.weight)
        return ((g.double() - exact).norm() / exact.norm()).item()

    assert error(16) < 1.1 * error(N)


def test_head_loss_scales_with_the_upstream_gradient_and_skips_grads_when_not_needed():
    head, h, y = make()
    g1 = grads(head_loss(head, h, y, 0.1), head, h)
    g3 = grads(3.0 * head_loss(head, h, y, 0.1), head, h)
    for a, b in zip(g1, g3, strict=True):
        torch.testing.assert_close(3.0 * a, b)
    with torch.no_grad():
        torch.testing.assert_close(head_loss(head, h, y, 0.1), reference_lm_loss(head(h), y, 0.1))


def test_head_loss_survives_a_target_probability_that_underflows():
    head, h, y = make(V=10, C=4)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[0] = 200.0  # every other token has probability exp(-200): 0 in fp32
    y[:] = 5
    want = reference_lm_loss(head(h), y, 0.1)
    got = head_loss(head, h, y, 0.1)
    assert torch.isfinite(got)
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("option", list(OPTIONS))
def test_lm_loss_module_equals_model_then_lm_loss(option):
    """Training's loss (hidden states, then the chunked head and loss, or the logits where they
    are more than the head) is the criterion on the model's own logits, for every model option."""
    from gpt_study.model.gpt import GPT
    from gpt_study.model.loss import LMLoss

    torch.manual_seed(0)
    model = GPT(cfg_of(option, embedding_drop=0.0))
    model.eval()
    with torch.no_grad():
        model.head.weight.mul_(100)  # logits of tens: a softcap of 3 bites
    x, y = torch.randint(0, model.config.vocab_size, (2, 2, 16))
    want = reference_lm_loss(model(x), y, 0.1, 2.0)
    want.backward()
    want_g = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    got = LMLoss(model, 0.1, 2.0)(x, y)
    got.backward()
    torch.testing.assert_close(got, want)
    for p, g in zip(model.parameters(), want_g, strict=True):
        # the chunked pass sums in another order; gradients here are up to about 1
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=2e-5)


def test_bench_train_runs_and_reports_both_steps():
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    tiny = "--vocab_size 300 --batch_size 2 --context_size 16 --steps 1 --warmup 0 --peak_size 64"
    out = subprocess.run(
        [sys.executable, str(script), *tiny.split(), "--threads", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "| reference (fp32, study) |" in out.stdout
    assert "| gpt-study fast step |" in out.stdout
    assert "same loss at the same weights" in out.stdout


@pytest.mark.parametrize(
    "preset, flags",
    [
        ("cpu", "--vocab_size 4096"),
        ("cpu", "--ablation"),
        ("peer", "--no_dropout"),
        ("peer", "--context_size 64"),
        ("peer", "--context_size 64 --vocab_size 8192"),
    ],
)
def test_bench_train_refuses_flags_its_preset_would_ignore(preset, flags):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    cmd = [sys.executable, str(script), "--preset", preset, *flags.split()]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"not read by --preset {preset}" in lines[0]
    assert all(f in lines[0] for f in flags.split() if f.startswith("--"))


@pytest.mark.parametrize(
    "preset, rows",
    [
        ("peer", ["| nanoGPT-style reference (fp32) |", "| gpt-study, peer shape |"]),
        ("cpu", ["| gpt-study, cpu preset |"]),
    ],
)
def test_bench_train_presets_run_and_report(preset, rows):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_train.py"
    tiny = f"--preset {preset} --batch_size 2 --steps 1 --warmup 0 --peak_size 64 --threads 1"
    tiny += " --context_size 32" if preset == "cpu" else ""  # the peer keeps its own 128
    out = subprocess.run(
        [sys.executable, str(script), *tiny.split()], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    for row in rows:
        assert row in out.stdout
    if preset == "peer":
        assert "1,328,256 parameters" in out.stdout
        assert "vs nanoGPT-style step: median" in out.stdout
        assert "batch 2 x context 128" in out.stdout
    else:  # the preset's step on the vocabulary it is prepared with, whatever that becomes
        from gpt_study.config.presets import PREPARED_WITH, preset_config
        from gpt_study.model.gpt import GPT

        vocab = PREPARED_WITH["cpu"]["vocab_size"]
        params = GPT(preset_config("cpu", model={"vocab_size": vocab}).model).num_params()
        assert f"{params:,} parameters" in out.stdout and f"vocab {vocab}" in out.stdout
        assert "batch 2 x context 32" in out.stdout


@pytest.mark.parametrize("flags", [[], ["--sp_weight", "1", "--smoothing", "0.1"]])
def test_bench_scoring_checks_the_sums_and_reports(flags):
    """benchmarks/bench_scoring.py: held-out scoring against the plain way, same sums."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_scoring.py"
    tiny = ["--batch", "2", "--context", "8", "--vocab", "50", "--repeats", "1", *flags]
    out = subprocess.run(
        [sys.executable, str(script), *tiny], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    import re

    assert re.search(r"reference [\d.]+ ms, _add [\d.]+ ms, [\d.]+x$", out.stdout.strip())


@pytest.mark.parametrize("preset, shape", [("tiny", "batch 16 x 128"), ("peer", "batch 32 x 128")])
def test_profile_train_splits_the_step_of_each_shape(preset, shape):
    """profile_train's peer is bench_train's: one definition of the peer's shape for both."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_train.py"
    cmd = [sys.executable, str(script), "--preset", preset, "--steps", "1", "--warmup", "0"]
    out = subprocess.run([*cmd, "--threads", "1"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"preset {preset}: {shape}" in out.stdout
    if preset == "peer":
        assert "1,328,256 parameters" in out.stdout  # bench_train's peer, to the parameter
    for phase in ("forward", "backward", "optimizer"):
        assert phase in out.stdout
    assert "`aten::mm`" in out.stdout or "aten::mm" in out.stdout
