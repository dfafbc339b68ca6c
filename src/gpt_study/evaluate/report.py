"""How good is a model? Honest numbers on held-out text, and measurements of its stories.

Two parts, both printed as one table (``--json`` writes the same numbers to a file):

* **Held-out text** (:func:`evaluate_split`): plain negative log-likelihood per token (no label
  smoothing, no ``<sot>``/``<eot>`` weights: the study reported its smoothed training loss as
  "valid loss"), perplexity, bits per byte, next-token accuracy and the ``<unk>`` rate. The
  split is cut into consecutive windows of the training context, as validation in training does,
  so every token after the first is predicted exactly once.
* **Stories** (:func:`evaluate_stories`): the story protocol of :mod:`gpt_study.evaluate.stories`
  (fixed openings, up to 512 new tokens, seeded), with the share that end with ``<eot>`` and
  its 95% interval, their mean length, distinct-1/2 and the share of repeated 4-grams; compare
  and the quality benchmark measure the same stories the same way.

Bits per byte divides the total NLL (in bits) by the UTF-8 bytes of the cleaned text, so models
with different tokenizers can be compared. A word vocabulary flatters it: every rare word is one
cheap ``<unk>`` prediction instead of its letters, so the ``<unk>`` rate is printed beside it.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gpt_study.config import SampleConfig
from gpt_study.data.dataset import open_prepared
from gpt_study.data.text import split_bytes
from gpt_study.data.tokenizer import load_tokenizer
from gpt_study.evaluate.heldout import context_bands, rates, roles, score_tokens, scored_bytes
from gpt_study.evaluate.stories import (
    OPENINGS,
    STORY_PROTOCOL,
    Stories,
    StoryProtocol,
    share_text,
    story_metrics,
    write_stories,
)
from gpt_study.runtime.errors import UserError

# ------------------------------------------------------------------------ held-out text


def evaluate_tokens(
    model: torch.nn.Module,
    tokens: Any,
    window: int,
    batch_size: int = 16,
    max_rows: int = 0,
    progress: bool | None = False,
    tokenizer: Any = None,
    by_context: bool = False,
) -> dict[str, Any]:
    """Sums over a token stream (1-D array of ids): NLL in nats, correct guesses, ``<unk>`` targets
    (the id ``tokenizer`` says; default gpt-study's own kinds' 0).

    Returns ``targets``, ``nll`` (sum), ``correct``, ``unk`` and ``nll_known`` (the NLL of the
    targets that are not ``<unk>``), from the held-out scorer training validates with
    (:func:`gpt_study.evaluate.heldout.score_tokens`). Windows of ``window`` inputs overlap by one
    token, so each token after the first is a target once; ``max_rows`` > 0 spreads that many
    windows evenly over the stream instead. ``by_context`` adds ``by_context``: the NLL per
    token by the context each target had (:func:`gpt_study.evaluate.heldout.context_bands`).
    """
    dtype = next(model.parameters()).dtype
    ids = roles(tokenizer) if tokenizer is not None else {}
    positions = torch.zeros(2, window, dtype=torch.float64) if by_context else None
    sums = score_tokens(
        model,
        tokens,
        window,
        batch_size,
        max_rows,
        dtype=dtype,
        progress=progress,
        by_position=positions,
        **ids,
    )
    out: dict[str, Any] = sums.as_dict()
    if positions is not None:
        out["by_context"] = context_bands(positions)
    return out


def split_metrics(sums: dict[str, float], n_bytes: float) -> dict[str, float]:
    """NLL per token, perplexity, bits per byte, accuracy and ``<unk>`` rate from the sums."""
    n = sums["targets"]
    known = n - sums["unk"]
    r = rates(sums["nll"], n, n_bytes)
    return {
        "tokens": int(n),
        "nll": r.nll,
        "perplexity": r.ppl,
        "bits_per_byte": float("nan") if r.bpb is None else r.bpb,
        "bytes": n_bytes,
        "accuracy": sums["correct"] / n,
        "unk_rate": sums["unk"] / n,
        "nll_known": sums["nll_known"] / known if known else float("nan"),
    }


def evaluate_split(
    model: torch.nn.Module,
    data_folder: str | Path,
    window: int,
    split: str = "valid",
    batch_size: int = 16,
    max_rows: int = 0,
    tokenizer: Any = None,
    progress: bool | None = False,
    by_context: bool = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on a prepared split (see :func:`split_metrics`; ``by_context``: see
    :func:`evaluate_tokens`).

    With ``tokenizer`` given, the prepared folder must use the same vocabulary. Bits per byte
    divides by the bytes of the split's text (:func:`gpt_study.data.text.split_bytes`, recorded
    by ``prepare``); see :func:`split_result`.
    """
    data = open_prepared(data_folder)
    if tokenizer is not None:
        _check_same_vocabulary(tokenizer, data.tokenizer_path, data.folder)
    tokens = data.tokens(split)
    vocab = tokenizer if tokenizer is not None else load_tokenizer(data.tokenizer_path)
    sums = evaluate_tokens(model, tokens, window, batch_size, max_rows, progress, vocab, by_context)
    return split_result(sums, split_bytes(data, split), len(tokens), split, data.folder)


def split_result(
    sums: dict[str, float], n_bytes: float, n_tokens: int, split: str, folder: str | Path
) -> dict[str, Any]:
    """The ``valid`` part of an evaluate report, from the sums over a stream of ``n_tokens``
    that encodes the ``n_bytes`` bytes of a split's text; when only some windows were read
    (``max_rows``) the bytes are scaled to the targets read, and marked as estimated. Both
    ``evaluate`` paths (a checkpoint, a transformers model) report through it."""
    total_targets = max(n_tokens - 1, 1)
    out = split_metrics(sums, scored_bytes(n_bytes, sums["targets"], total_targets))
    out["split"] = split
    out["data"] = str(folder)
    out["bytes_estimated"] = sums["targets"] < total_targets
    if "by_context" in sums:
        out["by_context"] = sums["by_context"]
    return out


def _check_same_vocabulary(tokenizer: Any, path: Path, folder: Path) -> None:
    other = load_tokenizer(path)
    if other.vocabulary_key() != tokenizer.vocabulary_key():
        raise UserError(
            f"{folder} was prepared with a different vocabulary ({other.kind}, "
            f"{other.vocab_size} tokens) than the checkpoint ({tokenizer.kind}, "
            f"{tokenizer.vocab_size} tokens): point --data at the folder the model was trained on"
        )


# ------------------------------------------------------------------------ stories


def evaluate_stories(
    model: torch.nn.Module,
    tokenizer: Any,
    sample: SampleConfig,
    window: int,
    protocol: StoryProtocol = STORY_PROTOCOL,
) -> dict[str, Any]:
    """The protocol's stories, decoded with ``sample``'s settings, measured by
    :func:`~gpt_study.evaluate.stories.story_metrics`; the protocol sets the cap and the seeds."""
    written = write_stories(model, tokenizer, sample, window, protocol)
    return stories_result(written, window, protocol)


def stories_result(written: Stories, window: int, protocol: StoryProtocol) -> dict[str, Any]:
    """The ``stories`` part of an evaluate report: :func:`story_metrics` of the stories, their
    settings and the first few; both ``evaluate`` paths report through it."""
    out: dict[str, Any] = story_metrics(written.new_ids, written.finished)
    out["settings"] = {**asdict(written.sample), "context_size": window}
    out["settings_text"] = written.settings_text
    out["protocol"] = protocol.as_dict()
    out["examples"] = written.texts[: min(3, len(written.texts))]
    return out


# ------------------------------------------------------------------------ report


UNK_NOTE = (
    "<unk> stands for every rare word, so a word model's perplexity and bits per byte are "
    "flattered by the <unk> rate; the NLL without <unk> targets is shown beside them"
)


def format_table(result: dict[str, Any]) -> str:
    """The numbers as an aligned two-column table."""
    rows: list[tuple[str, str]] = []
    if "valid" in result:
        v = result["valid"]
        est = " (estimated)" if v["bytes_estimated"] else ""
        rows += [
            (f"{v['split']} split", f"{v['data']}, {v['tokens']:,} target tokens"),
            ("NLL / token (nats)", f"{v['nll']:.4f}"),
            ("perplexity", f"{v['perplexity']:.2f}"),
            ("bits per byte", f"{v['bits_per_byte']:.4f}{est}"),
            ("token accuracy", f"{v['accuracy']:.2%}"),
            ("<unk> rate", f"{v['unk_rate']:.2%}"),
            ("NLL / token without <unk> targets", f"{v['nll_known']:.4f}"),
        ]
        rows += [
            (f"NLL / token, context {b['context']}", f"{b['nll']:.4f} ({b['targets']:,} targets)")
            for b in v.get("by_context", [])
            if b["targets"]
        ]
    if "stories" in result:
        s = result["stories"]
        openings = s.get("protocol", {}).get("openings", len(OPENINGS))
        rows += [
            ("stories", f"{s['stories']} from {openings} openings"),
            ("settings", s["settings_text"]),
            (f"ended with {result.get('hf', {}).get('end') or '<eot>'}", share_text(s)),
            ("mean length (tokens)", f"{s['mean_length']:.1f}"),
            ("distinct-1 / distinct-2", f"{s['distinct_1']:.3f} / {s['distinct_2']:.3f}"),
            ("repeated 4-grams", f"{s['repeated_4gram']:.2%}"),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if "valid" in result and result["valid"]["unk_rate"] > 0:
        lines.append(f"note: {UNK_NOTE}")
    return "\n".join(lines)
