"""The hand-written RMSNorm (model/norms.py) against PyTorch's F.rms_norm: values and gradients
on every path the model takes, and its backward against finite differences."""

import pytest
import torch
import torch.nn.functional as F

from gpt_study.model import norms
from gpt_study.model.gpt import GPT, GPTConfig


def test_backward_matches_finite_differences_in_float64():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    w = (1 + 0.1 * torch.randn(8, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: norms._RMSNorm.apply(a, b, 1e-5), (x, w))


@pytest.mark.parametrize("shape", [(64, 32), (2, 4, 16, 8)])  # the residual stream, q/k heads
@pytest.mark.parametrize("needs", ["both", "x", "weight"])
@pytest.mark.parametrize("autocast", [False, True])  # True: the cpu preset's fp32 stream in bf16
def test_training_path_equals_f_rms_norm(shape, needs, autocast):
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=needs != "weight")
    w = (1 + 0.1 * torch.randn(shape[-1])).requires_grad_(needs != "x")
    g = torch.randn(*shape)
    wants = [t for t in (x, w) if t.requires_grad]
    with torch.autocast("cpu", torch.bfloat16, enabled=autocast):
        got = norms.rms_norm(x, w, 1e-5)
        want = F.rms_norm(x, (shape[-1],), w, 1e-5)
    assert got.dtype == want.dtype == torch.float32
    assert got.grad_fn is not None and "RMSNorm" in type(got.grad_fn).__name__  # the hand path
    torch.testing.assert_close(got, want)
    pairs = zip(
        torch.autograd.grad(got, wants, g), torch.autograd.grad(want, wants, g), strict=True
    )
    for a, b in pairs:
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_other_paths_run_pytorchs_rms_norm():
    """No gradient, bf16 (the q/k norms under autocast) or float64: F.rms_norm, bit for bit."""
    torch.manual_seed(0)
    w = torch.ones(16, requires_grad=True)
    x = torch.randn(4, 16)
    with torch.no_grad():
        assert torch.equal(norms.rms_norm(x, w, 1e-5), F.rms_norm(x, (16,), w, 1e-5))
    xb = x.bfloat16().requires_grad_()
    assert torch.equal(norms.rms_norm(xb, w, 1e-5), F.rms_norm(xb, (16,), w, 1e-5))
    assert "RMSNorm" not in type(norms.rms_norm(xb, w, 1e-5).grad_fn).__name__


def test_an_rmsnorm_model_trains_as_with_pytorchs_norm(monkeypatch):
    """A whole rmsnorm + qk-norm model's loss and every gradient, hand-written norm or not."""
    cfg = GPTConfig(vocab_size=50, max_len=16, d_model=32, d_ff=64, n_layers=2, n_heads=4)
    cfg = GPTConfig(**{**cfg.__dict__, "norm": "rmsnorm", "qk_norm": True, "positions": "rope"})
    torch.manual_seed(0)
    model = GPT(cfg).eval()  # no dropout: the two runs see the same computation
    x = torch.randint(0, 50, (2, 16))

    def grads():
        model.zero_grad()
        model(x).float().square().mean().backward()
        return [p.grad.clone() for p in model.parameters()]

    hand = grads()
    monkeypatch.setattr(norms, "_RMSNorm", None)  # any use of the hand path now fails
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # PyTorch's path
    for a, b in zip(hand, grads(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
