"""One step of decoding: pure functions on a (B, V) block of logits, easy to test on their own.

Repetition penalty, top-k, top-p (nucleus) and the draw; :func:`next_token` chains them as
:class:`~gpt_study.config.SampleConfig` asks. Nothing here knows about models or caches.
"""

from __future__ import annotations

import torch

from gpt_study.config import SampleConfig

__all__ = [
    "apply_repetition_penalty",
    "candidates",
    "filter_top_k",
    "filter_top_p",
    "next_token",
]


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make tokens already in the row less likely (Keskar et al. 2019, CTRL, sec. 4.1).

    ``logits`` (B, V), ``seen`` (B, V) bool. A seen token's logit is divided by ``penalty`` when
    positive and multiplied by it when negative, so it always moves down for ``penalty > 1``.
    """
    if penalty == 1.0:
        return logits
    penalised = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, penalised, logits)


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


def candidates(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tokens that top-k and then top-p allow: (weights (B, K), ids (B, K)), likeliest first.

    The same sets as :func:`filter_top_k` followed by :func:`filter_top_p`, without sorting the
    whole vocabulary: with top-p alone, the nucleus almost always lies among the 128 likeliest
    tokens, so only those are ranked; a row whose 128 likeliest hold less than ``p`` is sorted
    in full (the result is exact). Weights are probabilities, zero outside the set, and the set
    is a prefix of each row. ``None`` when neither filter is on.
    """
    V = logits.size(-1)
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0:
        return None
    if top_k > 0:
        vals, ids = torch.topk(logits, min(top_k, V), dim=-1)  # (B, k), descending
        probs = torch.softmax(vals, dim=-1)  # top-p then works on the renormalised top-k
    else:
        vals, ids = torch.topk(logits, min(V, 128), dim=-1)  # (B, 128), descending
        log_z = torch.logsumexp(logits, dim=-1, keepdim=True)  # (B, 1)
        probs = torch.exp(vals - log_z)
        wide = probs.sum(-1) < top_p  # (B,) rows whose nucleus is wider than 128 tokens
        if bool(wide.any()):
            full_vals, full_ids = torch.sort(logits[wide], dim=-1, descending=True)  # (W, V)
            pad = V - vals.size(1)
            ids = torch.nn.functional.pad(ids, (0, pad))  # (B, V); padding has weight 0
            probs = torch.nn.functional.pad(probs, (0, pad))
            ids[wide] = full_ids
            probs[wide] = torch.exp(full_vals - log_z[wide])
    if top_p < 1.0:
        before = torch.cumsum(probs, dim=-1) - probs
        probs = probs.masked_fill(before >= top_p, 0.0)
    return probs, ids


def _draw(weights: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One index per row of ``weights`` (B, K), drawn in proportion to them (inverse CDF).

    The non-zero weights must form a prefix of each row, as :func:`candidates` returns them;
    cheaper than ``torch.multinomial`` for a handful of tokens per row.
    """
    cdf = torch.cumsum(weights, dim=-1)  # (B, K)
    u = torch.rand(weights.size(0), 1, generator=generator, device=weights.device)  # (B, 1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first cdf > u * total
    last = (weights > 0).sum(-1, keepdim=True) - 1  # rounding can never pick past the set
    return torch.minimum(idx, last)  # (B, 1)


def next_token(
    logits: torch.Tensor,
    sample: SampleConfig,
    seen: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Pick one token per row from ``logits`` (B, V): greedy or sampled, per ``sample``.

    Greedy is the study's plain argmax and ignores every sampling setting, the repetition
    penalty included (``top_k=1`` gives an argmax that honours the penalty). Otherwise: repetition
    penalty, temperature, top-k, top-p, and a draw.
    """
    logits = logits.float()
    if sample.greedy:
        return logits.argmax(dim=-1)  # (B,)
    if seen is not None:
        logits = apply_repetition_penalty(logits, seen, sample.repetition_penalty)
    logits = logits / sample.temperature
    allowed = candidates(logits, sample.top_k, sample.top_p)
    if allowed is None:
        probs = torch.softmax(logits, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)
    weights, ids = allowed  # (B, K) each
    pick = _draw(weights, generator)  # (B, 1), index into K
    return ids.gather(-1, pick).squeeze(-1)  # (B,)
