"""The decoding loop on token ids and the uncached oracle.

:func:`generate_ids` keeps keys and values in a :class:`~gpt_study.model.KVCache` and slides
the window as the package docstring explains (the schedule is in
:mod:`~gpt_study.generate.window`, where :func:`segment_start` writes it out so that
:func:`reference_generate`, the study's way, the test oracle and benchmark baseline, can follow
it exactly). One greedy prompt goes to :mod:`~gpt_study.generate.decode_fast`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from gpt_study.config import EOT_ID, SampleConfig
from gpt_study.generate.decode_fast import decode_row, last_logits
from gpt_study.generate.sampling import RowGenerators, draw_state, next_token
from gpt_study.generate.window import (
    SLIDE_KEEP,
    crop_prompt,
    keep_size,
    rotary,
    segment_start,
    segment_starts,
    window_size,
)
from gpt_study.model.cache import KVCache
from gpt_study.model.gpt import GPT
from gpt_study.runtime.errors import UserError

__all__ = [
    "SLIDE_KEEP",
    "generate_ids",
    "reference_logits",
    "reference_generate",
    "segment_start",
]


@dataclass
class _Ids:
    """What :func:`generate_ids` returns: per row, the new ids and whether ``<eot>`` ended it."""

    new_ids: list[list[int]]
    finished: list[bool]
    logits: list[list[torch.Tensor]] | None = None  # per row, the (V,) logits of each new token


@dataclass
class _Loop:
    """The bookkeeping of one :func:`generate_ids` call, per row (prompt order) and per cache."""

    seqs: list[list[int]]  # (B, L_i): prompt (cut to the window), then the new tokens
    device: torch.device
    generator: RowGenerators | None  # each row's own
    seen: torch.Tensor | None  # (B, V) 0/1, the tokens each row holds, for the penalty
    new: list[list[int]]
    done: list[bool]
    finished: list[bool]
    kept_logits: list[list[torch.Tensor]] | None
    active: list[int]  # rows held in the cache, in cache order
    cache: KVCache | None = None
    start: int = 0  # absolute index of the token at cache position 0 (shared by all rows)
    pos: int = 0  # tokens fed so far


def _setup(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    sample: SampleConfig,
    window: int,
    return_logits: bool,
) -> _Loop:
    """Check the prompts, cut them to the window, seed the draw and mark the tokens seen."""
    if not prompts or any(len(p) == 0 for p in prompts):
        raise UserError("every prompt needs at least one token (an empty prompt is <sot>)")
    seqs = [crop_prompt(p, window) for p in prompts]  # (B, L_i), L_i <= window
    B = len(seqs)
    device = next(model.parameters()).device
    generator, seen = draw_state(sample, seqs, model.config.vocab_size, device)
    return _Loop(
        seqs=seqs,
        device=device,
        generator=generator,
        seen=seen,
        new=[[] for _ in range(B)],
        done=[False] * B,
        finished=[False] * B,
        kept_logits=[[] for _ in range(B)] if return_logits else None,
        active=list(range(B)),
    )


def _prefill(model: torch.nn.Module, st: _Loop, window: int) -> torch.Tensor:
    """Feed every row the prompt tokens all rows have, in one pass; logits (B, V) of the last."""
    st.pos = min(len(s) for s in st.seqs)
    st.cache = KVCache(model, len(st.seqs), max_len=window)
    idx = torch.tensor([s[: st.pos] for s in st.seqs], device=st.device)  # (B, pos)
    return last_logits(model, idx, st.cache)  # (B, V)


def _choose(
    logits: torch.Tensor,
    st: _Loop,
    sample: SampleConfig,
    eot_id: int,
    on_token: Callable[[int, int], None] | None,
) -> None:
    """Choose the token at absolute index ``pos`` for every row in the cache.

    Rows still inside their prompt and rows already done are left alone.
    """
    active, seqs, done, seen = st.active, st.seqs, st.done, st.seen
    free = [r for r, i in enumerate(active) if not done[i] and len(seqs[i]) == st.pos]
    if not free:
        return
    sub = logits[free]
    rows = [active[r] for r in free]  # their places in the batch: each draws from its own seed
    picked = next_token(
        sub, sample, None if seen is None else seen[rows], st.generator, rows
    ).tolist()
    for j, (r, tok) in enumerate(zip(free, picked, strict=True)):
        i = active[r]
        seqs[i].append(tok)
        st.new[i].append(tok)
        if st.kept_logits is not None:
            st.kept_logits[i].append(sub[j].float().cpu())
        if seen is not None:
            seen[i, tok] = 1.0
        if on_token is not None:
            on_token(i, tok)
        if tok == eot_id:
            done[i] = st.finished[i] = True
        elif len(st.new[i]) >= sample.max_new_tokens:
            done[i] = True


def _slide(model: torch.nn.Module, st: _Loop, window: int, keep: int) -> torch.Tensor:
    """Window full: keep the most recent ``keep`` tokens (the new one included), re-encode them
    from position 0, and drop finished rows while at it. Logits (B_active, V) of the last."""
    st.active = [i for i in st.active if not st.done[i]]
    st.start = st.pos + 1 - keep
    st.cache = KVCache(model, len(st.active), max_len=window)
    idx = torch.tensor(
        [st.seqs[i][st.start : st.pos + 1] for i in st.active], device=st.device
    )  # (B_active, keep)
    return last_logits(model, idx, st.cache)  # (B_active, V)


def _slide_rotary(
    model: torch.nn.Module, st: _Loop, window: int, keep: int, eot_id: int
) -> torch.Tensor:
    """Window full, rotary positions: drop the oldest positions from the cache instead of
    re-encoding the kept ones (a rotary key depends only on its distance to the query), drop
    finished rows, and feed the token at ``pos``. Logits (B_active, V)."""
    rows = [r for r, i in enumerate(st.active) if not st.done[i]]
    st.active = [st.active[r] for r in rows]
    st.start = st.pos + 1 - keep
    assert st.cache is not None
    st.cache.drop_oldest(window - keep + 1, rows)  # keeps tokens start .. pos - 1
    return _step(model, st, eot_id)


def _step(model: torch.nn.Module, st: _Loop, eot_id: int) -> torch.Tensor:
    """Feed every row in the cache its token at ``pos``; logits (B_active, V)."""
    # Finished rows are fed <eot> as filler until the next slide drops them.
    step = [st.seqs[i][st.pos] if not st.done[i] else eot_id for i in st.active]
    idx = torch.tensor(step, device=st.device).view(-1, 1)  # (B_active, 1)
    return last_logits(model, idx, st.cache)


@torch.inference_mode()
def generate_ids(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    sample: SampleConfig | None = None,
    window: int | None = None,
    eot_id: int = EOT_ID,
    on_token: Callable[[int, int], None] | None = None,
    keep: int | None = None,
    return_logits: bool = False,
    fast: bool = True,
) -> _Ids:
    """Continue each prompt (a list of ids, at least one) until ``<eot>`` or ``max_new_tokens``.

    ``window``: the positions the model reads (default: the window it was trained on, see
    :func:`~gpt_study.generate.window.resolve_window`); prompts longer than it keep their last
    ``window`` tokens. ``on_token(row, id)`` is called for every new token as soon as it is
    chosen. The model is put in eval mode and restored after. One prompt to a
    :class:`~gpt_study.model.GPT` takes :func:`~gpt_study.generate.decode_fast.decode_row` (the
    same tokens, greedy or sampled, less bookkeeping per token) unless ``fast`` is off.
    """
    sample = sample or SampleConfig()
    if fast and isinstance(model, GPT) and len(prompts) == 1:
        row = None if on_token is None else (lambda tok: on_token(0, tok))
        kept: list[torch.Tensor] | None = [] if return_logits else None
        new, finished = decode_row(
            model, prompts[0], sample, window, eot_id, keep, row, logits_out=kept
        )
        return _Ids([new], [finished], None if kept is None else [kept])
    window = window_size(model, window)
    keep = keep_size(window, keep)
    st = _setup(model, prompts, sample, window, return_logits)

    was_training = model.training
    model.eval()
    try:
        logits = _prefill(model, st, window)  # (B, V)
        while True:
            _choose(logits, st, sample, eot_id, on_token)
            if all(st.done):
                break
            if st.pos - st.start == window and rotary(model):
                logits = _slide_rotary(model, st, window, keep, eot_id)
            elif st.pos - st.start == window:
                logits = _slide(model, st, window, keep)
            else:
                logits = _step(model, st, eot_id)
            st.pos += 1
        return _Ids(st.new, st.finished, st.kept_logits)
    finally:
        model.train(was_training)


def _rotary_oracle(model: torch.nn.Module, seq: list[int], window: int, keep: int) -> torch.Tensor:
    """Logits (V,) of the last token of ``seq`` as the slid rotary cache computes them: the whole
    sequence at its absolute positions, token t attending to the tokens the cache held when t
    was fed (``segment_start(t + 1) .. t``)."""
    device = next(model.parameters()).device
    T = len(seq)
    starts = segment_starts(T, window, keep)
    cols = torch.arange(T, device=device)
    lo = torch.tensor(starts, device=device)
    mask = (cols[None, :] >= lo[:, None]) & (cols[None, :] <= cols[:, None])  # (T, T)
    idx = torch.tensor([seq], device=device)  # (1, T)
    return model(idx, mask=mask)[0, -1].float()


@torch.inference_mode()
def reference_logits(
    model: torch.nn.Module, seq: Sequence[int], window: int | None, keep: int | None = None
) -> torch.Tensor:
    """Float logits (V,) for the token after ``seq`` (the whole sequence so far, prompt cut to
    the window included) as the cached loops compute them, from an uncached forward pass.

    ``window`` None: the study's way, the last ``max_len`` tokens. Otherwise the sliding schedule
    of :func:`generate_ids`: learned positions re-encode from :func:`segment_start`; rotary ones
    see the whole sequence at its absolute positions under the mask of what the cache held.
    """
    device = next(model.parameters()).device
    seq = list(seq)
    if window is not None and rotary(model):
        return _rotary_oracle(model, seq, window, keep_size(window, keep))
    if window is None:
        s = max(0, len(seq) - model.config.max_len)
    else:
        s = segment_start(len(seq), window, keep_size(window, keep))
    idx = torch.tensor([seq[s:]], device=device)  # (1, T)
    return model(idx)[0, -1].float()  # all positions computed, the last one used


@torch.inference_mode()
def reference_generate(
    model: torch.nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    window: int | None = None,
    keep: int | None = None,
    eot_id: int | None = EOT_ID,
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding the study's way: run the whole sequence again for every new token.

    With ``window`` the sequence is cut to the sliding schedule of :func:`generate_ids`
    (the oracle its cached output must equal); without it the whole sequence is run up to the
    model's max_len, as the study did. Returns the new ids and the (V,) logits of each.
    """
    was_training = model.training
    model.eval()
    try:
        window = None if window is None else window_size(model, window)
        seq = list(prompt) if window is None else crop_prompt(prompt, window)
        new: list[int] = []
        logits_out: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            logits = reference_logits(model, seq, window, keep)
            tok = int(logits.argmax())
            seq.append(tok)
            new.append(tok)
            logits_out.append(logits.cpu())
            if tok == eot_id:
                break
        return new, logits_out
    finally:
        model.train(was_training)
