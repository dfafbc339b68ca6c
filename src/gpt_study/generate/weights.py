"""Weights in fewer bytes for decoding: int8 weight-only linear layers, and the bytes a token reads.

At batch 1 each new token reads every weight matrix once (the embeddings only one row each), so
decoding speed is bound by memory, not arithmetic: 48 MB per token in fp32 for the ``seed``
model, of which the 30,000 x 256 output layer is 31 MB. :func:`quantize_int8` replaces every
``nn.Linear`` by an :class:`Int8Linear` that keeps its weight as int8 with one scale per output
row (symmetric, round to nearest: the usual "weight-only int8" of torchao and gpt-fast), a
quarter of the bytes; activations, LayerNorms, attention and the residual stream stay as they
were (each such layer multiplies its input in bf16, whatever the number of rows). Applied from
outside the model (a module swap), like every other precision decision: ``model/gpt.py`` knows
nothing of it.

The cost is accuracy, measured rather than assumed: ``tests/test_generate_fast.py`` holds the
held-out NLL of an int8 model within 0.5% of fp32, and ``benchmarks/bench_generate.py
--checkpoint`` measures it on a trained model.
"""

from __future__ import annotations

import torch
from torch import nn

from gpt_study.runtime.errors import UserError

__all__ = ["QUANTIZE", "Int8Linear", "quantize", "quantize_int8", "weight_bytes_per_token"]

QUANTIZE = ("none", "int8")  # --quantize: what a reading command may do to a model's weights


class Int8Linear(nn.Module):
    """``nn.Linear`` with an int8 weight and one scale per output row.

    ``y = (x @ (q * s).T) + b`` for ``q = round(W / s)``, ``s = max|W_row| / 127``, with ``x`` in
    bf16; the output has the input's dtype, the bias stays fp32. One computation on every path
    (a decoding step, a prompt, the window re-encoded at a slide, evaluation), so a row's numbers
    do not depend on how many rows go with it; only the kernel follows the block's size. A few
    rows (a decoding step) are memory-bound: ``torch._weight_int8pack_mm`` multiplies them by the
    int8 weight directly. From :attr:`rows_for_dequantized` rows on, the weight is dequantized to
    bf16 for one ordinary matmul, which the CPU's bf16 units run faster there (docs/export.md).
    The two kernels differ only in the rounding of their bf16 products (tested).
    """

    rows_for_dequantized = 32

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        w = linear.weight.detach().float()  # (out, in)
        scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0  # (out,)
        q = torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8)  # (out, in)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight", q)
        self.register_buffer("scale", scale.to(torch.bfloat16))
        bias = None if linear.bias is None else linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        self._packed_mm = q.device.type == "cpu" and hasattr(torch, "_weight_int8pack_mm")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x if x.dim() == 2 else x.reshape(-1, self.in_features)  # (..., in) -> (M, in)
        xb = x2.to(torch.bfloat16)
        if self._packed_mm and x2.size(0) < self.rows_for_dequantized:
            y = torch._weight_int8pack_mm(xb, self.weight, self.scale)  # (M, out), bf16
        else:  # many rows, or another device: the weight dequantized to bf16, one matmul
            y = xb @ (self.weight.to(xb.dtype) * self.scale[:, None]).t()  # (M, out), bf16
        # fp32 bias + bf16 product: one operation that also returns fp32 (type promotion)
        y = y.to(x.dtype) if self.bias is None else torch.add(self.bias.to(x.dtype), y)
        return y if x.dim() == 2 else y.view(*shape[:-1], self.out_features)  # (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


def quantize_int8(model: nn.Module) -> nn.Module:
    """Replace every ``nn.Linear`` of ``model`` by an :class:`Int8Linear`, in place; returns it."""
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Linear):
            setattr(model, name, Int8Linear(child))
        else:
            quantize_int8(child)
    return model


def quantize(model: nn.Module, how: str) -> nn.Module:
    """``--quantize``'s one meaning for every command that reads a model (generate, evaluate,
    compare's stories, serve): ``none``, or ``int8`` (:func:`quantize_int8`); in place."""
    if how not in QUANTIZE:
        raise UserError(f"unknown --quantize {how!r}: use {', '.join(QUANTIZE)}")
    return quantize_int8(model) if how == "int8" else model


def weight_bytes_per_token(model: nn.Module) -> int:
    """Bytes of weights one new token reads at batch 1: every parameter and buffer once, except
    the embedding tables, of which it reads one row each."""
    total = 0
    for module in model.modules():
        tensors = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if isinstance(module, nn.Embedding):
            total += module.weight[0].numel() * module.weight.element_size()
            continue
        total += sum(t.numel() * t.element_size() for t in tensors)
    return total
