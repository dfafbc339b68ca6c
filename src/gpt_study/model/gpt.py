"""The study's GPT: a pre-LayerNorm decoder-only transformer, read top to bottom.

Token ids in, logits out. This file knows nothing of devices, precision, distributed training or
logging; those are applied from outside (``train/``, ``generate/``).

Architecture (Radford et al. 2019, "Language Models are Unsupervised Multitask Learners", with
the pre-LN placement of Xiong et al. 2020): token + learned position embeddings, ``n_layers``
blocks of ``x + Attn(LN(x))`` then ``x + MLP(LN(x))`` (the MLP with a dropout inside, as the
study's), a final LayerNorm and an output Linear with bias (no weight tying, as in the study).
With the study's defaults and a 30,000-word vocabulary that is exactly 19,672,880 parameters.

Options to study (:class:`~gpt_study.config.model.GPTConfig`, each defaulting to the study's
choice): rotary positions instead of the learned table (Su et al. 2021), RMSNorm (Zhang and
Sennrich 2019), SwiGLU (Shazeer 2020) or squared-ReLU (So et al. 2021) feed-forwards, tied
embeddings (Press and Wolf 2017), biases off, RMS-normalised queries and keys (Henry et al.
2020; Dehghani et al. 2023), and two of modded-nanogpt's and nanochat's: per-layer residual
scalars and value embeddings (docs/options.md).

Attention and dropout come from :mod:`gpt_study.model.kernels`: PyTorch's fused
``scaled_dot_product_attention`` and ``nn.Dropout``, except for training with dropout on a CPU,
where ops draws cheaper masks (the same computation, tested against a plain oracle). RMSNorm
comes from :mod:`gpt_study.model.norms`: ``nn.RMSNorm`` with a hand-written backward for CPU
training in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gpt_study.config.model import GPTConfig
from gpt_study.model.cache import KVCache
from gpt_study.model.kernels import Dropout, causal_attention, plain_attention, split_heads
from gpt_study.model.norms import RMSNorm

__all__ = ["GPT", "GPTConfig", "NORM_EPS"]

NORM_EPS = 1e-5
"""The eps of every norm of the model (LayerNorm, RMSNorm, the q/k norms): GPT-2's and Llama 2's."""


def make_norm(cfg: GPTConfig, dim: int) -> nn.Module:
    """LayerNorm (the study's, eps 1e-5) or RMSNorm (no mean, no bias: one reduction fewer)."""
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=NORM_EPS)
    return nn.LayerNorm(dim, eps=NORM_EPS, bias=cfg.norm_bias)


def rope_tables(pos: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, ...]:
    """Rotary cos and sin (T, hs/2), float32, for absolute positions ``pos`` (T,).

    Pair ``(i, i + hs/2)`` turns by ``pos * base^(-2i/hs)``. Computed once per forward pass and
    shared by every layer (they all rotate at the same positions).
    """
    inv = base ** (-torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float32) / head_dim)
    angles = pos.to(torch.float32)[:, None] * inv[None, :]  # (T, hs/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, nh, T, hs) by the tables of :func:`rope_tables` (Su et al. 2021).

    The "rotate half" layout that Hugging Face's Llama uses, so ``q . k`` depends on the
    positions only through ``q - k``.
    """
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, nh, T, hs/2)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)  # (B, nh, T, hs)


def _after_past(T: int, past: int, device: torch.device) -> torch.Tensor:
    """(T, past+T) bool, True where a query may attend: query i sits at absolute position
    past + i and sees every key up to it."""
    return torch.ones(T, past + T, dtype=torch.bool, device=device).tril(past)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with a causal mask (Vaswani et al. 2017, sec. 3.2).

    The one attention of the package: training, every decoding loop, evaluation and the
    inspection views all run this module. With :attr:`keep_weights` set (the inspection path,
    :func:`gpt_study.evaluate.introspect.trace`) it runs the plain attention of
    :func:`~gpt_study.model.kernels.plain_attention` instead of the fused kernel and keeps the weights in
    :attr:`weights`; everything before and after (projections, qk-norm, rotary positions, the
    cache) is the same code.
    """

    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.layer = layer
        # q, k and v in one matmul: the same parameters as three d_model x d_model projections.
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model, bias=cfg.bias)
        self.q_norm = RMSNorm(cfg.head_dim, eps=NORM_EPS) if cfg.qk_norm else None
        self.k_norm = RMSNorm(cfg.head_dim, eps=NORM_EPS) if cfg.qk_norm else None
        self.attention_drop = cfg.attention_drop
        self.dropping = True  # False: no attention dropout in training either (GPT.use_dropout)
        self.residual_drop = Dropout(cfg.residual_drop)
        self.keep_weights = False
        self.weights: torch.Tensor | None = None  # (B, nh, T, past+T) when keep_weights is set

    def project(
        self,
        x: torch.Tensor,
        batch: int,
        rope: tuple[torch.Tensor, ...] | None,
        ve: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """Queries, keys and values (B, nh, T, hs) of ``x`` (B*T, C), with qk-norm and the
        rotary tables ``rope`` (cos, sin) applied, and the value embeddings ``ve`` (B*T, C) added
        to the values: what attention compares and mixes."""
        q, k, v = split_heads(self.qkv(x), batch, self.n_heads)  # 3 x (B, nh, T, hs)
        if ve is not None:
            v = v + ve.view(batch, -1, self.n_heads, v.size(-1)).transpose(1, 2).to(v.dtype)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def forward(
        self,
        x: torch.Tensor,
        batch: int,
        rope: tuple[torch.Tensor, ...] | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (B*T, C): the new positions of ``batch`` sequences, row by row; their keys and
        values join ``cache`` if given."""
        N, C = x.shape
        q, k, v = self.project(x, batch, rope, ve)
        past = 0
        if cache is not None:
            past = cache.length
            k, v = cache.append(self.layer, k, v)  # (B, nh, past+T, hs)
        y = self._attend(q, k, v, past, mask)  # (B, nh, T, hs)
        y = self.proj(y.transpose(1, 2).reshape(N, C))  # (B, nh, T, hs) -> (B*T, C)
        # Dropout modules are called only in training: in evaluation and decoding they would
        # return their input, and a module call per sub-layer is a cost per generated token.
        return self.residual_drop(y) if self.training else y

    def _attend(self, q, k, v, past: int, mask: torch.Tensor | None) -> torch.Tensor:
        """Attention of the T new queries over the past + T keys; (B, nh, T, hs)."""
        T = q.size(2)
        if self.keep_weights:
            if mask is None:
                mask = _after_past(T, past, q.device)
            y, self.weights = plain_attention(q, k, v, mask)
            return y
        drop = self.attention_drop if self.training and self.dropping else 0.0
        if mask is not None:
            # An explicit (T, past+T) mask: the uncached oracle of a slid rotary cache.
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        if past == 0:
            # Plain causal attention over the T new positions (training and prompts).
            return causal_attention(q, k, v, dropout_p=drop)
        if T == 1:
            # One new token may attend to every stored position: no mask needed.
            return F.scaled_dot_product_attention(q, k, v, dropout_p=drop)
        # Several new tokens after a past: is_causal would align the mask top-left, which is
        # wrong when Tq != Tk.
        mask = _after_past(T, past, q.device)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)


class MLP(nn.Module):
    """Position-wise feed-forward as the study wrote it: Linear, exact GELU, dropout, Linear.

    The study's feed-forward drops its ``d_ff`` activations with ``residual_drop`` (``w2(dropout(
    gelu(w1(x))))``) and the block then drops the branch's output again, so there are two dropouts
    here: ``inner_drop`` before the second Linear (``cfg.inner_dropout``: GPT-2's and nanoGPT's
    feed-forward have none) and ``residual_drop`` after it. Neither has parameters, so
    checkpoints and the parameter count are unchanged. ``swiglu`` computes the
    gate and the value in one matmul of width ``2 * d_ff``; ``relu2`` squares a ReLU;
    ``gelu_tanh`` is GELU's tanh approximation (GPT-2's ``gelu_new``, so published GPT-2 models
    import exactly).
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.kind = cfg.mlp
        width = 2 * cfg.d_ff if cfg.mlp == "swiglu" else cfg.d_ff
        self.fc = nn.Linear(cfg.d_model, width, bias=cfg.bias)
        self.inner_drop = Dropout(cfg.inner_dropout)
        self.proj = nn.Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)
        self.residual_drop = Dropout(cfg.residual_drop)

    def act(self, h: torch.Tensor) -> torch.Tensor:
        """The nonlinearity on ``fc``'s output: (B, T, d_ff or 2 d_ff) -> (B, T, d_ff)."""
        if self.kind == "swiglu":
            gate, value = h.chunk(2, dim=-1)  # 2 x (B, T, d_ff)
            return F.silu(gate) * value
        if self.kind == "relu2":
            return F.relu(h).square()
        if self.kind == "gelu_tanh":
            return F.gelu(h, approximate="tanh")
        return F.gelu(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc(x))  # (..., d_ff)
        if not self.training:  # no dropout module calls when they would do nothing
            return self.proj(h)
        return self.residual_drop(self.proj(self.inner_drop(h)))


class Block(nn.Module):
    """Pre-LN block: LayerNorm before each sub-layer keeps gradients tame without warmup tricks."""

    def __init__(self, cfg: GPTConfig, layer: int) -> None:
        super().__init__()
        self.ln1 = make_norm(cfg, cfg.d_model)
        self.attn = CausalSelfAttention(cfg, layer)
        self.ln2 = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        batch: int,
        rope: tuple[torch.Tensor, ...] | None = None,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        ve: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``x`` (B*T, C), the residual stream of ``batch`` sequences, row by row; ``ve`` (B*T,
        C) the block's value embeddings of their tokens, if it has them."""
        x = x + self.attn(self.ln1(x), batch, rope, cache, mask, ve)
        return x + self.mlp(self.ln2(x))


def softcap(z: torch.Tensor, cap: float) -> torch.Tensor:
    """``cap * tanh(z / cap)`` (``--logit_softcap``; Gemma 2, modded-nanogpt): smooth, the
    identity near 0, never beyond +-cap. ``cap`` 0: ``z`` unchanged."""
    return cap * torch.tanh(z / cap) if cap else z


class GPT(nn.Module):
    """Decoder-only transformer language model."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        # The input positions the weights were trained on, where known: loading a checkpoint and
        # training set it; decoding and scoring default to it (gpt_study.generate.window).
        self.trained_window: int | None = None
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = (
            nn.Embedding(cfg.max_len, cfg.d_model) if cfg.positions == "learned" else None
        )
        self.drop = Dropout(cfg.embedding_drop)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.ln_f = make_norm(cfg, cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=cfg.head_bias)
        self.apply(self._init_weights)
        if cfg.zero_init:  # each branch adds nothing at first (modded-nanogpt's speedruns)
            for block in self.blocks:
                nn.init.zeros_(block.attn.proj.weight)
                nn.init.zeros_(block.mlp.proj.weight)
        if cfg.tie_embeddings:
            self.head.weight = self.tok_emb.weight  # one matrix, read both ways
        # --value_embeds: a token table of its own for each of cfg.value_embed_layers
        self.value_embeds = nn.ModuleDict(
            {str(i): nn.Embedding(cfg.vocab_size, cfg.d_model) for i in cfg.value_embed_layers}
        )
        # --residual_scalars: block i reads resid_scale[i] x + x0_scale[i] x0 (x0: the embeddings),
        # from 1 and 0, so a new model computes what it would without them.
        self.resid_scale = self.x0_scale = None
        if cfg.residual_scalars:
            self.resid_scale = nn.Parameter(torch.ones(cfg.n_layers))
            self.x0_scale = nn.Parameter(torch.zeros(cfg.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        # The study's init: N(0, 0.02) for every weight matrix, zero biases (GPT-2 style).
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def use_dropout(self, on: bool) -> None:
        """Every dropout of the model at its configured rate (on) or off, in training too:
        ``--dropout_from`` trains the first steps without any. No weights change."""
        for m in self.modules():
            if isinstance(m, Dropout):
                m.switch(on)
            elif isinstance(m, CausalSelfAttention):
                m.dropping = on

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # a tied matrix counts once

    def own_weights(self) -> dict[str, torch.Tensor]:
        """The state dict with each tensor once: a tied output layer is the embedding read
        backwards, stored (checkpoint, export) under the embedding's name only."""
        weights = self.state_dict()
        if self.config.tie_embeddings:
            weights.pop("head.weight")
        return weights

    def load_own_weights(self, weights: dict[str, torch.Tensor]) -> tuple[list[str], list[str]]:
        """Load :meth:`own_weights`-style ``weights``; the (missing, unexpected) names, a tied
        output layer not counted missing (loading the embedding ties it again)."""
        missing, unexpected = self.load_state_dict(weights, strict=False)
        tied = self.config.tie_embeddings
        return [k for k in missing if not (tied and k == "head.weight")], list(unexpected)

    def hidden(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
        residuals: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Final-norm states (B, T, d_model) for token ids ``idx`` (B, T).

        The one forward pass: training, evaluation, every decoding loop and inspection call it.
        With a ``cache``, ``idx`` holds only the new tokens; their positions continue from
        ``cache.position``, and the cache is advanced past them. ``mask`` (T, T, True where a
        query may attend) replaces the causal mask: only the uncached oracle of a slid rotary
        cache passes one. ``residuals``, if given, receives the residual stream (B, T, C) after
        the embeddings and after each block: the logit lens reads it.
        """
        B, T = idx.shape
        start = cache.position if cache is not None else 0
        x = self.tok_emb(idx)  # (B, T, C)
        rope = None
        if self.pos_emb is not None:
            if start + T > self.config.max_len:
                raise ValueError(
                    f"positions {start}..{start + T - 1} exceed max_len {self.config.max_len}"
                )
            x = x + self.pos_emb.weight[start : start + T]  # rows start.. of the table: (T, C)
        else:
            pos = torch.arange(start, start + T, device=idx.device)  # (T,)
            rope = rope_tables(pos, self.config.head_dim, self.config.rope_base)
        if self.training:
            x = self.drop(x)
        # The residual stream as B*T rows: every Linear and norm then runs on a 2-D input, which
        # spares two reshapes per layer and per call (a cost per generated token).
        C = x.size(-1)
        x = x.view(B * T, C)  # (B, T, C) -> (B*T, C)
        if residuals is not None:
            residuals.append(x.view(B, T, C))
        x0 = x  # (B*T, C): the embeddings, which --residual_scalars mixes into each block's input
        for i, block in enumerate(self.blocks):
            if self.resid_scale is not None and self.x0_scale is not None:
                x = self.resid_scale[i] * x + self.x0_scale[i] * x0
            table = self.value_embeds[str(i)] if str(i) in self.value_embeds else None
            ve = None if table is None else table(idx).view(B * T, C)  # (B, T, C) -> (B*T, C)
            x = block(x, B, rope, cache, mask, ve)
            if residuals is not None:
                residuals.append(x.view(B, T, C))
        if cache is not None:
            cache.length += T
        return self.ln_f(x).view(B, T, C)  # (B*T, C) -> (B, T, C)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        """Logits (..., vocab_size) from final-norm states ``h`` (..., d_model): the output layer,
        then ``--logit_softcap``. Every path that makes logits calls this (the forward, the
        lens, the decoders, a capped model's loss), so the cap holds where the head is swapped
        (int8 weights)."""
        return softcap(self.head(h), self.config.logit_softcap)

    @property
    def logits_are_the_head(self) -> bool:
        """Whether :meth:`logits` is ``head`` alone, so that training's chunked head and loss
        (:func:`~gpt_study.model.loss.head_loss`) may stand for it: a step added to ``logits``
        must say so here, or it would change every path but training."""
        return not self.config.logit_softcap

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits (B, T, vocab_size) for token ids ``idx`` (B, T)."""
        return self.logits(self.hidden(idx, cache, mask))


def flops_per_token(cfg: GPTConfig, context: int) -> float:
    """Training FLOPs per token: 6 per matmul weight (the head's included, tied or not) plus the
    attention's two products over the causal half of the scores (Kaplan et al. 2020, sec. 2.1;
    a count of the whole square, as nanoGPT's and PaLM's, is twice this term)."""
    mlp_matrices = 3 if cfg.mlp == "swiglu" else 2
    n = (
        cfg.n_layers * (4 * cfg.d_model**2 + mlp_matrices * cfg.d_model * cfg.d_ff)
        + cfg.d_model * cfg.vocab_size
    )
    return 6 * n + 6 * cfg.n_layers * context * cfg.d_model
