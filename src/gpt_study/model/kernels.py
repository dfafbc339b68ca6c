"""Attention and dropout as the model calls them: PyTorch's kernels, plus a faster CPU dropout.

The model calls :func:`causal_attention` and :class:`Dropout`; everywhere except one case they
are ``F.scaled_dot_product_attention`` and ``nn.Dropout``. The case is training with dropout on
a CPU, which is what this project's 2-core laptop does all day:

- PyTorch's CPU dropout draws its mask with a serial, one-element-at-a-time Bernoulli sampler,
  and the study's attention dropout needs a 64 x 16 x 128 x 128 mask per layer per step, so the
  masks alone are a large share of a training step (measured: docs/train.md, "Measurements").
- No fused CPU attention kernel takes dropout, so ``scaled_dot_product_attention`` falls back to
  its unfused "math" path, which copies the 16.8M-element weight matrix several times and adds
  checks for fully masked rows that a causal mask never has.

So on a CPU, with dropout on, both use :func:`~gpt_study.model.masks.keep_mask` (its module
says how the masks are drawn: seeded from PyTorch's generator, in parallel, a whole training
step's at once inside :func:`~gpt_study.model.masks.mask_stream`), applied as a bitwise AND.
Attention then runs as one autograd function with its own backward: the causal mask added
inside the score matmul, keys padded to a multiple of 16 (:func:`key_width`), dropout applied
as the weights are copied.
``tests/test_kernels.py`` checks both against PyTorch's formulas and a hand-written oracle,
values and gradients (``torch.autograd.gradcheck`` in float64).

On every other device, and whenever dropout is off (evaluation, generation, ``--attention_drop
0``), the fused kernels run unchanged.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from gpt_study.model.masks import apply_keep, keep_mask, keep_scale

__all__ = [
    "Dropout",
    "block_keeps",
    "causal_attention",
    "cpu_path",
    "dropout",
    "key_width",
    "plain_attention",
    "query_blocks",
    "split_heads",
    "use_cpu_path",
    "uses_cpu_attention",
    "uses_cpu_dropout",
]


_cpu_path = True


def use_cpu_path(enabled: bool = True) -> None:
    """Switch this module's CPU dropout path on (the default) or off, for the whole process.

    Off, the model runs PyTorch's ``F.dropout`` and ``scaled_dot_product_attention`` everywhere:
    what ``benchmarks/bench_train.py`` compares against, what training's ``--attention sdpa``
    asks for on a CPU, and a way to rule this module out.
    """
    global _cpu_path
    _cpu_path = enabled


@contextlib.contextmanager
def cpu_path(enabled: bool) -> Iterator[None]:
    """:func:`use_cpu_path` for the block, then the switch as it was: how a training run applies
    its plan's ``--attention`` without changing the process for whoever called it."""
    was = _cpu_path
    use_cpu_path(enabled)
    try:
        yield
    finally:
        use_cpu_path(was)


def uses_cpu_dropout(x: torch.Tensor, p: float) -> bool:
    """Whether ``x`` takes this module's dropout path: on, a CPU tensor, and 0 < p < 1."""
    return _cpu_path and x.device.type == "cpu" and 0.0 < p < 1.0


def uses_cpu_attention(q: torch.Tensor, p: float) -> bool:
    """Whether attention on ``q`` takes :class:`_CausalAttentionDropout`: with dropout on a CPU,
    and without it when training in bf16 on a CPU, where PyTorch's fused CPU kernel is slowest
    at the small head sizes this project trains (its backward, measured in docs/train.md)."""
    if uses_cpu_dropout(q, p):
        return True
    training_bf16 = q.requires_grad and q.dtype == torch.bfloat16
    return _cpu_path and q.device.type == "cpu" and p == 0.0 and training_bf16


class _Dropout(torch.autograd.Function):
    """Zero the dropped positions and scale the rest by keep_scale(p); the same in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        keep = keep_mask(tuple(x.shape), p, x.dtype, x.device)
        ctx.save_for_backward(keep)
        ctx.scale = keep_scale(p)
        return apply_keep(x * ctx.scale, keep)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        (keep,) = ctx.saved_tensors
        return apply_keep(grad * ctx.scale, keep), None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    """``F.dropout``, with the cheaper mask of :func:`keep_mask` on a CPU."""
    if not training or p == 0.0:
        return x
    if uses_cpu_dropout(x, p):
        return _eager_dropout(x, p)
    return F.dropout(x, p, training=True)


class Dropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, repr and state) that calls :func:`dropout`; ``rate`` is the
    configured ``p``, which :meth:`switch` restores."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self.rate = p

    def switch(self, on: bool) -> None:
        """Drop at ``rate`` (on) or not at all (off)."""
        self.p = self.rate if on else 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def key_width(T: int) -> int:
    """How many key columns the hand-written attention lays out for ``T`` positions: ``T``
    rounded up to a multiple of 16, the extra keys zero and masked.

    PyTorch's CPU softmax and elementwise kernels run bf16 rows whose length is not a multiple
    of the vector width several times slower (the study's 127-token rows: docs/train.md,
    "Measurements"), and the padding costs one key column. Each block of queries is laid out
    at the width of the keys it sees (:func:`query_blocks`), its dropout mask too.
    """
    return -(-T // 16) * 16


_biases: dict[tuple[int, torch.dtype, torch.device], torch.Tensor] = {}


def _causal_bias(T: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(T, key_width(T)): 0 where a query may look, -inf on future and padded keys. Cached.

    Added by the score matmul itself (``baddbmm``): a separate ``masked_fill_`` with a
    broadcast mask cost more than the matmul (docs/train.md, "Measurements")."""
    key = (T, dtype, device)
    if key not in _biases:
        Tk = key_width(T)
        future = torch.ones(T, Tk, dtype=torch.bool, device=device).triu(1)
        _biases[key] = torch.zeros(T, Tk, dtype=dtype, device=device).masked_fill_(
            future, float("-inf")
        )
    return _biases[key]


# Attention work (B*nh * T * key_width(T) scores) from which the queries go in blocks.
_BLOCKS_FROM = 1 << 22
_BLOCK_ROWS = 64


def query_blocks(BH: int, T: int) -> list[tuple[int, int, int]]:
    """(first row, end row, key columns) of each block of queries the CPU attention computes.

    Under a causal mask the queries of rows ``s:e`` see only keys ``< e``, so a block needs
    only ``key_width(e)`` score columns: with blocks of 64 rows at T = 127 the score, softmax
    and dropout tensors hold 75% of the full (T, key_width(T)) layout. More, smaller operations
    cost more than that saves at small sizes, so below ``_BLOCKS_FROM`` scores the queries stay
    one block (docs/train.md, "Measurements", has the sizes and block heights measured).
    """
    Tk = key_width(T)
    if BH * T * Tk < _BLOCKS_FROM or T <= _BLOCK_ROWS:
        return [(0, T, Tk)]
    return [
        (s, min(T, s + _BLOCK_ROWS), key_width(min(T, s + _BLOCK_ROWS)))
        for s in range(0, T, _BLOCK_ROWS)
    ]


def block_keeps(BH: int, T: int, p: float, dtype: torch.dtype, device: torch.device) -> list:
    """The dropout masks of the CPU attention's :func:`query_blocks`, in the order it asks for
    them: (BH, e - s, key columns) each, or None for each block when ``p`` is 0."""
    return [
        keep_mask((BH, e - s, w), p, dtype, device) if p > 0 else None
        for s, e, w in query_blocks(BH, T)
    ]


def _sum_over_blocks(parts: list[torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """``scale`` times the key (or value) gradient (B*nh, Tk, hs) from each block's (B*nh, w, hs)
    part: the last block sees every key; the others add to the keys they see. With several
    blocks the sum is taken in fp32 (at least) and rounded once, as one matmul over all queries
    would round it."""
    if len(parts) == 1:
        return parts[0] if scale == 1.0 else parts[0].mul_(scale)
    total = parts[-1].to(torch.promote_types(parts[-1].dtype, torch.float32))
    for part in parts[:-1]:
        total[:, : part.size(1)] += part
    return total.mul_(scale).to(parts[-1].dtype)


def _pad_keys(x: torch.Tensor, Tk: int) -> torch.Tensor:
    """(B, nh, T, hs) -> (B*nh, Tk, hs) with zero rows after T, in one copy (the keys and values
    are strided views of the q/k/v projection, so a reshape then a pad would copy twice)."""
    B, nh, T, hs = x.shape
    if Tk == T:
        return x.reshape(B * nh, T, hs)
    out = x.new_empty(B, nh, Tk, hs)  # (B, nh, Tk, hs)
    out[:, :, :T] = x
    out[:, :, T:] = 0
    return out.view(B * nh, Tk, hs)  # (B, nh, Tk, hs) -> (B*nh, Tk, hs)


class _CausalAttentionDropout(torch.autograd.Function):
    """softmax(q k^T / sqrt(hs) + causal mask), dropout, times v: forward and backward by hand.

    Autograd over the same ops would keep a copy per out-of-place step; here the mask is added
    inside the score matmul, the dropout applied as it copies the weights, and the softmax
    backward is PyTorch's fused kernel; the weights before and after dropout are the only
    score-sized tensors kept for backward. Keys and values are padded to ``Tk = key_width(T)``
    columns (see there); the queries go in :func:`query_blocks`, each block against only the
    keys it can see.
    """

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
        B, nh, T, hs = q.shape
        BH, Tk = B * nh, key_width(T)
        ctx.blocks = query_blocks(BH, T)
        # Each block's queries, keys and values as contiguous (B*nh, rows, hs) tensors, made once:
        # a matmul copies a sliced operand on every call (docs/train.md, "Measurements").
        k3, v3 = _pad_keys(k, Tk), _pad_keys(v, Tk)  # (B*nh, Tk, hs) each, zero keys after T
        qs = [q[:, :, s:e].reshape(BH, e - s, hs) for s, e, _ in ctx.blocks]
        ks = [k3 if w == Tk else k3[:, :w].contiguous() for _, _, w in ctx.blocks]
        vs = [v3 if w == Tk else v3[:, :w].contiguous() for _, _, w in ctx.blocks]
        bias = _causal_bias(T, q.dtype, q.device)  # (T, Tk)
        scale, kept_scale = 1.0 / math.sqrt(hs), keep_scale(p)
        y = torch.empty(B, nh, T, hs, dtype=q.dtype, device=q.device)
        saved = []
        keeps = block_keeps(BH, T, p, q.dtype, q.device)
        for (s, e, w), qb, kb, vb, keep in zip(ctx.blocks, qs, ks, vs, keeps, strict=True):
            scores = torch.baddbmm(  # (B*nh, e - s, w)
                bias[s:e, :w].expand(BH, e - s, w), qb, kb.transpose(1, 2), alpha=scale
            )
            # In place: PyTorch's CPU softmax works row by row, and writing into the scores
            # spares a new score-sized tensor (docs/train.md, "Measurements").
            weights = torch._softmax(scores, -1, False, out=scores)  # (B*nh, e - s, w)
            kept = weights if keep is None else apply_keep(weights, keep, copy=True)  # unscaled
            yb = torch.bmm(kept, vb).view(B, nh, e - s, hs)  # (B*nh, e - s, hs) -> (B, nh, ...)
            torch.mul(yb, kept_scale, out=y[:, :, s:e])
            saved += [weights, kept, keep]
        ctx.save_for_backward(*qs, *ks, *vs, *saved)
        ctx.scale, ctx.keep_scale = scale, kept_scale
        return y

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        B, nh, T, hs = grad_y.shape
        BH, n = B * nh, len(ctx.blocks)
        qs, ks, vs = (ctx.saved_tensors[i * n : (i + 1) * n] for i in range(3))
        saved = ctx.saved_tensors[3 * n :]
        grad_q = torch.empty(B, nh, T, hs, dtype=grad_y.dtype, device=grad_y.device)
        parts_k, parts_v = [], []  # (B*nh, w, hs) per block
        for i, (s, e, _) in enumerate(ctx.blocks):
            weights, kept, keep = saved[3 * i : 3 * i + 3]
            gy = torch.empty(B, nh, e - s, hs, dtype=grad_y.dtype, device=grad_y.device)
            gy = torch.mul(grad_y[:, :, s:e], ctx.keep_scale, out=gy).view(BH, e - s, hs)
            parts_v.append(torch.bmm(kept.transpose(1, 2), gy))  # (B*nh, w, hs)
            g = torch.bmm(gy, vs[i].transpose(1, 2))  # (B*nh, e - s, w)
            if keep is not None:
                apply_keep(g, keep)  # through the dropout mask
            # w * (g - sum(w * g)), in place as the forward's softmax (each row read, then written)
            g = torch._softmax_backward_data(g, weights, -1, weights.dtype, grad_input=g)
            gq = torch.bmm(g, ks[i]).view(B, nh, e - s, hs)  # (B*nh, e - s, hs) -> (B, nh, ...)
            torch.mul(gq, ctx.scale, out=grad_q[:, :, s:e])
            parts_k.append(torch.bmm(g.transpose(1, 2), qs[i]))  # (B*nh, w, hs)
        grad_k = _sum_over_blocks(parts_k, ctx.scale)[:, :T]  # only the first T keys are real
        grad_v = _sum_over_blocks(parts_v)[:, :T]
        shape = (B, nh, T, hs)  # (B*nh, T, hs) -> (B, nh, T, hs) for each
        return grad_q, grad_k.reshape(shape), grad_v.reshape(shape), None


# Under torch.compile the two functions above run eagerly, between compiled graphs: traced, they
# fail (they save views of their inputs), and what the compiler would put in their place, its own
# dropout and PyTorch's fused CPU attention, made the cpu preset's compiled step about twice as
# slow as the eager one (docs/train.md, "torch.compile").
@torch.compiler.disable
def _eager_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return _Dropout.apply(x, p)


@torch.compiler.disable
def _eager_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, p: float) -> torch.Tensor:
    return _CausalAttentionDropout.apply(q, k, v, p)


def _heads(qkv: torch.Tensor, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
    """q, k, v (B, nh, T, hs) as views of ``qkv`` (B*T, 3C) laid out as ``shape`` (B, T, 3, nh,
    hs)."""
    return qkv.view(shape).permute(2, 0, 3, 1, 4).unbind(0)  # 3 x (B, nh, T, hs)


class _SplitHeads(torch.autograd.Function):
    """:func:`_heads`, whose backward writes the three gradients straight into one (B, T, 3, nh,
    hs) buffer. Autograd through ``view``/``permute``/``unbind`` would stack them and then copy
    the stack into that layout: two copies of the projection's gradient per layer instead of
    one (docs/train.md, "Measurements")."""

    @staticmethod
    def forward(ctx, qkv: torch.Tensor, shape: tuple[int, ...]):  # noqa: D102
        ctx.shape = shape
        return _heads(qkv, shape)

    @staticmethod
    def backward(ctx, *grads: torch.Tensor):  # noqa: D102
        out = grads[0].new_empty(ctx.shape)  # (B, T, 3, nh, hs)
        for i, g in enumerate(grads):
            out[:, :, i] = g.transpose(1, 2)  # (B, nh, T, hs) -> (B, T, nh, hs)
        return out.view(out.size(0) * out.size(1), -1), None  # (B*T, 3C)


def split_heads(qkv: torch.Tensor, batch: int, n_heads: int) -> tuple[torch.Tensor, ...]:
    """Queries, keys and values (B, nh, T, hs), views of the projection ``qkv`` (B*T, 3C).

    Through :class:`_SplitHeads` when a gradient will flow, except under torch.compile, which
    plans the copies of the plain views itself."""
    N, C3 = qkv.shape
    shape = (batch, N // batch, 3, n_heads, C3 // (3 * n_heads))  # (B, T, 3, nh, hs)
    if torch.is_grad_enabled() and qkv.requires_grad and not torch.compiler.is_compiling():
        return _SplitHeads.apply(qkv, shape)
    return _heads(qkv, shape)


def causal_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> torch.Tensor:
    """Causal self-attention of q, k, v (B, nh, T, hs), dropout on the weights: (B, nh, T, hs).

    ``F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)``, except on a
    CPU where :func:`uses_cpu_attention` says :class:`_CausalAttentionDropout` computes the same
    thing faster (with dropout, or training in bf16).
    """
    if uses_cpu_attention(q, dropout_p):
        return _eager_attention(q, k, v, dropout_p)
    return F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=True)


def plain_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``softmax(q k^T / sqrt(hs))`` under ``mask``, times ``v``, keeping the weights.

    q (B, nh, Tq, hs), k and v (B, nh, Tk, hs), mask (Tq, Tk) bool, True where a query may
    attend. Returns the output (B, nh, Tq, hs) and the weights (B, nh, Tq, Tk), zero where
    masked. Written out as the textbook formula: the inspection path (which needs the weights
    the fused kernel never forms) and the tests' oracle for the fused kernels. Reduced-precision
    inputs get their softmax in float32, as the fused kernels do.
    """
    wide = torch.promote_types(q.dtype, torch.float32)
    scores = (q.to(wide) @ k.to(wide).transpose(-2, -1)) / math.sqrt(q.size(-1))  # (B, nh, Tq, Tk)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return (weights.to(v.dtype) @ v), weights
