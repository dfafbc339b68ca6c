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

from gpt_study.config import SampleConfig
from gpt_study.errors import UserError
from gpt_study.generate.decode_fast import greedy_fast
from gpt_study.generate.sampling import next_token
from gpt_study.generate.window import SLIDE_KEEP, keep_size, segment_start, window_size
from gpt_study.model import GPT, KVCache

__all__ = [
    "SLIDE_KEEP",
    "generate_ids",
    "reference_generate",
    "segment_start",
]


def _last_logits(model: torch.nn.Module, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) of the last position only: the output layer is skipped for the others."""
    hidden = getattr(model, "hidden", None)
    if hidden is not None and hasattr(model, "head"):
        return model.head(hidden(idx, cache)[:, -1])  # (B, d) -> (B, V)
    return model(idx, cache)[:, -1]


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
    generator: torch.Generator | None
    seen: torch.Tensor | None  # (B, V) bool, the tokens each row holds, for the penalty
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
    seqs = [list(p)[-window:] for p in prompts]  # (B, L_i), L_i <= window
    B = len(seqs)
    device = next(model.parameters()).device
    generator = None
    if sample.seed is not None and not sample.greedy:
        generator = torch.Generator(device=device).manual_seed(sample.seed)
    V = model.config.vocab_size
    seen = None
    if sample.repetition_penalty != 1.0 and not sample.greedy:
        seen = torch.zeros(B, V, dtype=torch.bool, device=device)
        for i, s in enumerate(seqs):
            seen[i, torch.tensor(s, device=device)] = True
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
    return _last_logits(model, idx, st.cache)  # (B, V)


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
    picked = next_token(
        sub,
        sample,
        None if seen is None else seen[[active[r] for r in free]],
        st.generator,
    ).tolist()
    for j, (r, tok) in enumerate(zip(free, picked, strict=True)):
        i = active[r]
        seqs[i].append(tok)
        st.new[i].append(tok)
        if st.kept_logits is not None:
            st.kept_logits[i].append(sub[j].float().cpu())
        if seen is not None:
            seen[i, tok] = True
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
    return _last_logits(model, idx, st.cache)  # (B_active, V)


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


def rotary(model: torch.nn.Module) -> bool:
    return getattr(model.config, "positions", "learned") == "rope"


def _step(model: torch.nn.Module, st: _Loop, eot_id: int) -> torch.Tensor:
    """Feed every row in the cache its token at ``pos``; logits (B_active, V)."""
    # Finished rows are fed <eot> as filler until the next slide drops them.
    step = [st.seqs[i][st.pos] if not st.done[i] else eot_id for i in st.active]
    idx = torch.tensor(step, device=st.device).view(-1, 1)  # (B_active, 1)
    return _last_logits(model, idx, st.cache)


@torch.inference_mode()
def generate_ids(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    sample: SampleConfig | None = None,
    context_size: int | None = None,
    eot_id: int = 2,
    on_token: Callable[[int, int], None] | None = None,
    keep: int | None = None,
    return_logits: bool = False,
    fast: bool = True,
) -> _Ids:
    """Continue each prompt (a list of ids, at least one) until ``<eot>`` or ``max_new_tokens``.

    ``context_size`` is the window the model was trained on (default: its max_len); prompts
    longer than it keep their last ``context_size`` tokens. ``on_token(row, id)`` is called for
    every new token as soon as it is chosen. The model is put in eval mode and restored after.
    One greedy prompt to a :class:`~gpt_study.model.GPT` takes
    :func:`~gpt_study.generate.decode_fast.greedy_fast` (the same tokens, less bookkeeping per
    token) unless ``fast`` is off, logits are asked for or the model's positions are rotary (its
    cache slides by dropping positions, which only this loop does).
    """
    sample = sample or SampleConfig()
    if (
        fast
        and isinstance(model, GPT)
        and not rotary(model)
        and len(prompts) == 1
        and sample.greedy
        and not return_logits
    ):
        row = None if on_token is None else (lambda tok: on_token(0, tok))
        new, finished = greedy_fast(
            model, prompts[0], sample.max_new_tokens, context_size, eot_id, keep, row
        )
        return _Ids([new], [finished])
    window = window_size(model, context_size)
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
    starts, s = [], 0
    for m in range(1, T + 1):  # segment_start for every prefix, in one pass
        if m - s > window:
            s = m - keep
        starts.append(s)
    cols = torch.arange(T, device=device)
    lo = torch.tensor(starts, device=device)
    mask = (cols[None, :] >= lo[:, None]) & (cols[None, :] <= cols[:, None])  # (T, T)
    idx = torch.tensor([seq], device=device)  # (1, T)
    return model(idx, mask=mask)[0, -1].float()


@torch.inference_mode()
def reference_generate(
    model: torch.nn.Module,
    prompt: Sequence[int],
    max_new_tokens: int,
    context_size: int | None = None,
    keep: int | None = None,
    eot_id: int | None = 2,
) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy decoding the study's way: run the whole sequence again for every new token.

    With ``context_size`` the sequence is cut to the sliding schedule of :func:`generate_ids`
    (the oracle its cached output must equal); without it the whole sequence is run up to the
    model's max_len, as the study did. Returns the new ids and the (V,) logits of each.
    """
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        window = None if context_size is None else window_size(model, context_size)
        seq = list(prompt) if window is None else list(prompt)[-window:]
        kp = None if window is None else keep_size(window, keep)
        new: list[int] = []
        logits_out: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
            if window is not None and rotary(model):
                logits = _rotary_oracle(model, seq, window, kp)  # type: ignore[arg-type]
            else:
                s = 0 if window is None else segment_start(len(seq), window, kp)  # type: ignore[arg-type]
                if window is None:
                    s = max(0, len(seq) - model.config.max_len)
                idx = torch.tensor([seq[s:]], device=device)  # (1, T)
                logits = model(idx)[0, -1].float()  # all positions computed, the last one used
            tok = int(logits.argmax())
            seq.append(tok)
            new.append(tok)
            logits_out.append(logits.cpu())
            if tok == eot_id:
                break
        return new, logits_out
    finally:
        model.train(was_training)
