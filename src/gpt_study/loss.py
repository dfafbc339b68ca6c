"""The study's training loss and the honest metric beside it.

``lm_loss`` is what the study optimised: cross-entropy with label smoothing, with an extra weight
``sp_weight`` on targets that are ``<sot>``/``<eot>`` (it taught the model to end stories).
``nll_sum`` is plain negative log-likelihood: no smoothing, no weights. Only the latter gives
perplexity and bits per byte; the study reported the former as "valid loss".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gpt_study.config import EOT_ID, SOT_ID


def special_weights(
    targets: torch.Tensor, sp_weight: float, special_ids: tuple[int, ...] = (SOT_ID, EOT_ID)
) -> torch.Tensor:
    """Per-target weights: ``sp_weight`` where the target is ``<sot>``/``<eot>``, else 1."""
    special = torch.zeros_like(targets, dtype=torch.bool)
    for i in special_ids:
        special |= targets == i
    return torch.where(special, sp_weight, 1.0)


def lm_loss_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    sp_weight: float = 1.0,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of weighted smoothed cross-entropy, sum of weights) over ``logits`` (N, V) and
    ``targets`` (N,): the two sums whose ratio is :func:`lm_loss`, so that held-out scoring can
    add them up over batches and ranks."""
    per_token = F.cross_entropy(
        logits.float(), targets, label_smoothing=label_smoothing, reduction="none"
    )  # (N,)
    if sp_weight == 1.0:
        return per_token.sum(), torch.tensor(float(targets.numel()))
    w = special_weights(targets, sp_weight, special_ids).to(per_token.dtype)
    return (per_token * w).sum(), w.sum()


def lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    sp_weight: float = 1.0,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
) -> torch.Tensor:
    """Mean (weighted) smoothed cross-entropy of ``logits`` (B, T, V) against ``targets`` (B, T).

    With weights, the mean is over the weights (sum(w * loss) / sum(w)), so sp_weight changes the
    balance between tokens, not the scale of the loss.
    """
    V = logits.size(-1)
    flat_logits = logits.reshape(-1, V).float()  # (B*T, V)
    flat_targets = targets.reshape(-1)  # (B*T,)
    if sp_weight == 1.0:
        return F.cross_entropy(flat_logits, flat_targets, label_smoothing=label_smoothing)
    total, weight = lm_loss_terms(
        flat_logits, flat_targets, label_smoothing, sp_weight, special_ids
    )
    return total / weight


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood in nats (no smoothing, no weights) over all targets."""
    V = logits.size(-1)
    return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction="sum")


@torch.compiler.disable  # a Python loop over chunks; it runs eagerly inside compiled code
def head_loss(
    head: torch.nn.Linear,
    hidden: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    sp_weight: float = 1.0,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
    chunk_size: int | None = None,
) -> torch.Tensor:
    """``lm_loss(head(hidden), targets, ...)`` without ever holding the (B*T, V) logits.

    The output layer over a 30,000-word vocabulary is most of a training step, and most of that
    is memory traffic: the study's loss writes the (8192, 30000) logits, an fp32 copy, the log
    softmax, the gradient and its casts (about 1 GB each). Here the logits are made ``chunk_size``
    rows at a time, turned into softmax probabilities in place of the logits, and the gradients
    of ``hidden``, ``head.weight`` and ``head.bias`` are computed right away from that chunk;
    backward only scales them. Same maths as :func:`lm_loss` (the smoothing and ``sp_weight``
    terms are added exactly, on small matrices), one pass over each chunk instead of about ten.

    Under ``torch.autocast`` the matmuls run in the autocast dtype, like ``head(hidden)`` would;
    the weight gradient is summed in fp32. With bf16 the per-token loss is exact to about 0.002
    nats (the log of a bf16 probability); the mean over a batch to about 1e-5. In fp32 it is
    exact. ``hidden`` is (B, T, C) or (N, C), ``targets`` (B, T) or (N,).
    """
    C = hidden.size(-1)
    h = hidden.reshape(-1, C)  # (N, C)
    y = targets.reshape(-1)  # (N,)
    if sp_weight == 1.0:
        w = torch.full(y.shape, 1.0 / y.numel(), device=y.device)  # (N,)
    else:
        w = special_weights(y, sp_weight, special_ids)
        w = w / w.sum()  # (N,) sums to 1: a weighted mean, as lm_loss
    dev = hidden.device.type
    cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    N = y.numel()
    if chunk_size is None:  # logits of at most ~64M elements at a time, in equal chunks
        n_chunks = -(-N * head.out_features // (1 << 26))
        chunk_size = -(-N // max(1, n_chunks))
    chunk = max(1, chunk_size)
    return _ChunkedHeadLoss.apply(h, head.weight, head.bias, y, w, label_smoothing, cdt, chunk)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss and all three gradients in one chunked pass (see :func:`head_loss`).

    With z = h W^T + b, p = softmax(z), s_i the token weights (summing to 1) and e the smoothing:
      loss = sum_i s_i * (-log p_iy + e * (z_iy - mean_j z_ij))
      dz_i = s_i * (p_i - e / V - (1 - e) * onehot(y_i))
    The constant and one-hot parts of dz are applied to the small products (dh = dz W is
    s * (p W - e * mean(W) - (1 - e) W_y), and likewise for dW and db), so each chunk needs only
    its softmax. mean_j z_ij = h_i . mean(W) + mean(b) is exact and needs no pass over z.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, y, w, eps, cdt, chunk):  # noqa: D102
        N, C = h.shape
        V = weight.size(0)
        dev = h.device
        need_h, need_w = ctx.needs_input_grad[:2]
        need_b = bias is not None and ctx.needs_input_grad[2]
        with torch.autocast(dev.type, enabled=False):
            # The bias is one more weight column on a constant-1 input feature: [h, 1] [W, b]^T.
            # Padding that to 16 extra columns keeps the matmul kernels on their fast path.
            hc, wc = h.to(cdt), weight.to(cdt)  # (N, C), (V, C)
            if bias is not None:
                hx = torch.zeros(N, C + 16, dtype=cdt, device=dev)  # (N, C+16) [h, 1, 0...]
                hx[:, :C], hx[:, C] = hc, 1
                wx = torch.zeros(V, C + 16, dtype=cdt, device=dev)  # (V, C+16) [W, b, 0...]
                wx[:, :C], wx[:, C] = wc, bias.to(cdt)
            else:
                hx, wx = hc, wc
            # The kernels want both operands row-major: transposed views cost a copy per call.
            wxt = wx.t().contiguous()  # (C', V)
            w_mean = wc.mean(0, dtype=torch.float32)  # (C,)
            z_mean = hx.float() @ wx.mean(0, dtype=torch.float32)  # (N,) row means of the logits
            zy = torch.empty(N, device=dev)  # (N,) logit of the target
            py = torch.empty(N, device=dev)  # (N,) its probability
            gh = torch.empty(N, C, dtype=cdt, device=dev) if need_h else None  # (N, C) p W
            # [s*h, s] (s: the token weights), so that [s*h, s]^T p gives the dW and db parts.
            sh = (hx.float() * w[:, None]).to(cdt) if need_w or need_b else None  # (N, C')
            acc = None  # (C', V) fp32: [s*h, s]^T p summed over chunks
            # The softmax overwrites the logits in place on CPU (it works row by row); elsewhere
            # it goes to a second buffer.
            zbuf = torch.empty(min(chunk, N), V, dtype=cdt, device=dev)  # (n, V)
            pbuf = zbuf if dev.type == "cpu" else torch.empty_like(zbuf)
            for s in range(0, N, chunk):
                e = min(N, s + chunk)
                ys = y[s:e, None]  # (n, 1)
                z = torch.mm(hx[s:e], wxt, out=zbuf[: e - s])  # (n, V) logits
                zy[s:e] = z.gather(1, ys).squeeze(1)
                p = torch._softmax(z, -1, False, out=pbuf[: e - s])  # (n, V)
                py[s:e] = p.gather(1, ys).squeeze(1)
                if sh is not None:
                    part = sh[s:e].t().contiguous() @ p  # (C', n) @ (n, V) -> (C', V)
                    acc = part.float() if acc is None else acc.add_(part)
                if need_h:
                    torch.mm(p, wc, out=gh[s:e])  # (n, V) @ (V, C) -> (n, C)
            nll = -py.log()  # (N,)
            bad = py == 0  # underflow in the probability: take those rows the long way
            if bool(bad.any()):
                nll[bad] = torch.logsumexp((hx[bad] @ wxt).float(), dim=-1) - zy[bad]
            loss = ((nll + eps * (zy - z_mean)) * w).sum()
            gw = gb = None
            if need_h:
                # dh = s * (p W - e * mean(W) - (1 - e) * W_y)
                gh = gh.float().sub_(wc[y].float(), alpha=1.0 - eps).sub_(eps * w_mean)
                gh = gh.mul_(w[:, None]).to(h.dtype)
            if need_w:
                # dW = p^T (s h) - (e / V) * sum_i s_i h_i on every row - (1 - e) * s_i h_i on row y_i
                shf = sh[:, :C].float()  # (N, C)
                gw = acc[:C].t().contiguous()  # (V, C)
                gw.sub_(eps / V * shf.sum(0)).index_add_(0, y, shf, alpha=-(1.0 - eps))
                gw = gw.to(weight.dtype)
            if need_b:
                gb = acc[C].sub_(eps / V * w.sum())  # (V,)
                gb.index_add_(0, y, w, alpha=-(1.0 - eps))
                gb = gb.to(bias.dtype)
        ctx.grads = (gh, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        gh, gw, gb = ctx.grads
        del ctx.grads
        out = [None if t is None else t * g for t in (gh, gw, gb)]
        return out[0], out[1], out[2], None, None, None, None, None


class LMLoss(torch.nn.Module):
    """``model`` and :func:`head_loss` as one module: ``LMLoss(model, ...)(idx, targets) -> loss``.

    For wrappers that only call ``forward`` (DistributedDataParallel, torch.compile): the
    model's hidden states and the chunked output layer + loss run inside one forward, so
    gradient hooks and the output layer's weights behave as with ``lm_loss(model(idx), y)``.
    """

    def __init__(
        self, model: torch.nn.Module, label_smoothing: float = 0.0, sp_weight: float = 1.0
    ):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.sp_weight = sp_weight

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self.model.hidden(idx)  # (B, T, C)
        return head_loss(self.model.head, hidden, targets, self.label_smoothing, self.sp_weight)
