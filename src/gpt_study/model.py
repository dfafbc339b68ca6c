"""The study's GPT: a pre-LayerNorm decoder-only transformer, read top to bottom.

Token ids in, logits out. This file knows nothing of devices, precision, distributed training or
logging; those are applied from outside (train.py, generate.py).

Architecture (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", with
the pre-LN placement of Xiong et al. 2020): token + learned position embeddings, ``n_layers``
blocks of ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (the MLP with a dropout inside, as the
study's), a final LayerNorm and an output Linear with bias (no weight tying, as in the study). With the study's defaults and a 30,000-word
vocabulary that is exactly 19,672,880 parameters.

Attention and dropout come from :mod:`gpt_study.ops`: PyTorch's fused
``scaled_dot_product_attention`` and ``nn.Dropout``, except for training with dropout on a CPU,
where ops draws cheaper masks (the same computation, tested against a plain oracle).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt_study.config import GPTConfig
from gpt_study.ops import Dropout, causal_attention

__all__ = ["GPT", "GPTConfig", "KVCache"]


class KVCache:
    """Keys and values of the positions already seen, one pair of buffers per layer.

    Generation feeds only the new tokens; attention reads the past from here, so each new token
    costs one position of work instead of re-running the whole sequence. ``length`` is the number
    of positions stored, which is also the absolute position of the next token.
    """

    def __init__(self, model: GPT, batch_size: int, max_len: int | None = None) -> None:
        cfg = model.config
        self.max_len = max_len or cfg.max_len
        head_dim = cfg.d_model // cfg.n_heads
        p = next(model.parameters())
        shape = (batch_size, cfg.n_heads, self.max_len, head_dim)  # (B, nh, T_max, hs)
        self.k = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.n_layers)]
        self.v = [torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(cfg.n_layers)]
        self.length = 0

    def append(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``k, v`` (B, nh, T, hs) after the past; return past + new, (B, nh, length+T, hs)."""
        t = k.size(2)
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache holds {self.max_len} positions; {end} requested")
        self.k[layer][:, :, self.length : end] = k.to(self.k[layer].dtype)
        self.v[layer][:, :, self.length : end] = v.to(self.v[layer].dtype)
        return self.k[layer][:, :, :end], self.v[layer][:, :, :end]

    def reset(self) -> None:
        self.length = 0


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask (Vaswani et al. 2017, sec. 3.2)."""

    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.layer = layer
        # q, k and v in one matmul: the same parameters as three d_model x d_model projections.
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attention_drop = cfg.attention_drop
        self.residual_drop = Dropout(cfg.residual_drop)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_heads
        q, k, v = self.qkv(x).split(C, dim=2)  # 3 x (B, T, C)
        q = q.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = v.view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)

        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(self.layer, k, v)  # (B, nh, past+T, hs)

        drop = self.attention_drop if self.training else 0.0
        if past == 0:
            # Plain causal attention over the T new positions (training and prompts).
            y = causal_attention(q, k, v, dropout_p=drop)
        elif T == 1:
            # One new token may attend to every stored position: no mask needed.
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        else:
            # Several new tokens after a past: query i sits at absolute position past + i.
            # is_causal would align the mask top-left, which is wrong when Tq != Tk.
            mask = torch.ones(T, past + T, dtype=torch.bool, device=x.device).tril(diagonal=past)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.residual_drop(self.proj(y))


class MLP(nn.Module):
    """Position-wise feed-forward as the study wrote it: Linear, exact GELU, dropout, Linear.

    The study's feed-forward drops its ``d_ff`` activations with ``residual_drop`` (``w2(dropout(
    gelu(w1(x))))``) and the block then drops the branch's output again, so there are two dropouts
    here: ``inner_drop`` before the second Linear and ``residual_drop`` after it. Neither has
    parameters, so checkpoints and the parameter count are unchanged.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.inner_drop = Dropout(cfg.residual_drop)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.residual_drop = Dropout(cfg.residual_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.residual_drop(self.proj(self.inner_drop(F.gelu(self.fc(x)))))


class Block(nn.Module):
    """Pre-LN block: LayerNorm before each sub-layer keeps gradients tame without warmup tricks."""

    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), cache)
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    """Decoder-only transformer language model."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = Dropout(cfg.embedding_drop)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The study's init: N(0, 0.02) for every weight matrix, zero biases (GPT-2 style).
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def hidden(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Final-LayerNorm states (B, T, d_model) for token ids ``idx`` (B, T).

        With a ``cache``, ``idx`` holds only the new tokens; their positions continue from
        ``cache.length``, and the cache is advanced past them.
        """
        B, T = idx.shape
        start = cache.length if cache is not None else 0
        if start + T > self.config.max_len:
            raise ValueError(
                f"positions {start}..{start + T - 1} exceed max_len {self.config.max_len}"
            )
        pos = torch.arange(start, start + T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x, cache)
        if cache is not None:
            cache.length += T
        return self.ln_f(x)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T)."""
        return self.head(self.hidden(idx, cache))


def flops_per_token(cfg: GPTConfig, context: int) -> float:
    """Training FLOPs per token: 6 per matmul weight plus attention (Kaplan et al. 2020, sec. 2.1)."""
    n = (
        cfg.n_layers * (4 * cfg.d_model**2 + 2 * cfg.d_model * cfg.d_ff)
        + cfg.d_model * cfg.vocab_size
    )
    return 6 * n + 6 * cfg.n_layers * context * cfg.d_model
