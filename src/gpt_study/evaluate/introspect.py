"""Looking inside a model: per-token probabilities, attention weights and the logit lens.

The model's forward pass (:mod:`gpt_study.model.gpt`) runs PyTorch's fused attention, which never
materialises the attention weights; that is what keeps training and generation fast. The study
views need the weights, so :func:`trace` runs the same forward pass with each attention module
asked for them (its ``keep_weights`` flag: the plain formula ``softmax(q k^T / sqrt(d)) v`` in
place of the fused kernel, everything else the module's own code), and reads the residual stream
that the forward pass hands out for the logit lens (as TransformerLens's hook points do). So
every model option is seen exactly as the model computes it. ``tests/test_introspect.py`` checks
that its logits equal ``model(ids)`` and its weights equal an oracle computed directly.

Also here, on top of the fused path since they need no weights:

* :func:`score_ids`: the probability the model gave each token of a text and its likeliest
  alternatives, scored in the windows validation uses (each token predicted once, with between
  1 and ``window`` tokens of context), so numbers agree with ``gpt-study evaluate``.
* :func:`text_ids`: a pasted text encoded as ``prepare`` encodes stories (``<sot> ... <eot>``
  per story, stories split on ``<|endoftext|>`` lines) and the UTF-8 bytes bits per byte divides
  by (:func:`gpt_study.evaluate.heldout.bits_per_byte`).
* :func:`pieces` (from :mod:`gpt_study.generate.text`, where streamed text is made too): the
  text each token adds, so a view can show tokens as the tokenizer split them and still read as
  the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from gpt_study.data.clean import clean_text
from gpt_study.data.sources import END_OF_TEXT
from gpt_study.data.text import text_bytes
from gpt_study.data.tokenizer.base import join_stories
from gpt_study.evaluate.heldout import scored_windows
from gpt_study.generate.text import PieceReader, pieces
from gpt_study.model.gpt import GPT
from gpt_study.model.loss import target_nll

__all__ = [
    "PieceReader",
    "Scores",
    "Trace",
    "ids_bytes",
    "pieces",
    "query_window",
    "score_ids",
    "text_ids",
    "trace",
]


@dataclass
class Trace:
    """One window run step by step.

    ``logits`` (T, V) as ``model(ids)`` gives them; ``attention`` (L, nh, T, T), row ``i`` the
    weights query ``i`` gives keys ``0..i`` (zero above the diagonal); ``lens`` (L + 1, T, V) the
    logits each layer's residual stream would give through the final LayerNorm and the head
    (row 0: the embeddings, row L: the model's own output).
    """

    logits: torch.Tensor
    attention: torch.Tensor
    lens: torch.Tensor


@torch.inference_mode()
def trace(model: GPT, ids: Sequence[int]) -> Trace:
    """Run ``ids`` (from position 0) keeping attention and the lens.

    The model's own forward pass (:meth:`gpt_study.model.GPT.hidden`), with each attention module
    asked to keep its weights (``keep_weights``: the plain formula instead of the fused kernel,
    the same projections, norms and positions) and the residual stream collected after every
    block; no dropout, as in evaluation, whatever mode the model is in.
    """
    T = len(ids)
    if T < 1:
        raise ValueError("trace takes at least one token")
    # How many positions the model has is the forward pass's own rule (learned positions end at
    # max_len, rotary ones go on, as generate and score_ids let them): not repeated here.
    device = next(model.parameters()).device
    idx = torch.tensor([list(ids)], device=device)  # (1, T)
    attns = [block.attn for block in model.blocks]
    was_training = model.training
    model.eval()
    residuals: list[torch.Tensor] = []
    try:
        for a in attns:
            a.keep_weights = True
        model.hidden(idx, residuals=residuals)
        weights = [a.weights[0] for a in attns]  # type: ignore[index]  # (nh, T, T) each
    finally:
        for a in attns:
            a.keep_weights, a.weights = False, None
        model.train(was_training)
    lens = model.logits(model.ln_f(torch.cat(residuals)))  # (L + 1, T, V)
    return Trace(logits=lens[-1], attention=torch.stack(weights), lens=lens)


def query_window(position: int, window: int) -> int:
    """First token of the window in which token ``position`` is read as an input.

    The windows of :func:`score_ids` (consecutive, ``window`` inputs each), so attention
    shown for a token is the attention that scored the token after it.
    """
    return (position // window) * window


@dataclass
class Scores:
    """Per token of a text: the NLL (nats) and probability the model gave it, and its top ids.

    Index ``i`` is about token ``i + 1`` (the first token is context, never a target):
    ``nll`` (T-1,), ``prob`` (T-1,), ``top_ids`` / ``top_probs`` (T-1, k), likeliest first.
    """

    nll: torch.Tensor
    prob: torch.Tensor
    top_ids: torch.Tensor
    top_probs: torch.Tensor


@torch.inference_mode()
def score_ids(model: GPT, ids: Sequence[int], window: int, top_k: int = 5) -> Scores:
    """Score every token of ``ids`` after the first, in validation's windows: the walk of
    :func:`gpt_study.evaluate.heldout.scored_windows`, read token by token."""
    if len(ids) < 2:
        raise ValueError("scoring needs at least 2 tokens")
    k = max(1, min(top_k, model.config.vocab_size))
    parts: list[tuple[torch.Tensor, ...]] = []
    for logits, y in scored_windows(model, np.asarray(list(ids), dtype=np.int64), window):
        logp = F.log_softmax(logits.flatten(0, 1), dim=-1)  # (B*T, V), windows in order
        nll = target_nll(logp, y.reshape(-1))  # (B*T,)
        top = logp.topk(k, dim=-1)
        parts.append((nll, top.indices, top.values.exp()))
    nll = torch.cat([p[0] for p in parts]).cpu()
    return Scores(
        nll=nll,
        prob=torch.exp(-nll),
        top_ids=torch.cat([p[1] for p in parts]).cpu(),
        top_probs=torch.cat([p[2] for p in parts]).cpu(),
    )


def text_ids(tokenizer, text: str) -> tuple[list[int], int, int]:
    """Ids of a pasted text as ``prepare`` stores stories, its UTF-8 bytes and its story count.

    Stories are split on ``<|endoftext|>`` (the raw TinyStories layout); each is cleaned as
    training text was and stored ``<sot> ... <eot>``, so the ``<eot>`` tokens the study asks
    about are scored too. The byte count is that of the cleaned stories, as ``prepare`` counts.
    """
    ids: list[int] = []
    n_bytes = stories = 0
    for story in text.split(END_OF_TEXT):
        clean = clean_text(story, tokenizer.lowercase)
        if not clean:
            continue
        ids += tokenizer.encode(clean, sot=True, eot=True)
        n_bytes += text_bytes([clean])
        stories += 1
    return (
        join_stories(np.array(ids, dtype=np.int64), tokenizer.shared_marker).tolist(),
        n_bytes,
        stories,
    )


def ids_bytes(tokenizer, ids: Sequence[int]) -> int | None:
    """UTF-8 bytes of the stories ``ids`` spell (the text between specials, decoded), where the
    tokenizer decodes to exactly the text it encoded; None otherwise (the word tokenizer writes
    ``could n't`` back as ``couldn't`` and every rare word as ``<unk>``), so that the same story
    has one bits per byte whether it comes as text or as ids."""
    if not tokenizer.lossless:
        return None
    stories, run = [], []
    for i in list(ids) + [tokenizer.eot_id]:
        if i in (tokenizer.sot_id, tokenizer.eot_id):
            if run:
                stories.append(tokenizer.decode(run, skip_specials=False))
            run = []
        else:
            run.append(i)
    return text_bytes(stories)
