"""Plain oracles the tests hold the package's faster code to (imported as ``from oracles import``).

Each is written the direct way, with torch's own operations, and calls nothing from the code it
checks: ``filter_top_k`` and ``filter_top_p`` mask a whole (B, V) block of logits after a full
sort, the sets that ``gpt_study.generate.sampling.candidates`` ranks and ``draw_nucleus`` draws
from without sorting.
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

    The likeliest token is always kept, so the set is never empty.
    """
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)  # (B, V)
    probs = torch.softmax(sorted_logits, dim=-1)
    # Mass strictly before each token: a token stays while the ones above it hold < p.
    before = torch.cumsum(probs, dim=-1) - probs
    drop_sorted = before >= p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))
