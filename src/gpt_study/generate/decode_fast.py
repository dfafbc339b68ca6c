"""Batch-1 greedy decoding with as little as possible between the matrix multiplies.

At batch 1 a new token costs a read of every weight plus a few hundred small operations; once
the cache removed the recomputation, the general loop of :func:`~gpt_study.generate.decode.
generate_ids` spends a good part of each token on bookkeeping made for batches (per-row lists,
a new index tensor, the :class:`~gpt_study.model.KVCache` class, masks, dropout modules that do
nothing). :class:`FastGreedy` runs the same computation for one row: the model's own LayerNorm
and Linear modules (so an int8 model from :mod:`~gpt_study.generate.weights` runs here too),
keys and values written into buffers allocated once, attention over the filled prefix, no
per-token tensor but the ones the kernels return. It follows the window schedule of
``generate_ids`` exactly (prompt cut to the window, slide by re-encoding the last ``keep``
tokens), so with fp32 weights its tokens are ``generate_ids``' tokens; ``tests/
test_generate_fast.py`` checks that, slides included.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from gpt_study.errors import UserError
from gpt_study.generate.window import keep_size, window_size
from gpt_study.model import GPT

__all__ = ["FastGreedy", "greedy_fast"]


class FastGreedy:
    """One row's decoder over ``model``: preallocated keys and values for ``window`` positions.

    ``prefill(ids)`` encodes ``ids`` from position 0 and returns the last position's logits;
    ``step(token)`` feeds one token at the next position. Both return (V,) logits.
    """

    def __init__(self, model: GPT, window: int) -> None:
        cfg = model.config
        self.model = model
        self.window = window
        self.n_heads, self.d_model = cfg.n_heads, cfg.d_model
        self.head_dim = cfg.d_model // cfg.n_heads
        p = model.tok_emb.weight
        shape = (1, cfg.n_heads, window, self.head_dim)  # (1, nh, T_max, hs)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.blocks]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in model.blocks]
        self.length = 0  # positions filled: also the position of the next token
        # The modules' forward methods, looked up once and called without nn.Module.__call__
        # (no hooks to run): (ln1, qkv, proj, ln2, fc, fc2) per block.
        self.layers = [
            tuple(m.forward for m in (b.ln1, b.attn.qkv, b.attn.proj, b.ln2, b.mlp.fc, b.mlp.proj))
            for b in model.blocks
        ]
        self.ln_f, self.head = model.ln_f.forward, model.head.forward

    def _attend(self, i: int, qkv: torch.Tensor, T: int) -> torch.Tensor:
        """Store this block's keys and values, attend; (T, 3C) in, (T, C) out."""
        nh, hs, C = self.n_heads, self.head_dim, self.d_model
        if T == 1:  # (1, 3C) is already (3, 1, nh, 1, hs) in memory
            q, k, v = qkv.view(3, 1, nh, 1, hs)  # 3 x (1, nh, 1, hs)
        else:
            q, k, v = qkv.view(T, 3, nh, hs).permute(1, 2, 0, 3).unsqueeze(1)  # 3 x (1, nh, T, hs)
        start, end = self.length, self.length + T
        self.k[i][:, :, start:end] = k
        self.v[i][:, :, start:end] = v
        if start == 0:  # a prompt, or the kept tokens after a slide: causal among themselves
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:  # one new token sees every stored position: no mask
            y = F.scaled_dot_product_attention(q, self.k[i][:, :, :end], self.v[i][:, :, :end])
        return y.transpose(1, 2).reshape(T, C)  # (1, nh, T, hs) -> (T, C)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Hidden states (T, C) of the new positions through every block; logits of the last."""
        T = x.size(0)
        if self.length + T > self.window:
            raise ValueError(f"window of {self.window} positions; {self.length + T} requested")
        for i, (ln1, qkv, proj, ln2, fc, fc2) in enumerate(self.layers):
            x = x.add_(proj(self._attend(i, qkv(ln1(x)), T)))  # x is this call's own tensor
            x = x.add_(fc2(F.gelu(fc(ln2(x)))))
        self.length += T
        return self.head(self.ln_f(x[-1:]))[0]  # (1, C) -> (V,)

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        """Start over: encode ``ids`` at positions 0 .. len(ids)-1."""
        self.length = 0
        m = self.model
        idx = torch.tensor(ids, device=m.tok_emb.weight.device)  # (T,)
        pos = torch.arange(len(ids), device=idx.device)  # (T,)
        return self._forward(m.tok_emb(idx) + m.pos_emb(pos))  # (T, C)

    def step(self, token: int) -> torch.Tensor:
        """Feed ``token`` at the next position."""
        m = self.model
        x = m.tok_emb.weight[token] + m.pos_emb.weight[self.length]  # (C,)
        return self._forward(x.view(1, -1))  # (1, C)

    def compile(self) -> None:
        """Compile :meth:`step` with ``torch.compile`` (dynamic shapes, so one graph serves every
        cache length). Measured by ``bench_generate.py --compile``: about a quarter more tokens
        per second on a CPU at int8, after a minute or more of compiling; so it is not the
        default."""
        self.step = torch.compile(self.step, dynamic=True)  # type: ignore[method-assign]


@torch.inference_mode()
def greedy_fast(
    model: GPT,
    prompt: Sequence[int],
    max_new_tokens: int,
    context_size: int | None = None,
    eot_id: int = 2,
    keep: int | None = None,
    on_token: Callable[[int], None] | None = None,
    decoder: FastGreedy | None = None,
) -> tuple[list[int], bool]:
    """Greedy continuation of one prompt as ``generate_ids`` computes it: (new ids, whether
    ``<eot>`` ended it). ``on_token(id)`` sees each new token as soon as it is chosen;
    ``decoder`` reuses the buffers (and a compiled step) of an earlier call."""
    if not prompt:
        raise UserError("every prompt needs at least one token (an empty prompt is <sot>)")
    window = window_size(model, context_size)
    keep = keep_size(window, keep)
    seq = list(prompt)[-window:]
    was_training = model.training
    model.eval()
    try:
        dec = decoder if decoder is not None else FastGreedy(model, window)
        if dec.model is not model or dec.window != window:
            raise ValueError("the decoder was made for another model or window")
        logits = dec.prefill(seq)
        new: list[int] = []
        while True:
            tok = int(logits.argmax())
            seq.append(tok)
            new.append(tok)
            if on_token is not None:
                on_token(tok)
            if tok == eot_id or len(new) >= max_new_tokens:
                return new, tok == eot_id
            if dec.length == window:  # full: keep the last `keep` tokens, from position 0
                logits = dec.prefill(seq[-keep:])
            else:
                logits = dec.step(tok)
    finally:
        model.train(was_training)
