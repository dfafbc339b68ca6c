"""One step of decoding: pure functions on a (B, V) block of logits, easy to test on their own.

Repetition penalty, top-k, top-p (nucleus) and the draw; :func:`next_token` chains them as
:class:`~gpt_study.config.SampleConfig` asks. Nothing here knows about models or caches.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from gpt_study.config import SampleConfig

__all__ = [
    "apply_repetition_penalty",
    "candidates",
    "draw_nucleus",
    "draw_state",
    "next_token",
    "uniform",
    "RowGenerators",
]


class RowGenerators(list):
    """One seeded generator per row: row ``r`` of a batch draws from ``seed + r`` alone, so a
    sampled story is the one its prompt gets alone with that seed, whatever else is in the batch
    (a batch that starts at prompt ``i`` of many takes ``seed + i``: :meth:`SampleConfig.from_row
    <gpt_study.config.SampleConfig.from_row>`)."""


Generators = torch.Generator | RowGenerators | None  # shared, per row, or torch's own


def draw_state(
    sample: SampleConfig, seqs: Sequence[Sequence[int]], vocab_size: int, device: torch.device
) -> tuple[RowGenerators | None, torch.Tensor | None]:
    """What a decoding loop keeps between draws: the rows' seeded generators (None: greedy, or
    no seed) and the (B, V) 0/1 mask of the tokens each row holds, for the repetition penalty
    (None when it is off). Both loops start from here, so a seed gives them the same tokens."""
    generator = None
    if sample.seed is not None and not sample.greedy:
        generator = RowGenerators(
            torch.Generator(device=device).manual_seed(sample.seed + r) for r in range(len(seqs))
        )
    seen = None
    if sample.repetition_penalty != 1.0 and not sample.greedy:
        seen = torch.zeros(len(seqs), vocab_size, device=device)  # float: no conversion per token
        for i, s in enumerate(seqs):
            seen[i, torch.tensor(list(s), device=device, dtype=torch.long)] = 1.0
    return generator, seen


def uniform(
    n: int, generator: Generators, rows: Sequence[int] | None, device: torch.device
) -> torch.Tensor:
    """(n, 1) numbers in [0, 1), the only randomness of a draw: from each row's own generator
    (``rows``: which row of the batch each of the ``n`` is for), or from a shared one."""
    if isinstance(generator, RowGenerators):
        rows = range(n) if rows is None else rows
        return torch.cat([torch.rand(1, 1, generator=generator[r], device=device) for r in rows])
    return torch.rand(n, 1, generator=generator, device=device)


def apply_repetition_penalty(
    logits: torch.Tensor, seen: torch.Tensor, penalty: float
) -> torch.Tensor:
    """Make tokens already in the row less likely (Keskar et al. 2019, CTRL, sec. 4.1).

    ``logits`` (B, V); ``seen`` (B, V), 1 (or True) where the row holds the token. A seen
    token's logit is divided by ``penalty`` when positive and multiplied by it when negative, so
    it always moves down for ``penalty > 1``. Written as one factor per logit,
    ``1 + seen * (a * sign(logit) + b)``, which is ``1 / penalty`` or ``penalty`` on seen tokens
    and 1 elsewhere: float arithmetic only, several times cheaper on a CPU than comparisons
    and selects over the vocabulary at every token.
    """
    if penalty == 1.0:
        return logits
    a = (1.0 / penalty - penalty) / 2.0
    b = (1.0 / penalty + penalty) / 2.0 - 1.0
    held = seen.to(logits.dtype)  # (B, V), 0 or 1
    return logits * torch.sign(logits).mul_(a).add_(b).mul_(held).add_(1.0)


def candidates(
    logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tokens that top-k and then top-p allow: (weights (B, K), ids (B, K)), likeliest first.

    Top-k keeps the ``k`` likeliest; top-p (nucleus, Holtzman et al. 2020) then keeps the
    smallest set of likeliest tokens whose probability reaches ``p``, a tie at its edge whole
    (:func:`likelier_mass`; the likeliest always; the masking oracles in ``tests/oracles.py``
    define both sets). Ranked: with top-k, only the
    ``k`` likeliest are sorted; without it the whole vocabulary is (the slow, exact fallback of
    :func:`draw_nucleus`). Weights are probabilities, zero outside the set, and the set is a
    prefix of each row. ``None`` when neither filter is on.
    """
    V = logits.size(-1)
    if (top_k <= 0 or top_k >= V) and top_p >= 1.0:
        return None
    if 0 < top_k < V:
        vals, ids = torch.topk(logits, top_k, dim=-1)  # (B, k), descending
        probs = torch.softmax(vals, dim=-1)  # top-p then works on the renormalised top-k
    else:
        vals, ids = torch.sort(logits, dim=-1, descending=True)  # (B, V)
        probs = torch.softmax(vals, dim=-1)
    if top_p < 1.0:
        probs = probs.masked_fill(likelier_mass(vals, probs) >= top_p, 0.0)
    return probs, ids


def likelier_mass(vals: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    """(B, K): what the tokens strictly likelier than each hold, for ``vals`` (B, K) sorted
    descending and their ``probs``. The nucleus's one rule, which :func:`draw_nucleus` tests draw
    by draw: a token is in when this is below ``p``. Tied tokens hold the same mass, so a tie at
    the edge is kept whole, whatever order the sort left it in."""
    before = torch.cumsum(probs, dim=-1) - probs  # (B, K): the tokens ranked above each
    up = vals.neg().contiguous()  # (B, K), ascending
    first = torch.searchsorted(up, up)  # (B, K): where each one's tie group starts
    return before.gather(-1, first)


def draw_nucleus(
    logits: torch.Tensor,
    top_p: float,
    generator: Generators,
    tries: int = 16,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """One token per row of ``logits`` (B, V) from the top-``p`` nucleus, without sorting.

    Rejection sampling: draw from the whole softmax, keep the draw if the tokens likelier than
    it hold less than ``p`` (so it is in the nucleus), else draw again. The kept draws follow the
    nucleus renormalised, exactly the distribution of the nucleus filter then a draw (ties at
    the nucleus edge are all kept); each try succeeds with probability >= ``p``. A full sort
    costs far more than a few passes over the vocabulary on a CPU (``docs/generate.md``), and a
    near-uniform row (an untrained model) has a nucleus of most of the vocabulary. Rows still
    refused after ``tries`` draws (a tiny ``p``) take the sorted way. Returns (B,) ids.
    """
    rows = list(range(logits.size(0))) if rows is None else list(rows)
    probs = torch.softmax(logits, dim=-1)  # (B, V)
    cdf = torch.cumsum(probs, dim=-1)  # (B, V)
    tok, ok = _try_nucleus(probs, cdf, top_p, generator, rows)  # (B,), (B,)
    if bool(ok.all()):  # the usual case: every row drawn at the first try
        return tok
    out = tok.clone()  # rows drawn so far hold their draw; the others are overwritten
    todo = torch.arange(probs.size(0), device=probs.device)  # rows not yet drawn
    for _ in range(tries - 1):
        todo, probs, cdf = todo[~ok], probs[~ok], cdf[~ok]
        tok, ok = _try_nucleus(probs, cdf, top_p, generator, [rows[i] for i in todo.tolist()])
        out[todo[ok]] = tok[ok]
        if bool(ok.all()):
            return out
    todo = todo[~ok]
    if todo.numel():
        weights, ids = candidates(logits[todo], 0, top_p)  # type: ignore[misc]
        pick = _draw(weights, generator, [rows[i] for i in todo.tolist()])
        out[todo] = ids.gather(-1, pick)[:, 0]
    return out


def _try_nucleus(
    probs: torch.Tensor,
    cdf: torch.Tensor,
    top_p: float,
    generator: Generators,
    rows: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One draw per row from ``probs`` (n, V) by its ``cdf``, and whether it is in the nucleus:
    (ids (n,), ok (n,) bool).

    The draw compares a uniform number with the cdf unscaled: a softmax sums to 1 within
    rounding, and a draw past the end lands on the last token, which the nucleus test then
    refuses unless it belongs. In the nucleus means: the tokens likelier than the draw hold
    less than ``top_p``. One row (batch-1 decoding, every generated token) reads that mass
    with :func:`torch.nn.functional.threshold` on host scalars: four small operations instead of
    a dozen, which is most of the cost of a sampled token on a CPU. Several rows get it as the
    sum of ``(p - p_tok)`` over likelier tokens plus ``p_tok`` times their count.
    """
    n, V = probs.shape
    u = uniform(n, generator, rows, probs.device)  # (n, 1)
    tok = torch.searchsorted(cdf, u, right=True).clamp_(max=V - 1)  # (n, 1)
    if n == 1:
        row = probs[0]  # (V,)
        p_tok = float(row[int(tok)])
        ok = float(F.threshold(row, p_tok, 0.0).sum()) < top_p  # mass strictly above the draw
        return tok[:, 0], torch.tensor([ok], device=probs.device)
    p_tok = probs.gather(1, tok)  # (n, 1)
    over = (probs - p_tok).clamp_(min=0.0)  # (n, V)
    likelier = over.sum(-1) + p_tok[:, 0] * over.sign_().sum(-1)  # (n,)
    return tok[:, 0], likelier < top_p


def _draw(
    weights: torch.Tensor, generator: Generators, rows: Sequence[int] | None = None
) -> torch.Tensor:
    """One index per row of ``weights`` (B, K), drawn in proportion to them (inverse CDF).

    The non-zero weights must form a prefix of each row, as :func:`candidates` returns them (a
    whole softmax qualifies); several times cheaper than ``torch.multinomial`` on a CPU.
    """
    cdf = torch.cumsum(weights, dim=-1)  # (B, K)
    u = uniform(weights.size(0), generator, rows, weights.device)  # (B, 1)
    idx = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)  # first cdf > u * total
    last = (weights > 0).sum(-1, keepdim=True) - 1  # rounding can never pick past the set
    return torch.minimum(idx, last)  # (B, 1)


def next_token(
    logits: torch.Tensor,
    sample: SampleConfig,
    seen: torch.Tensor | None = None,
    generator: Generators = None,
    rows: Sequence[int] | None = None,
) -> torch.Tensor:
    """Pick one token per row from ``logits`` (B, V): greedy or sampled, per ``sample``.
    ``rows``: the batch rows these are, for :class:`RowGenerators` (default: 0 .. B-1).

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
    V = logits.size(-1)
    if sample.top_k <= 0 or sample.top_k >= V:
        if sample.top_p < 1.0:
            return draw_nucleus(logits, sample.top_p, generator, rows=rows)  # (B,)
        return _draw(torch.softmax(logits, dim=-1), generator, rows)[:, 0]  # (B,)
    weights, ids = candidates(logits, sample.top_k, sample.top_p)  # type: ignore[misc]  # (B, K)
    pick = _draw(weights, generator, rows)  # (B, 1), index into K
    return ids.gather(-1, pick).squeeze(-1)  # (B,)
