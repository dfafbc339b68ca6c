"""Writing stories: sampling as small pure functions, KV-cached decoding with a sliding window.

Pieces, from the inside out:

* ``apply_repetition_penalty``, ``filter_top_k``, ``filter_top_p``, ``next_token``: one step of
  decoding on a (B, V) block of logits. Pure functions, easy to test on their own.
* ``generate_ids``: the decoding loop on token ids. A :class:`~gpt_study.model.KVCache` holds the
  keys and values of the positions already seen, so each new token costs one position of work
  instead of the whole sequence again (the study re-ran everything for every token).
* ``generate``: text in, text out: cleans and encodes prompts exactly as ``prepare`` did, warns
  about out-of-vocabulary words, streams readable text as it is produced.
* ``reference_generate``: the study's way (re-run the sequence for every token), kept as the test
  oracle and the benchmark baseline.

**The window.** The model learned positions ``0 .. context_size - 1`` only (the study trained on
128-token rows but generated up to 256, through positions training never saw). Learned absolute
positions mean a full cache cannot just drop its oldest entry: every kept key was computed at a
position that would change. So when the window is full, generation *slides*: it keeps the most
recent ``keep`` tokens (three quarters of the window by default), re-encodes them from position 0
in one batched forward pass, and carries on. Prompts longer than the window keep their most
recent tokens. ``keep = context_size`` gives an exact sliding window at the price of one full
forward pass per token.

**Batches.** Prompts of different lengths share one cache without padding: all rows are
left-aligned at position 0 and advance one position per step; a row still inside its prompt is
fed its next prompt token instead of a sample. Each row therefore sees exactly the tokens (and
positions) it would see alone. Rows that have finished are dropped at the next slide.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from gpt_study.config import SampleConfig
from gpt_study.data.clean import clean_text
from gpt_study.errors import UserError
from gpt_study.model import KVCache

__all__ = [
    "GenerationResult",
    "apply_repetition_penalty",
    "candidates",
    "encode_prompt",
    "filter_top_k",
    "filter_top_p",
    "generate",
    "generate_ids",
    "next_token",
    "reference_generate",
]

SLIDE_KEEP = 0.75
"""Share of the window kept (and re-encoded) when generation slides past its end."""

# ------------------------------------------------------------------------ sampling, one step


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


# ------------------------------------------------------------------------ the decoding loop


def _last_logits(model: torch.nn.Module, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
    """Logits (B, V) of the last position only: the output layer is skipped for the others."""
    hidden = getattr(model, "hidden", None)
    if hidden is not None and hasattr(model, "head"):
        return model.head(hidden(idx, cache)[:, -1])  # (B, d) -> (B, V)
    return model(idx, cache)[:, -1]


def _window(model: torch.nn.Module, context_size: int | None) -> int:
    max_len = model.config.max_len
    w = max_len if context_size is None else context_size
    if not 1 <= w <= max_len:
        raise UserError(f"context_size {w} must be in 1..{max_len} (the model's max_len)")
    return w


def _keep(window: int, keep: int | None) -> int:
    k = max(1, int(window * SLIDE_KEEP)) if keep is None else keep
    if not 1 <= k <= window:
        raise UserError(f"keep {k} must be in 1..{window} (the window)")
    return k


@dataclass
class _Ids:
    """What :func:`generate_ids` returns: per row, the new ids and whether ``<eot>`` ended it."""

    new_ids: list[list[int]]
    finished: list[bool]
    logits: list[list[torch.Tensor]] | None = None  # per row, the (V,) logits of each new token


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
) -> _Ids:
    """Continue each prompt (a list of ids, at least one) until ``<eot>`` or ``max_new_tokens``.

    ``context_size`` is the window the model was trained on (default: its max_len); prompts
    longer than it keep their last ``context_size`` tokens. ``on_token(row, id)`` is called for
    every new token as soon as it is chosen. The model is put in eval mode and restored after.
    """
    sample = sample or SampleConfig()
    window = _window(model, context_size)
    keep = _keep(window, keep)
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

    was_training = model.training
    model.eval()
    try:
        new: list[list[int]] = [[] for _ in range(B)]
        done = [False] * B
        finished = [False] * B
        kept_logits: list[list[torch.Tensor]] | None = (
            [[] for _ in range(B)] if return_logits else None
        )
        active = list(range(B))  # rows held in the cache, in cache order
        start = 0  # absolute index of the token at cache position 0 (shared by all rows)
        pos = min(len(s) for s in seqs)  # tokens fed so far
        cache = KVCache(model, B, max_len=window)
        idx = torch.tensor([s[:pos] for s in seqs], device=device)  # (B, pos)
        logits = _last_logits(model, idx, cache)  # (B, V)
        while True:
            # Choose the token at absolute index ``pos`` for every row in the cache.
            free = [r for r, i in enumerate(active) if not done[i] and len(seqs[i]) == pos]
            if free:
                sub = logits[free]
                picked = next_token(
                    sub,
                    sample,
                    None if seen is None else seen[[active[r] for r in free]],
                    generator,
                ).tolist()
                for j, (r, tok) in enumerate(zip(free, picked, strict=True)):
                    i = active[r]
                    seqs[i].append(tok)
                    new[i].append(tok)
                    if kept_logits is not None:
                        kept_logits[i].append(sub[j].float().cpu())
                    if seen is not None:
                        seen[i, tok] = True
                    if on_token is not None:
                        on_token(i, tok)
                    if tok == eot_id:
                        done[i] = finished[i] = True
                    elif len(new[i]) >= sample.max_new_tokens:
                        done[i] = True
            if all(done):
                break
            if pos - start == window:
                # Window full: keep the most recent ``keep`` tokens (the new one included),
                # re-encode them from position 0, and drop finished rows while at it.
                active = [i for i in active if not done[i]]
                start = pos + 1 - keep
                cache = KVCache(model, len(active), max_len=window)
                idx = torch.tensor([seqs[i][start : pos + 1] for i in active], device=device)
                logits = _last_logits(model, idx, cache)  # (B_active, V)
            else:
                # Finished rows are fed <eot> as filler until the next slide drops them.
                step = [seqs[i][pos] if not done[i] else eot_id for i in active]
                idx = torch.tensor(step, device=device).view(-1, 1)  # (B_active, 1)
                logits = _last_logits(model, idx, cache)
            pos += 1
        return _Ids(new, finished, kept_logits)
    finally:
        model.train(was_training)


def segment_start(n: int, window: int, keep: int) -> int:
    """Absolute index of the first token the cached loop attends to after ``n`` tokens were fed.

    This is the sliding schedule of :func:`generate_ids`, written out so that the uncached
    reference can follow it exactly.
    """
    s = 0
    for m in range(1, n + 1):
        if m - s > window:
            s = m - keep
    return s


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
        window = None if context_size is None else _window(model, context_size)
        seq = list(prompt) if window is None else list(prompt)[-window:]
        kp = None if window is None else _keep(window, keep)
        new: list[int] = []
        logits_out: list[torch.Tensor] = []
        for _ in range(max_new_tokens):
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


# ------------------------------------------------------------------------ text in, text out


@dataclass
class GenerationResult:
    """Stories for a batch of prompts.

    ``prompt_ids`` is what the model was fed (cleaned, encoded, starting with ``<sot>`` unless a
    long prompt was cut to the window); ``new_ids`` what it wrote (ending with ``<eot>`` when it
    finished the story); ``texts`` the readable story, prompt included.
    """

    texts: list[str]
    prompt_ids: list[list[int]]
    new_ids: list[list[int]]
    finished: list[bool]
    warnings: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        """The first (or only) story."""
        return self.texts[0]

    @property
    def ids(self) -> list[int]:
        """Prompt and new ids of the first (or only) story."""
        return self.prompt_ids[0] + self.new_ids[0]


def encode_prompt(tokenizer, prompt: str, window: int | None = None) -> tuple[list[int], list[str]]:
    """Ids of ``prompt`` as training saw text (cleaned, ``<sot>`` first) and any warnings.

    Out-of-vocabulary words become ``<unk>`` and are named in a warning; an empty prompt is just
    ``<sot>``; a prompt longer than ``window`` keeps its most recent tokens.
    """
    notes: list[str] = []
    text = clean_text(prompt, tokenizer.lowercase).strip() if prompt.strip() else ""
    ids = tokenizer.encode(text, sot=True) if text else [tokenizer.sot_id]
    unknown = tokenizer.unknown_words(text) if text else []
    if unknown:
        words = ", ".join(dict.fromkeys(unknown))
        notes.append(f"not in the vocabulary, read as <unk>: {words}")
    if window is not None and len(ids) > window:
        notes.append(f"prompt has {len(ids)} tokens; keeping the last {window} (the window)")
        ids = ids[-window:]
    return ids, notes


def readable(tokenizer, ids: Sequence[int]) -> str:
    """Text of ``ids`` without ``<sot>``/``<eot>`` but with ``<unk>`` shown where it stands, so
    a story never silently loses a word (plain ``decode`` drops every special)."""
    drop = (tokenizer.sot_id, tokenizer.eot_id)
    return tokenizer.decode([i for i in ids if i not in drop], skip_specials=False)


class _TextStream:
    """Turns a row's growing token list into readable text deltas.

    Decoding joins tokens (``could`` + ``n't`` -> ``couldn't``; BPE bytes -> characters), so a
    new token can change the end of the text. The last word is held back until the next space,
    and only text that can no longer change is passed on.
    """

    def __init__(self, tokenizer, prefix: list[int], emit: Callable[[str], None]) -> None:
        self.tokenizer = tokenizer
        self.ids = list(prefix)
        self.emit = emit
        self.shown = ""

    def push(self, tok: int) -> None:
        self.ids.append(tok)
        text = readable(self.tokenizer, self.ids)
        cut = max(text.rfind(" "), text.rfind("\n"))
        stable = text[: cut + 1] if cut >= 0 else ""
        if stable.startswith(self.shown) and len(stable) > len(self.shown):
            self.emit(stable[len(self.shown) :])
            self.shown = stable

    def close(self) -> None:
        text = readable(self.tokenizer, self.ids)
        # Normally the text extends what was shown; if decoding changed it, show from the change.
        same = 0
        while same < min(len(text), len(self.shown)) and text[same] == self.shown[same]:
            same += 1
        if text[same:]:
            self.emit(text[same:])
        self.shown = text


def generate(
    model: torch.nn.Module,
    tokenizer,
    prompt: str | Sequence[str] = "",
    sample: SampleConfig | None = None,
    context_size: int | None = None,
    stream: Callable[[int, str], None] | None = None,
    warn: Callable[[str], None] | None = None,
    keep: int | None = None,
) -> GenerationResult:
    """Write one story per prompt (a string, or a list of strings generated as one batch).

    ``sample`` holds the decoding settings (default: ``SampleConfig()``); pass the checkpoint's
    ``config.sample``. ``context_size`` is the window the model was trained on: pass
    ``config.train.context_size`` (default: the model's max_len). ``stream(row, text)`` receives
    readable text as it is written, prompt first. ``warn`` receives warnings (default:
    :func:`warnings.warn`).
    """
    sample = sample or SampleConfig()
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise UserError("no prompts given: pass at least one (an empty string starts a story)")
    window = _window(model, context_size)
    if tokenizer.vocab_size != model.config.vocab_size:
        raise UserError(
            f"tokenizer has {tokenizer.vocab_size} tokens but the model expects "
            f"{model.config.vocab_size}: use the tokenizer saved with the checkpoint"
        )
    encoded, notes = [], []
    for n, p in enumerate(prompts):
        ids, msgs = encode_prompt(tokenizer, p, window)
        encoded.append(ids)
        prefix = f"prompt {n + 1}: " if len(prompts) > 1 else "prompt: "
        notes += [prefix + m for m in msgs]
    say = warn or (lambda m: warnings.warn(m, stacklevel=3))
    for m in notes:
        say(m)

    on_token = None
    streams: list[_TextStream] = []
    if stream is not None:
        streams = [
            _TextStream(tokenizer, ids, lambda s, r=r: stream(r, s))
            for r, ids in enumerate(encoded)
        ]

        def on_token(row: int, tok: int) -> None:
            streams[row].push(tok)

    out = generate_ids(
        model,
        encoded,
        sample,
        context_size=window,
        eot_id=tokenizer.eot_id,
        on_token=on_token,
        keep=keep,
    )
    for s in streams:
        s.close()
    texts = [readable(tokenizer, p + n) for p, n in zip(encoded, out.new_ids, strict=True)]
    return GenerationResult(texts, encoded, out.new_ids, out.finished, notes)


def raw_tokens(tokenizer, ids: Sequence[int]) -> str:
    """The study's raw output: vocabulary entries joined by spaces, specials included."""
    return " ".join(tokenizer.id_to_token(int(i)) for i in ids)


def describe(sample: SampleConfig, context_size: int) -> str:
    """One line with the decoding settings, printed beside every result."""
    if sample.greedy:
        how = "greedy (the study's argmax)"
    else:
        how = (
            f"temperature {sample.temperature}, top_k {sample.top_k}, top_p {sample.top_p}, "
            f"repetition_penalty {sample.repetition_penalty}, seed {sample.seed}"
        )
    return f"{how}, max_new_tokens {sample.max_new_tokens}, window {context_size}"
