"""The study's training loss and the honest metric beside it.

The study optimised ``torch.nn.CrossEntropyLoss(weight=w, label_smoothing=eps)`` with class
weights ``w`` of 1, except ``sp_weight`` on ``<sot>``/``<eot>`` (it taught the model to end
stories). PyTorch's definition, per target position n with target y:

    loss_n = -sum_c w_c q_nc log p_nc,   q_n = (1 - eps) onehot(y) + eps / V,
    mean   = sum_n loss_n / sum_n w_(y_n)

so the class weights also weight the smoothing term of every position: ``<sot>`` and ``<eot>``
get extra smoothing mass everywhere, not only where they are the target. Beside it the held-out
scorer sums plain negative log-likelihood: no smoothing, no weights. Only the latter gives
perplexity and bits per byte; the study reported the former as "valid loss".

Training runs :func:`head_loss` (through :class:`LMLoss`); :func:`reference_lm_loss` is the same
criterion written plainly on whole logits, the reference that tests and ``bench_train.py``
compare it with, and what a model with ``--logit_softcap`` trains on.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from gpt_study.config.data import EOT_ID, SOT_ID


def special_weights(
    targets: torch.Tensor, sp_weight: float, special_ids: tuple[int, ...] = (SOT_ID, EOT_ID)
) -> torch.Tensor:
    """Per-target weights ``w_(y_n)``: ``sp_weight`` where the target is ``<sot>``/``<eot>``, else
    1. Their sum is the denominator of the study's mean (see :func:`class_weights`)."""
    special = torch.zeros_like(targets, dtype=torch.bool)
    for i in special_ids:
        special |= targets == i
    return torch.where(special, sp_weight, 1.0)


def class_weights(
    vocab_size: int,
    sp_weight: float,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """The study's ``weight`` vector (V,) for ``CrossEntropyLoss``: 1, ``sp_weight`` at the
    special ids. It weights both each target's term and every position's smoothing term."""
    w = torch.ones(vocab_size, device=device)
    w[list(special_ids)] = sp_weight
    return w


def target_nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-log p of each target: (N,) from log-probabilities ``logp`` (N, V) and ``targets`` (N,)."""
    return -logp.gather(1, targets[:, None]).squeeze(1)


def lm_loss_terms(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    sp_weight: float = 1.0,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
    *,
    log_probs: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum_n loss_n, sum_n w_(y_n)) over ``logits`` (N, V) and ``targets`` (N,): the two sums
    whose ratio is :func:`reference_lm_loss`, so that held-out scoring can add them up over
    batches and ranks (``CrossEntropyLoss``'s weighted mean is exactly this ratio).

    ``log_probs``: ``logits`` are already log-softmaxed, as the held-out scorer has them for its
    NLL: the (N, V) softmax, most of the cost, is then not taken twice. Written out (the module
    text's loss_n): (1 - eps) w_(y_n) (-log p_(n,y_n)) + (eps / V) sum_c w_c (-log p_nc).
    """
    logp = logits.float() if log_probs else F.log_softmax(logits.float(), dim=-1)  # (N, V)
    wy = special_weights(targets, sp_weight, special_ids)  # (N,)
    total = (1.0 - label_smoothing) * (wy * target_nll(logp, targets)).sum()
    if label_smoothing:
        w = class_weights(logp.size(-1), sp_weight, special_ids, logp.device)  # (V,)
        total = total - (label_smoothing / logp.size(-1)) * (logp @ w).sum()
    return total, wy.sum()


def reference_lm_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float = 0.0,
    sp_weight: float = 1.0,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
) -> torch.Tensor:
    """The reference: the study's criterion on ``logits`` (B, T, V) against ``targets`` (B, T),
    in fp32, ``CrossEntropyLoss(weight=class_weights(...), label_smoothing=...)`` (see the module
    text), on the whole logits as the study computed it. Training calls it only for a model with
    ``--logit_softcap`` (:class:`LMLoss`); the tests hold :func:`head_loss` to it and
    ``benchmarks/bench_train.py`` times it as the unchunked row.

    The mean is over the target weights (sum_n loss_n / sum_n w_(y_n)), so ``sp_weight`` changes
    the balance between tokens more than the scale of the loss.
    """
    V = logits.size(-1)
    flat_logits = logits.reshape(-1, V).float()  # (B*T, V)
    flat_targets = targets.reshape(-1)  # (B*T,)
    if sp_weight == 1.0:
        return F.cross_entropy(flat_logits, flat_targets, label_smoothing=label_smoothing)
    w = class_weights(V, sp_weight, special_ids, logits.device)  # (V,)
    return F.cross_entropy(flat_logits, flat_targets, weight=w, label_smoothing=label_smoothing)


# Logits per chunk: 16M elements (32 MB in bf16) stay in a CPU's last-level cache between the
# matmul that writes them, the softmax and the two matmuls that read them (docs/train.md).
_CHUNK_ELEMENTS = 1 << 24
# Chunks whose weight-gradient parts the matmul sums in the compute dtype before one fp32 add.
_GROUP = 4


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
    """``reference_lm_loss(head(hidden), targets, ...)`` without ever holding the (B*T, V) logits.

    The output layer over a 30,000-word vocabulary is most of a training step, and most of that
    is memory traffic: the study's loss writes the (8192, 30000) logits, an fp32 copy, the log
    softmax, the gradient and its casts (about 1 GB each). Here the logits are made ``chunk_size``
    rows at a time, turned into softmax probabilities in place of the logits, and the gradients
    of ``hidden``, ``head.weight`` and ``head.bias`` are computed right away from that chunk;
    backward only scales them. Same maths as :func:`reference_lm_loss` (the smoothing and
    class-weight terms are added exactly, on small matrices), one pass over each chunk instead of
    about ten.

    Under ``torch.autocast`` the matmuls run in the autocast dtype, like ``head(hidden)`` would.
    The weight gradient of each group of ``_GROUP`` chunks is summed by the matmul itself
    (``addmm_``: fp32 inside, rounded to the autocast dtype once per chunk), the groups in fp32:
    in bf16 as close to exact as one bf16 matmul over all rows, the precision of every other
    layer's weight gradient, without an fp32 pass over the (V, C) sum per chunk. With bf16 the
    per-token loss is exact to about 0.002 nats (the log of a bf16 probability); the mean over a
    batch to about 1e-5. In fp32 it is exact. ``hidden`` is (B, T, C) or (N, C), ``targets``
    (B, T) or (N,).
    """
    C = hidden.size(-1)
    h = hidden.reshape(-1, C)  # (N, C)
    y = targets.reshape(-1)  # (N,)
    ids = () if sp_weight == 1.0 else tuple(sorted(set(special_ids)))  # classes whose w_c != 1
    dev = hidden.device.type
    cdt = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else hidden.dtype
    N = y.numel()
    if chunk_size is None:  # logits of at most _CHUNK_ELEMENTS at a time, in equal chunks
        n_chunks = -(-N * head.out_features // _CHUNK_ELEMENTS)
        chunk_size = -(-N // max(1, n_chunks))
    chunk = max(1, chunk_size)
    return _ChunkedHeadLoss.apply(
        h, head.weight, head.bias, y, sp_weight, ids, label_smoothing, cdt, chunk
    )


def _transposed(x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """``x.t().contiguous()`` of a (C, V) matrix, copied ``block`` columns at a time: PyTorch
    copies a whole transposed matrix on one thread, each block in parallel (docs/train.md)."""
    out = x.new_empty(x.size(1), x.size(0))  # (V, C)
    for v in range(0, x.size(1), block):
        out[v : v + block] = x[:, v : v + block].t()
    return out


@functools.cache
def column_multiple(device_type: str) -> int:
    """The multiple the bias column pads [h, 1] to: the step in which the matmul's hardware
    takes the inner dimension. AMX multiplies bf16 tiles 32 deep, so a width off that step
    pays a padded copy inside the kernel; AVX512-BF16 takes pairs, and padding 257 to 288 there
    only adds work (docs/train.md, "Round nine"). GPUs keep 32 (their tensor cores want
    multiples of 8)."""
    if device_type != "cpu":
        return 32
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # private, so looked up softly
    return 32 if amx is not None and amx() else 2


def _bias_as_column(
    h: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor]:
    """[h, 1, 0...] (N, Cx) and [W, b, 0...] (V, Cx) in ``dtype``: the bias as one more weight
    column on a constant-1 input feature, padded with zero columns to a multiple of
    :func:`column_multiple`. No bias: h and W."""
    if bias is None:
        return h.to(dtype), w.to(dtype)
    (N, C), V = h.shape, w.size(0)
    m = column_multiple(w.device.type)
    Cx = -(-(C + 1) // m) * m
    hx = torch.empty(N, Cx, dtype=dtype, device=w.device)  # (N, Cx) [h, 1, 0...]
    hx[:, :C], hx[:, C], hx[:, C + 1 :] = h, 1, 0
    wx = torch.empty(V, Cx, dtype=dtype, device=w.device)  # (V, Cx) [W, b, 0...]
    wx[:, :C], wx[:, C], wx[:, C + 1 :] = w, bias, 0
    return hx, wx


class _ChunkedHeadLoss(torch.autograd.Function):
    """Loss and all three gradients in one chunked pass (see :func:`head_loss`).

    With z = h W^T + b, p = softmax(z), e the smoothing, w_c the class weights (1, except
    ``sp`` at ``ids``), S = sum_c w_c, D = sum_i w_(y_i) and a_i = (1 - e) w_(y_i) + e S / V
    (the weighted mass sum_c w_c q_ic of the smoothed target q_i):
      loss = sum_i (a_i * -log p_iy + (e / V) * (S z_iy - sum_c w_c z_ic)) / D
      dz_i = (a_i p_i - (1 - e) w_(y_i) onehot(y_i) - (e / V) w) / D
    The constant and one-hot parts of dz are applied to the small products (dh = dz W is
    (a p W - (1 - e) w_y W_y - (e / V) w W) / D, and likewise for dW and db), so each chunk
    needs only its softmax. sum_c w_c z_ic = [h_i, 1] . (sum_c w_c [W_c, b_c]) is exact and
    needs no pass over z; w W is the column sum of W plus (sp - 1) times the few rows at ``ids``.
    """

    @staticmethod
    def forward(ctx, h, weight, bias, y, sp, ids, eps, cdt, chunk):  # noqa: D102
        N, C = h.shape
        V = weight.size(0)
        dev = h.device
        need_h, need_w = ctx.needs_input_grad[:2]
        need_b = bias is not None and ctx.needs_input_grad[2]
        with torch.autocast(dev.type, enabled=False):
            hx, wx = _bias_as_column(h, weight, bias, cdt)  # (N, Cx), (V, Cx)
            wc = wx[:, :C]  # (V, C) W in cdt, a view
            cw = torch.ones(V, device=dev)  # (V,) class weights w_c
            cw[list(ids)] = sp
            wsum = wx.sum(0, dtype=torch.float32)  # (Cx,) sum_c w_c [W_c, b_c], ...
            if ids:  # ... plus (sp - 1) times the rows of the weighted classes
                wsum += (sp - 1.0) * wx[list(ids)].float().sum(0)
            wy = cw[y]  # (N,) weight of each target
            D = wy.sum()  # the mean's denominator, sum_i w_(y_i)
            a = (1.0 - eps) * wy + (eps / V) * cw.sum()  # (N,) the scale of p in dz, times D
            hxf = hx.float()  # (N, Cx): [h, 1, 0...] in fp32, for the small products
            zc = hxf @ wsum  # (N,) sum_c w_c z_ic
            zy = torch.empty(N, device=dev)  # (N,) logit of the target
            py = torch.empty(N, device=dev)  # (N,) its probability
            gh = torch.empty(N, C, dtype=cdt, device=dev) if need_h else None  # (N, C) p W
            # [r*h, r] (r = a / D), so that [r*h, r]^T p gives the dW and db parts of a p / D.
            r = a / D  # (N,)
            sh = (hxf * r[:, None]).to(cdt) if need_w or need_b else None  # (N, Cx)
            acc = None  # (Cx, V) fp32: [r*h, r]^T p summed over the groups of chunks
            part = None  # (Cx, V) in cdt: the same over this group's chunks
            # The softmax overwrites the logits in place on CPU (it works row by row); elsewhere
            # it goes to a second buffer.
            zbuf = torch.empty(min(chunk, N), V, dtype=cdt, device=dev)  # (n, V)
            pbuf = zbuf if dev.type == "cpu" else torch.empty_like(zbuf)
            for i, s in enumerate(range(0, N, chunk)):
                e = min(N, s + chunk)
                ys = y[s:e, None]  # (n, 1)
                # The weights as the transposed view of (V, Cx): no row-major (Cx, V) copy, and
                # the faster layout for the matmul at the seed's shape (docs/train.md).
                z = torch.mm(hx[s:e], wx.t(), out=zbuf[: e - s])  # (n, V) logits
                zy[s:e] = z.gather(1, ys).squeeze(1)
                p = torch._softmax(z, -1, False, out=pbuf[: e - s])  # (n, V)
                py[s:e] = p.gather(1, ys).squeeze(1)
                if sh is not None:
                    rows = sh[s:e].t().contiguous()  # (Cx, n)
                    part = rows @ p if part is None else part.addmm_(rows, p)  # (Cx, V)
                    if (i + 1) % _GROUP == 0 or e == N:
                        acc = part.float() if acc is None else acc.add_(part)
                        part = None
                if need_h:
                    torch.mm(p, wc, out=gh[s:e])  # (n, V) @ (V, C) -> (n, C)
            nll = -py.log()  # (N,)
            bad = py == 0  # underflow in the probability: take those rows the long way
            if bool(bad.any()):
                nll[bad] = torch.logsumexp((hx[bad] @ wx.t()).float(), dim=-1) - zy[bad]
            smooth = (eps / V) * (cw.sum() * zy - zc)  # (N,)
            loss = (a * nll + smooth).sum() / D
            o = (1.0 - eps) * wy / D  # (N,) weight of the one-hot part of dz
            k = (eps / V) * cw / D  # (V,) the constant part of dz, the same on every row
            gw = gb = None
            if need_h:
                # dh = r p W - o W_y - k W
                gh = gh.float().mul_(r[:, None]).sub_(wc[y].float().mul_(o[:, None]))
                gh = gh.sub_((eps / V) * wsum[:C] / D).to(h.dtype)
            if need_w:
                # dW = p^T (r h) - k_c * sum_i h_i on row c - o_i h_i on row y_i
                hf = hxf[:, :C]  # (N, C)
                gw = _transposed(acc[:C])  # (C, V) -> (V, C)
                gw.sub_(torch.outer(k, hf.sum(0))).index_add_(0, y, hf * o[:, None], alpha=-1.0)
                gw = gw.to(weight.dtype)
            if need_b:
                gb = acc[C].sub_(N * k)  # (V,)
                gb.index_add_(0, y, o, alpha=-1.0)
                gb = gb.to(bias.dtype)
        ctx.grads = (gh, gw, gb)
        return loss

    @staticmethod
    def backward(ctx, g):  # noqa: D102
        gh, gw, gb = ctx.grads
        del ctx.grads
        out = [None if t is None else t * g for t in (gh, gw, gb)]
        return out[0], out[1], out[2], None, None, None, None, None, None


class LMLoss(torch.nn.Module):
    """``model`` and :func:`head_loss` as one module: ``LMLoss(model, ...)(idx, targets) -> loss``.

    For wrappers that only call ``forward`` (DistributedDataParallel, torch.compile): the
    model's hidden states and the chunked output layer + loss run inside one forward, so
    gradient hooks and the output layer's weights behave as with
    ``reference_lm_loss(model(idx), y)``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        label_smoothing: float = 0.0,
        sp_weight: float = 1.0,
        special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
    ):
        super().__init__()
        self.model = model
        self.label_smoothing = label_smoothing
        self.sp_weight = sp_weight
        self.special_ids = special_ids  # the tokenizer's (Tokenizer.special_ids)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        hidden = self.model.hidden(idx)  # (B, T, C)
        if not self.model.logits_are_the_head:  # e.g. capped: their gradient is not head_loss's
            logits = self.model.logits(hidden)  # (B, T, V)
            eps, sp, ids = self.label_smoothing, self.sp_weight, self.special_ids
            return reference_lm_loss(logits, targets, eps, sp, ids)
        return head_loss(
            self.model.head,
            hidden,
            targets,
            self.label_smoothing,
            self.sp_weight,
            self.special_ids,
        )
