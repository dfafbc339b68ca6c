"""Batch-1 decoding with as little as possible between the model's own forward passes.

One prompt is the common case (``gpt-study generate``, the serve page, the sample story after
each epoch). The general loop of :func:`~gpt_study.generate.decode.generate_ids` keeps per-row
lists and rebuilds its cache at every slide so that a batch of prompts can share it; for one row
that bookkeeping is all overhead. :class:`RowDecoder` keeps what is truly about batch 1: one
:class:`~gpt_study.model.KVCache` allocated once and reused across slides and calls, no per-row
lists. The math is the model's: every token goes through :meth:`gpt_study.model.GPT.hidden`
(norms, q/k norm, rotary positions, attention, the MLP's activation, whatever the options), so
any model that the general loop decodes, this loop decodes with the same logits.

It follows the window schedule of ``generate_ids`` exactly (prompt cut to the window; learned
positions re-encode the last ``keep`` tokens from position 0, rotary ones drop the oldest
positions from the cache) and draws with the same :func:`~gpt_study.generate.sampling.
next_token`, generator and repetition mask, so greedy or sampled with a seed, its tokens are
``generate_ids``' tokens; ``tests/test_decode_matrix.py`` checks that for every model option.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from gpt_study.config import EOT_ID, SampleConfig
from gpt_study.generate.sampling import draw_state, next_token
from gpt_study.generate.window import crop_prompt, keep_size, rotary, window_size
from gpt_study.model.cache import KVCache
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

__all__ = ["RowDecoder", "decode_row", "last_logits"]


def last_logits(model: torch.nn.Module, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) of the last position of ``idx`` (B, T) fed after ``cache``: the output layer
    runs for that position only. Both decoding loops step the model through here."""
    hidden, logits = getattr(model, "hidden", None), getattr(model, "logits", None)
    if hidden is not None and logits is not None:
        return logits(hidden(idx, cache)[:, -1])  # (B, d) -> (B, V)
    return model(idx, cache)[:, -1]


class RowDecoder:
    """One row's decoding state over ``model``: a cache for ``window`` positions, made once.

    ``prefill(ids)`` encodes ``ids`` from position 0, ``step(token)`` feeds one token at the next
    position, ``slide(seq, keep)`` makes room when the window is full. Each returns the (1, V)
    logits of the last position fed.
    """

    def __init__(self, model: GPT, window: int) -> None:
        self.model = model
        self.window = window
        self.cache = KVCache(model, 1, max_len=window)
        self.device = model.tok_emb.weight.device
        self.rotary = rotary(model)

    @property
    def length(self) -> int:
        """Positions held in the cache."""
        return self.cache.length

    def prefill(self, ids: Sequence[int]) -> torch.Tensor:
        """Start over: encode ``ids`` at positions 0 .. len(ids)-1."""
        self.cache.reset()
        return last_logits(self.model, torch.tensor([list(ids)], device=self.device), self.cache)

    def step(self, token: int) -> torch.Tensor:
        """Feed ``token`` at the next position."""
        return last_logits(self.model, torch.tensor([[token]], device=self.device), self.cache)

    def slide(self, seq: Sequence[int], keep: int) -> torch.Tensor:
        """The window is full and ``seq[-1]`` is the token to feed: keep the last ``keep``
        tokens of ``seq`` (re-encoded from position 0, or, for rotary positions, by dropping the
        oldest positions from the cache and feeding ``seq[-1]``)."""
        if self.rotary:
            self.cache.drop_oldest(self.window - keep + 1)
            return self.step(seq[-1])
        return self.prefill(seq[-keep:])

    def compile(self) -> None:
        """Compile :meth:`step` with ``torch.compile`` (dynamic shapes, so one graph serves every
        cache length); ``bench_generate.py --compile`` measures it, docs/generate.md has the
        figures."""
        self.step = torch.compile(self.step, dynamic=True)  # type: ignore[method-assign]


@torch.inference_mode()
def decode_row(
    model: GPT,
    prompt: Sequence[int],
    sample: SampleConfig,
    window: int | None = None,
    eot_id: int = EOT_ID,
    keep: int | None = None,
    on_token: Callable[[int], None] | None = None,
    decoder: RowDecoder | None = None,
    logits_out: list[torch.Tensor] | None = None,
) -> tuple[list[int], bool]:
    """Continue one prompt as ``generate_ids`` would: (new ids, whether ``<eot>`` ended it).

    ``on_token(id)`` sees each new token as soon as it is chosen; ``decoder`` reuses the cache
    (and a compiled step) of an earlier call; ``logits_out`` receives the (V,) float logits each
    new token was chosen from.
    """
    if not prompt:
        raise UserError("every prompt needs at least one token (an empty prompt is <sot>)")
    window = window_size(model, window)
    keep = keep_size(window, keep)
    seq = crop_prompt(prompt, window)
    generator, seen = draw_state(
        sample, [seq], model.config.vocab_size, model.tok_emb.weight.device
    )
    was_training = model.training
    model.eval()
    try:
        dec = decoder if decoder is not None else RowDecoder(model, window)
        if dec.model is not model or dec.window != window:
            raise ValueError("the decoder was made for another model or window")
        logits = dec.prefill(seq)  # (1, V)
        new: list[int] = []
        while True:
            tok = int(next_token(logits, sample, seen, generator)[0])
            seq.append(tok)
            new.append(tok)
            if logits_out is not None:
                logits_out.append(logits[0].float().cpu())
            if seen is not None:
                seen[0, tok] = 1.0
            if on_token is not None:
                on_token(tok)
            if tok == eot_id or len(new) >= sample.max_new_tokens:
                return new, tok == eot_id
            logits = dec.slide(seq, keep) if dec.length == window else dec.step(tok)
    finally:
        model.train(was_training)
