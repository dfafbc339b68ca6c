"""The key/value cache of decoding: what attention reads of the positions already seen."""

from __future__ import annotations

import torch
from torch import nn

from gpt_study.config.model import GPTConfig


class KVCache:
    """Keys and values of the positions already seen, one pair of buffers per layer.

    Generation feeds only the new tokens; attention reads the past from here, so each new token
    costs one position of work instead of re-running the whole sequence. ``length`` is the number
    of positions stored; ``start`` is the absolute position of the first one (0 unless
    :meth:`drop_oldest` slid the window, which only rotary positions allow), so the next token
    sits at ``start + length``.
    """

    def __init__(self, model: nn.Module, batch_size: int, max_len: int | None = None) -> None:
        """Buffers for ``batch_size`` rows of up to ``max_len`` positions (the model's by
        default), in the dtype and on the device of ``model``'s (a GPT's) weights."""
        cfg: GPTConfig = model.config  # type: ignore[assignment]
        self.max_len = max_len or cfg.max_len
        p = next(model.parameters())
        shape = (batch_size, cfg.n_heads, self.max_len, cfg.head_dim)  # (B, nh, T_max, hs)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.n_layers)]
        self.length = 0
        self.start = 0

    @property
    def position(self) -> int:
        """Absolute position of the next token."""
        return self.start + self.length

    def append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, nh, T, hs) after the past; return past + new, (B, nh, length+T, hs)."""
        t = k.size(2)
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        keys, values = self.k[layer], self.v[layer]  # (B, nh, T_max, hs)
        keys.narrow(2, self.length, t).copy_(k)  # copy_ converts the dtype if it differs
        values.narrow(2, self.length, t).copy_(v)
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def drop_oldest(self, n: int, rows: list[int] | None = None) -> None:
        """Forget the ``n`` oldest positions (and keep only batch ``rows``, if given).

        Exact only for rotary positions: a rotary key depends on its position relative to the
        query, so the kept keys stay valid; a learned-position key does not.
        """
        keep = self.length - n
        for buffers in (self.k, self.v):
            for i, buf in enumerate(buffers):
                part = buf[rows] if rows is not None else buf
                moved = part[:, :, n : self.length].clone()  # (B', nh, keep, hs)
                part[:, :, :keep] = moved
                buffers[i] = part
        self.length, self.start = keep, self.start + n

    def reset(self) -> None:
        """Forget every position (the buffers stay): a decoder starting over reuses its cache."""
        self.length = self.start = 0
