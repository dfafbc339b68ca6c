"""The optimizer and the learning-rate schedule (a pure function of the step, so it needs no
saved state of its own)."""

from __future__ import annotations

import math
from typing import Any

import torch

from gpt_study.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based).

    ``constant`` (the study): ``--lr`` throughout, after an optional linear warmup.
    ``cosine``: linear warmup over ``--warmup_steps``, then a cosine from ``--lr`` down to
    ``--min_lr`` at the last step of ``--epoch x --iters_per_epoch`` (budgets such as
    ``--max_steps`` cut the run short but do not reshape the schedule, so a resumed run follows
    the same curve).
    """
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return cfg.lr
    total = cfg.epoch * cfg.iters_per_epoch
    span = max(1, total - cfg.warmup_steps)
    progress = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * progress))


def _decay(params: list[torch.nn.Parameter], cfg: TrainConfig) -> float:
    """Weight decay of a group: ``--weight_decay`` for weight matrices and embeddings (dim >= 2),
    and for the 1-D biases and LayerNorm parameters only with ``--decay_all`` (the study)."""
    return cfg.weight_decay if cfg.decay_all or all(p.dim() >= 2 for p in params) else 0.0


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig, device: str) -> torch.optim.AdamW:
    """AdamW with the study's settings, in two groups: weight matrices and embeddings, then the
    1-D biases and LayerNorm parameters.

    The study decays every parameter (``--decay_all``, the default); ``--no-decay_all`` leaves
    the second group undecayed (decaying a gain toward 0 only fights the normalisation). The two
    groups exist either way, so a checkpoint resumes under either setting. Fused kernels where
    available.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    split = [[p for p in params if p.dim() >= 2], [p for p in params if p.dim() < 2]]
    groups = [{"params": ps, "weight_decay": _decay(ps, cfg)} for ps in split]
    kw = dict(lr=cfg.lr, betas=tuple(cfg.lr_betas), eps=cfg.eps)
    if device.split(":")[0] in ("cuda", "cpu", "mps"):
        try:
            return torch.optim.AdamW(groups, fused=True, **kw)
        except (RuntimeError, TypeError):
            pass
    return torch.optim.AdamW(groups, **kw)


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, saved: dict[str, Any], cfg: TrainConfig
) -> None:
    """Restore a saved optimizer state; the config, not the checkpoint, sets hyperparameters
    (weight decay per group as :func:`make_optimizer` sets it)."""
    optimizer.load_state_dict(saved)
    for g in optimizer.param_groups:
        g.update(betas=tuple(cfg.lr_betas), eps=cfg.eps, weight_decay=_decay(g["params"], cfg))
