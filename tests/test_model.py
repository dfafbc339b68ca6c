"""The GPT: the study's parameter count, fused attention against a plain oracle, the KV cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from gpt_study.model.cache import KVCache
from gpt_study.model.gpt import GPT, GPTConfig


def tiny_config(**kw):
    base = dict(vocab_size=50, max_len=32, d_model=32, d_ff=64, n_layers=2, n_heads=4)
    base.update(kw)
    return GPTConfig(**base)


def reference_attention(q, k, v):
    """Oracle: softmax(q k^T / sqrt(d)) with a causal mask, written out by hand."""
    T, S = q.size(-2), k.size(-2)
    att = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, nh, T, S)
    mask = torch.ones(T, S, dtype=torch.bool).tril(diagonal=S - T)
    att = att.masked_fill(~mask, float("-inf"))
    return F.softmax(att, dim=-1) @ v


def test_study_parameter_count():
    assert GPT(GPTConfig(vocab_size=30000)).num_params() == 19_672_880


def test_init_std():
    m = GPT(tiny_config(vocab_size=5000, d_model=64))
    assert abs(m.tok_emb.weight.std().item() - 0.02) < 0.002
    assert m.head.bias.abs().max().item() == 0


def test_sdpa_matches_reference_attention():
    torch.manual_seed(0)
    m = GPT(tiny_config()).eval()
    x = torch.randint(0, 50, (2, 10))
    attn = m.blocks[0].attn
    h = m.blocks[0].ln1(m.tok_emb(x) + m.pos_emb(torch.arange(10)))
    q, k, v = attn.qkv(h).split(32, dim=2)
    q, k, v = (t.view(2, 10, 4, 8).transpose(1, 2) for t in (q, k, v))
    want = attn.proj(reference_attention(q, k, v).transpose(1, 2).reshape(2, 10, 32))
    got = attn(h.view(20, 32), 2).view(2, 10, 32)  # the residual stream as B*T rows
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_kv_cache_matches_full_forward():
    torch.manual_seed(0)
    m = GPT(tiny_config()).eval()
    x = torch.randint(0, 50, (3, 20))
    full = m(x)
    cache = KVCache(m, batch_size=3)
    parts = [m(x[:, :7], cache), m(x[:, 7:12], cache)] + [
        m(x[:, i : i + 1], cache) for i in range(12, 20)
    ]
    assert cache.length == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_causality():
    torch.manual_seed(0)
    m = GPT(tiny_config()).eval()
    x = torch.randint(0, 50, (1, 12))
    y = x.clone()
    y[0, 8] = (y[0, 8] + 1) % 50
    torch.testing.assert_close(m(x)[:, :8], m(y)[:, :8])
    assert not torch.allclose(m(x)[:, 8:], m(y)[:, 8:])


@pytest.mark.parametrize("inner_drop", [None, 0.4, 0.0])  # the study's, another rate, none
def test_mlp_training_forward_has_the_studys_two_dropouts(inner_drop):
    """The study's ff, w2(dropout(gelu(w1(x)))), then the residual dropout on its output: the
    training forward against a hand computation with the same masks, drawn again in the same
    order from the same seed through gpt_study.model.masks (the CPU path the model takes).
    ``inner_drop`` sets the first one's rate (unset: ``residual_drop``, as the study)."""
    from gpt_study.model import masks

    torch.manual_seed(0)
    p = 0.25
    q = p if inner_drop is None else inner_drop
    mlp = GPT(tiny_config(residual_drop=p, inner_drop=inner_drop)).blocks[0].mlp.train()
    x = torch.randn(2, 5, 32)
    torch.manual_seed(7)
    got = mlp(x)
    torch.manual_seed(7)
    inner = torch.ones(2, 5, 64, dtype=torch.bool)
    if q:
        inner = masks.keep_mask((2, 5, 64), q, torch.float32) != 0  # on the d_ff activations
    outer = masks.keep_mask((2, 5, 32), p, torch.float32) != 0  # on the branch's output
    h = F.gelu(x @ mlp.fc.weight.T + mlp.fc.bias) * inner / (1 - q)  # (B, T, d_ff)
    want = (h @ mlp.proj.weight.T + mlp.proj.bias) * outer / (1 - p)  # (B, T, C)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert inner.all() == (q == 0) and not outer.all()  # each dropout drops where it is on
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp.proj(F.gelu(mlp.fc(x))))  # none at evaluation


ACTIVATIONS = {  # each --mlp written out: fc's output (B, T, width) -> (B, T, d_ff)
    "swiglu": lambda h: F.silu(h[..., :64]) * h[..., 64:],  # gate, then value
    "relu2": lambda h: torch.relu(h) ** 2,
    "gelu_tanh": lambda h: F.gelu(h, approximate="tanh"),
}


@pytest.mark.parametrize("inner_drop", [None, 0.0])
@pytest.mark.parametrize("kind", list(ACTIVATIONS))
def test_every_mlp_kind_drops_inside_as_inner_drop_says(kind, inner_drop):
    """The inner dropout is one rule for every --mlp: on the d_ff activations after the
    nonlinearity, at ``inner_drop`` (unset: ``residual_drop``)."""
    from gpt_study.model import masks

    torch.manual_seed(0)
    p = 0.25
    q = p if inner_drop is None else inner_drop
    cfg = tiny_config(residual_drop=p, inner_drop=inner_drop, mlp=kind, bias=False)
    mlp = GPT(cfg).blocks[0].mlp.train()
    x = torch.randn(2, 5, 32)
    torch.manual_seed(3)
    got = mlp(x)
    torch.manual_seed(3)
    inner = masks.keep_mask((2, 5, 64), q, torch.float32) != 0 if q else 1.0
    outer = masks.keep_mask((2, 5, 32), p, torch.float32) != 0
    h = ACTIVATIONS[kind](x @ mlp.fc.weight.T) * inner / (1 - q)  # (B, T, d_ff)
    torch.testing.assert_close(got, (h @ mlp.proj.weight.T) * outer / (1 - p))
