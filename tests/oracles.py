"""Plain oracles the tests hold the package's faster code to (imported as ``from oracles import``).

Each is written the direct way, with torch's own operations, and calls nothing from the code it
checks: ``filter_top_k`` and ``filter_top_p`` mask a whole (B, V) block of logits, the sets that
``gpt_study.generate.sampling.candidates`` ranks and ``draw_nucleus`` draws from without sorting.
"""

from __future__ import annotations

import torch


def filter_top_k(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (B, V); the rest become -inf. ``k <= 0``: off."""
    if k <= 0 or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[:, -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def filter_top_p(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter (Holtzman et al. 2020): keep the smallest set of likeliest tokens whose
    probability reaches ``p``; the rest become -inf. ``p >= 1``: off.

    Written token by token, without a sort: a token stays while the tokens strictly likelier than
    it hold less than ``p``. So the likeliest is always kept, and tied tokens share one fate.
    """
    if p >= 1.0:
        return logits
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    drop = torch.zeros_like(logits, dtype=torch.bool)
    for b in range(logits.size(0)):  # one (V, V) comparison per row
        likelier = logits[b][None, :] > logits[b][:, None]  # [i, j]: j is likelier than i
        drop[b] = (likelier * probs[b][None, :]).sum(-1) >= p
    return logits.masked_fill(drop, float("-inf"))
