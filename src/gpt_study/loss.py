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
    per_token = F.cross_entropy(
        flat_logits, flat_targets, label_smoothing=label_smoothing, reduction="none"
    )
    special = torch.zeros_like(flat_targets, dtype=torch.bool)
    for i in special_ids:
        special |= flat_targets == i
    w = torch.where(special, sp_weight, 1.0).to(per_token.dtype)
    return (per_token * w).sum() / w.sum()


def nll_sum(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Summed negative log-likelihood in nats (no smoothing, no weights) over all targets."""
    V = logits.size(-1)
    return F.cross_entropy(logits.reshape(-1, V).float(), targets.reshape(-1), reduction="sum")
