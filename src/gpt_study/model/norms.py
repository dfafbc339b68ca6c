"""RMSNorm with a hand-written backward for CPU training (LayerNorm is PyTorch's own, fused).

PyTorch 2.13 has no fused RMSNorm kernel on a CPU: ``F.rms_norm`` runs as a composite of about eight
operations forward and fifteen backward, each a pass over the activations, slower than LayerNorm's
fused kernel (docs/train.md, "Measurements"). :class:`_RMSNorm` computes the same formula in three
passes forward and six backward. It runs where that is measured to pay: training on a CPU in float32
(the residual stream under bf16 autocast). Everywhere else (no gradient, other dtypes, other
devices) ``F.rms_norm`` runs unchanged. ``tests/test_norms.py`` holds the two to each other, values
and gradients, and checks the backward with ``torch.autograd.gradcheck``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["RMSNorm", "rms_norm"]


class _RMSNorm(torch.autograd.Function):
    """y = x r w with r = 1 / sqrt(mean(x^2) + eps) over the last dimension (Zhang and Sennrich
    2019). With xh = x r and gw = g w (g the gradient of y):
      dx = r (gw - xh mean(gw xh)),   dw = sum over rows of g xh.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        C = x.size(-1)
        # (..., 1): mean of squares from the vector norm, one reduction pass
        r = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(C)
        r = r.add_(eps).rsqrt_()
        xh = x * r  # (..., C)
        ctx.save_for_backward(xh, r, weight)
        return xh * weight

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # noqa: D102
        xh, r, weight = ctx.saved_tensors
        C = xh.size(-1)
        gx = gw = None
        if ctx.needs_input_grad[0]:
            gwt = g * weight  # (..., C)
            mean = torch.linalg.vecdot(gwt, xh, dim=-1).unsqueeze(-1).div_(-C)  # (..., 1)
            gx = torch.addcmul(gwt, xh, mean).mul_(r)  # r (gw - xh mean(gw xh))
        if ctx.needs_input_grad[1]:
            gw = (g * xh).reshape(-1, C).sum(0)  # (C,)
        return gx, gw, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float | None) -> torch.Tensor:
    """``F.rms_norm(x, (C,), weight, eps)``; through :class:`_RMSNorm` when training on a CPU in
    float32 (see the module text)."""
    hand = (
        not torch.compiler.is_compiling()  # compiled, the compiler fuses F.rms_norm itself
        and eps is not None
        and x.device.type == "cpu"
        and x.dtype == weight.dtype == torch.float32
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
    )
    if hand:
        return _RMSNorm.apply(x, weight, eps)
    return F.rms_norm(x, (x.size(-1),), weight, eps)


class RMSNorm(nn.RMSNorm):
    """``nn.RMSNorm`` (same weight, eps, repr and state) that calls :func:`rms_norm`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)
