"""The study's loss against PyTorch's own ``CrossEntropyLoss(weight=w, label_smoothing=eps)``
(the criterion the study called), both loss paths, values and gradients."""

import math

import pytest
import torch

from gpt_study.config import EOT_ID, SOT_ID
from gpt_study.model.loss import head_loss, lm_loss_terms, reference_lm_loss


def study_criterion(vocab_size, eps, sp_weight):
    """What the study ran: class weights 1, ``sp_weight`` on <sot> and <eot> (None without it)."""
    if sp_weight == 1.0:
        return torch.nn.CrossEntropyLoss(label_smoothing=eps)
    w = torch.ones(vocab_size)
    w[SOT_ID] = w[EOT_ID] = sp_weight
    return torch.nn.CrossEntropyLoss(weight=w, label_smoothing=eps)


def oracle(logits, targets, eps, sp_weight):
    """The study's loss of (B, T, V) logits, in float64."""
    V = logits.size(-1)
    crit = study_criterion(V, eps, sp_weight).double()
    return crit(logits.double().reshape(-1, V), targets.reshape(-1))


@pytest.fixture
def batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    targets = torch.randint(0, 11, (3, 7))
    targets[0, 0], targets[1, 3], targets[2, 6] = SOT_ID, EOT_ID, EOT_ID
    return logits, targets


CASES = [(eps, w) for eps in (0.0, 0.1) for w in (1.0, 2.0, 0.5)] + [(0.3, 3.0)]


@pytest.mark.parametrize(("eps", "w"), CASES)
def test_lm_loss_is_the_studys_cross_entropy_loss(batch, eps, w):
    logits, targets = batch
    logits = logits.clone().requires_grad_(True)
    got = reference_lm_loss(logits, targets, eps, w)
    want = oracle(logits, targets, eps, w)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    (g,) = torch.autograd.grad(got, logits)
    (gw,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(g, gw, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize(("eps", "w"), CASES)
def test_lm_loss_terms_sum_to_the_studys_mean(batch, eps, w):
    """(numerator, denominator) with denominator sum_n w_(y_n), so that batches add up."""
    logits, targets = batch
    flat, t = logits.reshape(-1, 11), targets.reshape(-1)
    total, weight = lm_loss_terms(flat, t, eps, w)
    wy = torch.tensor([w if int(i) in (SOT_ID, EOT_ID) else 1.0 for i in t])
    assert weight.item() == pytest.approx(wy.sum().item())
    assert (total / weight).item() == pytest.approx(
        oracle(logits, targets, eps, w).item(), rel=1e-5
    )
    # Two halves summed separately give the same mean as the whole.
    t1, w1 = lm_loss_terms(flat[:10], t[:10], eps, w)
    t2, w2 = lm_loss_terms(flat[10:], t[10:], eps, w)
    assert ((t1 + t2) / (w1 + w2)).item() == pytest.approx((total / weight).item(), rel=1e-6)


def test_class_weights_weight_the_smoothing_of_every_position():
    """The study's reading, on the example of the issue: the weight of <sot>/<eot> also scales
    their share of the smoothing mass where the target is another token (the old per-target
    weighting gave a different number)."""
    torch.manual_seed(0)
    z, y = torch.randn(64, 50), torch.randint(3, 50, (64,))  # no special token is a target
    plain = reference_lm_loss(z, y, 0.1, 1.0)
    assert reference_lm_loss(z, y, 0.0, 2.0).item() == pytest.approx(
        reference_lm_loss(z, y, 0.0, 1.0).item()
    )
    assert reference_lm_loss(z, y, 0.1, 2.0).item() != pytest.approx(plain.item(), rel=1e-4)
    assert reference_lm_loss(z, y, 0.1, 2.0).item() == pytest.approx(
        oracle(z[None], y[None], 0.1, 2.0).item()
    )


def make_head(V=97, C=24, bias=True, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(C, V, bias=bias)
    h = torch.randn(3, 11, C, requires_grad=True)
    y = torch.randint(0, V, (3, 11))
    y[0, :4] = SOT_ID
    y[1, :3] = EOT_ID
    return head, h, y


def head_grads(loss, head, h):
    params = [h, head.weight] + ([head.bias] if head.bias is not None else [])
    return torch.autograd.grad(loss, params)


@pytest.mark.parametrize(("eps", "w"), CASES)
@pytest.mark.parametrize("chunk", [None, 5])
@pytest.mark.parametrize("bias", [True, False])
def test_head_loss_is_the_studys_cross_entropy_loss(eps, w, chunk, bias):
    """The chunked output layer + loss and its hand-written backward against autograd through
    ``CrossEntropyLoss(weight, label_smoothing)(head(h))``."""
    head, h, y = make_head(bias=bias)
    got = head_loss(head, h, y, eps, w, chunk_size=chunk)
    want = study_criterion(97, eps, w)(head(h).reshape(-1, 97), y.reshape(-1))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    for g, gw in zip(head_grads(got, head, h), head_grads(want, head, h), strict=True):
        torch.testing.assert_close(g, gw, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("w", [2.0, 0.5])
def test_head_loss_under_bf16_autocast_is_the_studys_loss_to_bf16_precision(w):
    head, h, y = make_head(V=500, C=64)
    with torch.autocast("cpu", torch.bfloat16):
        got = head_loss(head, h, y, 0.1, w, chunk_size=16)
        logits = head(h)  # (B, T, V) in bf16, scored in fp32 as reference_lm_loss does
    want = study_criterion(500, 0.1, w)(logits.float().reshape(-1, 500), y.reshape(-1))
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) < 2e-3
    for g, gw in zip(head_grads(got, head, h), head_grads(want, head, h), strict=True):
        assert g.dtype == torch.float32
        assert (g - gw).abs().max() < 2e-2 * gw.abs().max()


def test_sp_weight_moves_the_loss_toward_the_special_tokens(batch):
    logits, targets = batch
    special = (targets == SOT_ID) | (targets == EOT_ID)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    only_special = -logp[special].mean().item()
    far = reference_lm_loss(logits, targets, 0.0, 1e6).item()
    assert far == pytest.approx(only_special, rel=1e-4)


def test_uniform_logits_give_log_v():
    flat = torch.zeros(2, 5, 11)
    t = torch.randint(0, 11, (2, 5))
    assert reference_lm_loss(flat, t, 0.1, 1.0).item() == pytest.approx(math.log(11), rel=1e-6)
    # With class weights, uniform logits give log V * sum_n sum_c w_c q_nc / sum_n w_(y_n).
    w = torch.ones(11)
    w[SOT_ID] = w[EOT_ID] = 2.0
    wy = w[t.reshape(-1)]
    mass = 0.9 * wy + 0.1 * w.sum() / 11
    want = math.log(11) * (mass.sum() / wy.sum()).item()
    assert reference_lm_loss(flat, t, 0.1, 2.0).item() == pytest.approx(want, rel=1e-6)


def test_bf16_logits_are_scored_in_float32():
    torch.manual_seed(1)
    logits = torch.randn(4, 9, 300)
    t = torch.randint(0, 300, (4, 9))
    a = reference_lm_loss(logits.bfloat16(), t, 0.1, 2.0)
    assert a.dtype == torch.float32
    assert a.item() == pytest.approx(
        reference_lm_loss(logits.bfloat16().float(), t, 0.1, 2.0).item()
    )
