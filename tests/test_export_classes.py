"""Our two transformers classes against our model, over every combination of what they add.

``modeling_gpt_study.py`` swaps parts into the stock GPT-2 and Llama classes (the other norm, a
gated or plain feed-forward, a head bias, qk-norm, value embeddings, capped logits, residual
scalars); parts can meet (a qk-norm's own norms beside a swapped norm, value rows beside a
qk-norm hook), so each combination is held to our forward pass, not each part alone.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from gpt_study.config import GPTConfig
from gpt_study.export.hf import choose_layout, needs_remote_code
from gpt_study.model.gpt import GPT
from hf_helpers import hf_model_of

pytest.importorskip("transformers", reason="the export extra")

SIZES = dict(vocab_size=40, max_len=16, d_model=16, d_ff=24, n_layers=2, n_heads=2)
DROPOUTS = dict(attention_drop=0.0, residual_drop=0.0, embedding_drop=0.0)
AXES = {
    "norm": ("layernorm", "rmsnorm"),
    "mlp": ("gelu", "swiglu"),
    "qk_norm": (False, True),
    "head_bias": (False, True),
    "value_embeds": (False, True),
    "logit_softcap": (0.0, 3.0),
    "residual_scalars": (False, True),
}


def _model(cfg: GPTConfig) -> GPT:
    """Random weights with every gain, bias and scalar off its initial value, so that a part
    computed the stock way (or not at all) changes the logits."""
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() <= 1:
                p.add_(0.3 * torch.randn_like(p))
        for name, p in model.named_parameters():
            if name.startswith("value_embeds."):
                p.mul_(10)
    return model


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_every_combination_our_classes_compute_is_our_forward_pass(positions):
    ids = torch.randint(0, SIZES["vocab_size"], (2, SIZES["max_len"]), generator=torch.Generator())
    ours = 0
    for combo in itertools.product(*AXES.values()):
        options = dict(zip(AXES, combo, strict=True), positions=positions)
        cfg = GPTConfig(**SIZES, **DROPOUTS, **options)
        model = _model(cfg)
        ours += needs_remote_code(model, choose_layout(cfg))
        with torch.inference_mode():
            diff = (hf_model_of(model)(ids).logits - model(ids)).abs().max().item()
        assert diff < 1e-4, options
    assert ours >= 2 ** len(AXES) - 2  # all but the stock classes' own (GPT-NeoX, Llama)
