"""The straightforward reference the training benchmark compares against.

This is the study's model written the way the study wrote it: fp32, separate q/k/v
projections, attention as an explicit masked softmax, and the plain cross-entropy with label
smoothing on the full fp32 logits. It has exactly the parameters of :class:`gpt_study.model.GPT`
(19,672,880 at a 30,000-word vocabulary) and :func:`copy_from` loads a GPT's weights into it, so
the benchmark can check that both compute the same loss before it times them.

It lives in ``benchmarks/`` because it is a yardstick, not a second production model.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from gpt_study.config import GPTConfig


class ReferenceAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.q = nn.Linear(cfg.d_model, cfg.d_model)
        self.k = nn.Linear(cfg.d_model, cfg.d_model)
        self.v = nn.Linear(cfg.d_model, cfg.d_model)
        self.proj = nn.Linear(cfg.d_model, cfg.d_model)
        self.attention_drop = nn.Dropout(cfg.attention_drop)
        self.residual_drop = nn.Dropout(cfg.residual_drop)
        mask = torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool).tril()
        self.register_buffer("mask", mask, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_heads
        q = self.q(x).view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = self.k(x).view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        v = self.v(x).view(B, T, self.n_heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        att = q @ k.transpose(-2, -1) / math.sqrt(hs)  # (B, nh, T, T)
        att = att.masked_fill(~self.mask[:T, :T], float("-inf"))
        att = self.attention_drop(F.softmax(att, dim=-1))
        y = att @ v  # (B, nh, T, hs)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, T, C)
        return self.residual_drop(self.proj(y))


class ReferenceBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = ReferenceAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.fc = nn.Linear(cfg.d_model, cfg.d_ff)
        self.fc_proj = nn.Linear(cfg.d_ff, cfg.d_model)
        self.ff_drop = nn.Dropout(cfg.residual_drop)  # the study's dropout inside the ff
        self.residual_drop = nn.Dropout(cfg.residual_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        ff = self.fc_proj(self.ff_drop(F.gelu(self.fc(self.ln2(x)))))  # w2(dropout(gelu(w1(x))))
        return x + self.residual_drop(ff)


class ReferenceGPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.config = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.embedding_drop)
        self.blocks = nn.ModuleList(ReferenceBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, cfg.vocab_size)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
            if isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)  # (T,)
        x = self.drop(self.tok_emb(idx) + self.pos_emb(pos))  # (B, T, C)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))  # (B, T, V)


def reference_loss(
    logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float
) -> torch.Tensor:
    """The study's loss: cross-entropy with label smoothing over the full fp32 logits."""
    return F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), label_smoothing=label_smoothing
    )


@torch.no_grad()
def copy_from(ref: ReferenceGPT, gpt: nn.Module) -> None:
    """Load a :class:`gpt_study.model.GPT`'s weights into ``ref`` (qkv split into q, k, v)."""
    C = ref.config.d_model
    for name in ("tok_emb", "pos_emb", "ln_f", "head"):
        getattr(ref, name).load_state_dict(getattr(gpt, name).state_dict())
    for rb, gb in zip(ref.blocks, gpt.blocks, strict=True):
        rb.ln1.load_state_dict(gb.ln1.state_dict())
        rb.ln2.load_state_dict(gb.ln2.state_dict())
        rb.attn.proj.load_state_dict(gb.attn.proj.state_dict())
        rb.fc.load_state_dict(gb.mlp.fc.state_dict())
        rb.fc_proj.load_state_dict(gb.mlp.proj.state_dict())
        for i, lin in enumerate((rb.attn.q, rb.attn.k, rb.attn.v)):
            lin.weight.copy_(gb.attn.qkv.weight[i * C : (i + 1) * C])
            lin.bias.copy_(gb.attn.qkv.bias[i * C : (i + 1) * C])


class _NanoAttention(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_heads, self.p = cfg.n_heads, cfg.attention_drop
        self.c_attn = nn.Linear(cfg.d_model, 3 * cfg.d_model, bias=False)  # q, k, v in one
        self.c_proj = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        self.resid_drop = nn.Dropout(cfg.residual_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_heads, C // self.n_heads).transpose(1, 2) for t in (q, k, v))
        p = self.p if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)  # (B, nh, T, hs)
        return self.resid_drop(self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C)))


class _NanoBlock(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        C = cfg.d_model
        self.ln_1, self.ln_2 = nn.LayerNorm(C, bias=False), nn.LayerNorm(C, bias=False)
        self.attn = _NanoAttention(cfg)
        self.c_fc = nn.Linear(C, cfg.d_ff, bias=False)
        self.c_proj = nn.Linear(cfg.d_ff, C, bias=False)
        self.drop = nn.Dropout(cfg.residual_drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x))
        return x + self.drop(self.c_proj(F.gelu(self.c_fc(self.ln_2(x)))))


class NanoStyleGPT(nn.Module):
    """A GPT-2-style model laid out as nanoGPT lays it out, with ``bias=False``: learned positions,
    one fused q/k/v Linear per block, causal ``scaled_dot_product_attention`` with dropout,
    LayerNorms without bias, a GELU MLP, dropout on the embeddings and both residual branches,
    the output layer tied to the token embedding, weights drawn from N(0, 0.02) with the residual
    projections scaled by 1/sqrt(2 n_layers), and plain cross-entropy on the full logits.

    Written here from that description (no nanoGPT code is copied) as the yardstick for
    ``bench_train.py --preset peer``. On a CPU nanoGPT's train.py runs it in fp32 (no autocast,
    no compile) with :func:`nano_adamw` and clips the gradients' norm at 1.0.
    """

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.wpe = nn.Embedding(cfg.max_len, cfg.d_model)
        self.drop = nn.Dropout(cfg.embedding_drop)
        self.h = nn.ModuleList(_NanoBlock(cfg) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model, bias=False)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # tied
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, mean=0.0, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        pos = torch.arange(idx.size(1), device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))  # (B, T, V), fp32
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def nano_adamw(model: nn.Module) -> torch.optim.AdamW:
    """nanoGPT's optimizer on a CPU: AdamW, matrices and embeddings decayed (0.1), the rest not.
    It asks for the fused kernel on CUDA only; on a CPU torch's defaults leave ``foreach`` at
    None, which resolves to the single-tensor loop for CPU tensors."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.1},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=6e-4, betas=(0.9, 0.95), fused=False)
