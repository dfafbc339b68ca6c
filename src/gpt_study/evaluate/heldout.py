"""One scorer of held-out text, used by training's validation and by ``gpt-study evaluate``.

Both cut a token stream into windows of ``window + 1`` tokens that overlap by one
(:func:`~gpt_study.data.dataset.eval_windows`), so each target is scored once with between 1 and
``window`` tokens of context, and add up the same sums: plain NLL (no smoothing, no
weights), correct next-token guesses, ``<unk>`` targets, and the study's training loss (label
smoothing, ``sp_weight``) with its weights. Bits per byte divides the NLL in bits by the UTF-8
bytes of the text the scored targets encode (:func:`bits_per_byte`); :func:`rates` turns the
summed NLL into every rate the project reports, for training, ``evaluate`` and the server alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gpt_study.config import EOT_ID, SOT_ID, UNK_ID
from gpt_study.data.dataset import eval_windows, iter_eval_batches
from gpt_study.model.loss import lm_loss_terms, target_nll
from gpt_study.runtime.device import autocast, to_device
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.progress import progress_bar


@dataclass
class Sums:
    """Sums over the scored targets (floats, so that ranks can all-reduce them)."""

    targets: float = 0.0
    nll: float = 0.0  # nats
    correct: float = 0.0  # targets with the top logit (a tie at the top counts)
    unk: float = 0.0
    nll_known: float = 0.0  # nats over the targets that are not <unk>
    loss: float = 0.0  # the study's loss, summed with its weights
    weight: float = 0.0  # the sum of those weights

    def as_list(self) -> list[float]:
        return [getattr(self, f.name) for f in fields(self)]

    @classmethod
    def from_list(cls, values: list[float]) -> Sums:
        return cls(*values)

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@torch.no_grad()
def scored_windows(
    model: torch.nn.Module,
    tokens: np.ndarray,
    window: int,
    batch_size: int = 16,
    max_rows: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    shard: tuple[int, int] = (0, 1),
    progress: bool | None = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Float32 logits (B, T, V) and targets (B, T) of each batch of held-out windows, in order.

    The one walk over held-out text: validation and ``evaluate`` sum it (:func:`score_tokens`),
    the study views read it token by token (:func:`gpt_study.evaluate.introspect.score_ids`), so a number
    on the page is the number in the table. Windows of ``window`` inputs overlap by one
    (:func:`~gpt_study.data.dataset.eval_windows`); ``shard = (rank, world)`` takes every
    world-th; ``max_rows`` > 0 spreads that many evenly over the stream. The model runs in eval
    mode under ``dtype`` autocast on the device of its weights.
    """
    if len(tokens) < 2:
        raise UserError("the split holds fewer than 2 tokens: prepare more text")
    device = str(next(model.parameters()).device)
    rank, world = shard
    windows = eval_windows(len(tokens), window, max_rows)[rank::world]
    batches: Any = iter_eval_batches(tokens, windows, batch_size)
    if progress is not False:
        total = math.ceil(len(windows) / batch_size)
        batches = progress_bar(
            progress, iterable=batches, total=total, desc="evaluate", unit="batch"
        )
    was_training = model.training
    model.eval()
    try:
        for x, y in batches:
            xb, yb = to_device(x, device), to_device(y, device)  # (B, T) each
            with autocast(device, dtype):
                logits = model(xb)  # (B, T, V)
            yield logits.float(), yb
    finally:
        model.train(was_training)


def score_tokens(
    model: torch.nn.Module,
    tokens: np.ndarray,
    window: int,
    *args: Any,
    label_smoothing: float = 0.0,
    sp_weight: float = 1.0,
    unk_id: int | None = UNK_ID,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
    by_position: torch.Tensor | None = None,
    **walk: Any,
) -> Sums:
    """The sums of :class:`Sums` over :func:`scored_windows` (``args`` and ``walk`` are its
    batch size, row cap, dtype, shard and progress), with the study's loss at
    ``label_smoothing`` and ``sp_weight`` beside the plain NLL. ``unk_id`` is the id counted as
    ``<unk>`` (None: a vocabulary without one, as a transformers model's may be) and
    ``special_ids`` those ``sp_weight`` weighs: the tokenizer's (``Tokenizer.unk_id``,
    ``Tokenizer.special_ids``). ``by_position``, a float64 (2, window) tensor, also gathers the
    NLL (row 0) and the targets (row 1) at each position of the window (:func:`context_bands`)."""
    sums = Sums()
    for logits, y in scored_windows(model, tokens, window, *args, **walk):
        nll = _add(sums, logits, y, label_smoothing, sp_weight, unk_id, special_ids)
        if by_position is not None:
            rows, width = y.shape
            by_position[0, :width] += nll.view(rows, width).sum(0).double().cpu()
            by_position[1, :width] += rows
    return sums


# Where the bands of :func:`context_bands` start: the tokens of context a target is scored with.
BAND_STARTS = (1, 9, 33, 65, 129, 257, 513, 1025, 2049, 4097)


def context_bands(by_position: torch.Tensor) -> list[dict[str, Any]]:
    """NLL per token by the context each target had (1-8 tokens, 9-32, 33-64, 65-128, ...), from
    :func:`score_tokens`' ``by_position``: the target at position p of its window is scored with
    p + 1 tokens. A window's first targets are the hardest to guess, and a longer window scores
    fewer of them; the bands show how much of a difference in NLL that is."""
    width = by_position.size(1)
    bands = []
    for lo, nxt in zip(BAND_STARTS, (*BAND_STARTS[1:], 1 << 62), strict=True):
        if lo > width:
            break
        hi = min(nxt - 1, width)
        nll, n = by_position[:, lo - 1 : hi].sum(1).tolist()
        bands.append({"context": f"{lo}-{hi}", "targets": int(n), "nll": nll / n if n else None})
    return bands


def roles(tokenizer: Any) -> dict[str, Any]:
    """:func:`score_tokens`'s ``unk_id`` and ``special_ids`` as ``tokenizer`` says them (0 and
    (1, 2) for gpt-study's own kinds, a published model's own ids for ``hf``)."""
    return {"unk_id": tokenizer.unk_id, "special_ids": tokenizer.special_ids}


def _add(
    sums: Sums,
    logits: torch.Tensor,
    y: torch.Tensor,
    smoothing: float,
    sp: float,
    unk_id: int | None = UNK_ID,
    special_ids: tuple[int, ...] = (SOT_ID, EOT_ID),
) -> torch.Tensor:
    """Add one batch to ``sums``; returns each target's NLL, (B*T,)."""
    flat = logits.flatten(0, 1)  # (B*T, V)
    targets = y.flatten()  # (B*T,)
    logp = F.log_softmax(flat, dim=-1)  # (B*T, V), once: the NLL and the study's loss read it
    nll = target_nll(logp, targets)  # (B*T,)
    known = targets != (-1 if unk_id is None else unk_id)
    loss, weight = lm_loss_terms(logp, targets, smoothing, sp, special_ids, log_probs=True)
    sums.targets += targets.numel()
    sums.nll += nll.sum().item()
    sums.nll_known += nll[known].sum().item()
    sums.unk += (~known).sum().item()
    # The target's logit is the row's largest: what argmax says but for ties, ten times cheaper.
    sums.correct += (flat.gather(1, targets[:, None]).squeeze(1) == flat.amax(-1)).sum().item()
    sums.loss += loss.item()
    sums.weight += weight.item()
    return nll


def scored_bytes(split_bytes: float, scored: float, total_targets: int) -> float:
    """Bytes of text the scored targets stand for: all of the split's, or the same share."""
    return split_bytes * scored / max(total_targets, 1)


def bits_per_byte(nll: float, n_bytes: float) -> float | None:
    """Total NLL in nats -> bits per UTF-8 byte (None without a byte count)."""
    return nll / math.log(2) / n_bytes if n_bytes else None


PPL_CAP_NLL = 700.0
"""Perplexity is ``exp(min(nll, PPL_CAP_NLL))``: above 700 nats per token (e^700 is about 1e304,
just under a float's largest) it stays at e^700 rather than overflow or become infinity, which
strict JSON (the server's answers) cannot carry. No model worth scoring comes near: a uniform
guess over 65,535 tokens is 11.1 nats."""


@dataclass(frozen=True)
class Rates:
    """Per-token and per-byte rates of a summed NLL; ``bpb`` is None without a byte count."""

    nll: float  # nats per token
    ppl: float  # exp(nll), capped at exp(PPL_CAP_NLL)
    bpb: float | None  # bits per UTF-8 byte


def rates(nll_sum: float, targets: float, n_bytes: float) -> Rates:
    """The one way from summed NLL (nats) over ``targets`` scored tokens, which encode
    ``n_bytes`` bytes of text, to NLL per token, perplexity and bits per byte."""
    nll = nll_sum / max(targets, 1)
    return Rates(nll, math.exp(min(nll, PPL_CAP_NLL)), bits_per_byte(nll_sum, n_bytes))
