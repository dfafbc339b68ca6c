"""The study's loss (smoothing, <sot>/<eot> weights) and plain NLL against hand-written oracles."""

import math

import pytest
import torch

from gpt_study.config import EOT_ID, SOT_ID
from gpt_study.loss import lm_loss, nll_sum


def oracle(logits, targets, eps, w_special):
    """Per token: (1 - eps) * -log p(target) + eps * mean over the vocabulary of -log p(v)."""
    logp = torch.log_softmax(logits.double(), dim=-1).reshape(-1, logits.size(-1))
    t = targets.reshape(-1)
    per = (1 - eps) * -logp[torch.arange(len(t)), t] + eps * -logp.mean(dim=-1)
    w = torch.tensor([w_special if int(i) in (SOT_ID, EOT_ID) else 1.0 for i in t], dtype=per.dtype)
    return ((per * w).sum() / w.sum()).item()


@pytest.fixture
def batch():
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11)
    targets = torch.randint(0, 11, (3, 7))
    targets[0, 0], targets[1, 3], targets[2, 6] = SOT_ID, EOT_ID, EOT_ID
    return logits, targets


@pytest.mark.parametrize(("eps", "w"), [(0.0, 1.0), (0.1, 1.0), (0.0, 5.0), (0.1, 3.0)])
def test_lm_loss_matches_oracle(batch, eps, w):
    logits, targets = batch
    assert lm_loss(logits, targets, eps, w).item() == pytest.approx(
        oracle(logits, targets, eps, w), rel=1e-5
    )


def test_sp_weight_moves_the_loss_toward_the_special_tokens(batch):
    logits, targets = batch
    special = (targets == SOT_ID) | (targets == EOT_ID)
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    only_special = -logp[special].mean().item()
    far = lm_loss(logits, targets, 0.0, 1e6).item()
    assert far == pytest.approx(only_special, rel=1e-4)


def test_nll_sum_is_plain_and_uniform_logits_give_log_v(batch):
    logits, targets = batch
    logp = torch.log_softmax(logits, -1).gather(-1, targets[..., None])
    assert nll_sum(logits, targets).item() == pytest.approx(-logp.sum().item(), rel=1e-5)
    flat = torch.zeros(2, 5, 11)
    t = torch.randint(0, 11, (2, 5))
    assert nll_sum(flat, t).item() == pytest.approx(10 * math.log(11), rel=1e-6)
    assert lm_loss(flat, t, 0.1, 2.0).item() == pytest.approx(math.log(11), rel=1e-6)


def test_bf16_logits_are_scored_in_float32():
    torch.manual_seed(1)
    logits = torch.randn(4, 9, 300)
    t = torch.randint(0, 300, (4, 9))
    a = lm_loss(logits.bfloat16(), t, 0.1, 2.0)
    assert a.dtype == torch.float32
    assert a.item() == pytest.approx(lm_loss(logits.bfloat16().float(), t, 0.1, 2.0).item())
