"""How good is a model? Honest numbers on held-out text, and measurements of its stories.

Two parts, both printed as one table (``--json`` writes the same numbers to a file):

* **Held-out text** (:func:`evaluate_split`): plain negative log-likelihood per token (no label
  smoothing, no ``<sot>``/``<eot>`` weights: the study reported its smoothed training loss as
  "valid loss"), perplexity, bits per byte, next-token accuracy and the ``<unk>`` rate. The
  split is cut into consecutive windows of the training context, as validation in training does,
  so every token after the first is predicted exactly once.
* **Stories** (:func:`evaluate_stories`): generations from a fixed set of story openings, with
  the share that end with ``<eot>``, their mean length, distinct-1/2 (Li et al. 2016, "A
  Diversity-Promoting Objective Function for Neural Conversation Models") and the share of
  repeated 4-grams, which catches the loops the study's greedy decoding fell into.

Bits per byte divides the total NLL (in bits) by the UTF-8 bytes of the cleaned text, so models
with different tokenizers can be compared. A word vocabulary flatters it: every rare word is one
cheap ``<unk>`` prediction instead of its letters, so the ``<unk>`` rate is printed beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gpt_study.config import EOT_ID, SampleConfig
from gpt_study.data.dataset import open_prepared
from gpt_study.data.tokenizer import load_tokenizer
from gpt_study.errors import UserError
from gpt_study.generate import describe, generate
from gpt_study.heldout import bits_per_byte, score_tokens, scored_bytes

OPENINGS = (
    "Once upon a time, there was a little girl named Lily.",
    "One day, a boy named Tom went to the park with his mom.",
    "Once upon a time, in a big forest, there lived a small bunny.",
    "Sam had a red ball. He loved to play with it every day.",
    "There was a big, friendly dog named Max.",
    "One sunny morning, Mia found a shiny rock in the garden.",
    "Tim and his sister wanted to build a tall tower.",
    "Once upon a time, there was a kind old man who lived in a small house.",
    "The little bird could not fly yet.",
    "Anna was sad because it was raining outside.",
    "Ben saw a big box in the kitchen.",
    "Once upon a time, there was a cat who liked to climb trees.",
    "Lucy and her friend went to the beach.",
    "A little fish lived in a blue pond.",
    "One day, a girl named Sue found a key.",
    "",
)
"""The fixed story openings of :func:`evaluate_stories` (the last one: no prompt, just ``<sot>``)."""


# ------------------------------------------------------------------------ held-out text


def evaluate_tokens(
    model: torch.nn.Module,
    tokens: Any,
    context_size: int,
    batch_size: int = 16,
    max_rows: int = 0,
    progress: bool | None = False,
) -> dict[str, float]:
    """Sums over a token stream (1-D array of ids): NLL in nats, correct guesses, ``<unk>`` targets.

    Returns ``targets``, ``nll`` (sum), ``correct``, ``unk`` and ``nll_known`` (the NLL of the
    targets that are not ``<unk>``), from the held-out scorer training validates with
    (:func:`gpt_study.heldout.score_tokens`). Windows of ``context_size`` inputs overlap by one
    token, so each token after the first is a target once; ``max_rows`` > 0 spreads that many
    windows evenly over the stream instead.
    """
    dtype = next(model.parameters()).dtype
    sums = score_tokens(
        model, tokens, context_size, batch_size, max_rows, dtype=dtype, progress=progress
    )
    return sums.as_dict()


def split_metrics(sums: dict[str, float], n_bytes: float) -> dict[str, float]:
    """NLL per token, perplexity, bits per byte, accuracy and ``<unk>`` rate from the sums."""
    n = sums["targets"]
    known = n - sums["unk"]
    nll = sums["nll"] / n
    bpb = bits_per_byte(sums["nll"], n_bytes)
    return {
        "tokens": int(n),
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits_per_byte": float("nan") if bpb is None else bpb,
        "bytes": n_bytes,
        "accuracy": sums["correct"] / n,
        "unk_rate": sums["unk"] / n,
        "nll_known": sums["nll_known"] / known if known else float("nan"),
    }


def evaluate_split(
    model: torch.nn.Module,
    data_folder: str | Path,
    context_size: int,
    split: str = "valid",
    batch_size: int = 16,
    max_rows: int = 0,
    tokenizer: Any = None,
    progress: bool | None = False,
) -> dict[str, Any]:
    """Metrics of ``model`` on a prepared split (see :func:`split_metrics`).

    With ``tokenizer`` given, the prepared folder must use the same vocabulary. Bits per byte
    uses the split's byte count from ``meta.json``; when only some windows are read
    (``max_rows``) it is scaled to the targets read, and marked as estimated.
    """
    data = open_prepared(data_folder)
    if tokenizer is not None:
        _check_same_vocabulary(tokenizer, data.tokenizer_path, data.folder)
    tokens = data.tokens(split)
    sums = evaluate_tokens(model, tokens, context_size, batch_size, max_rows, progress)
    meta = data.split_meta(split)
    total_targets = max(len(tokens) - 1, 1)
    n_bytes = scored_bytes(meta.get("bytes", 0), sums["targets"], total_targets)
    out = split_metrics(sums, n_bytes)
    out["split"] = split
    out["data"] = str(data.folder)
    out["bytes_estimated"] = sums["targets"] < total_targets
    return out


def _check_same_vocabulary(tokenizer: Any, path: Path, folder: Path) -> None:
    other = load_tokenizer(path)

    def key(t: Any) -> Any:
        d = dict(t.to_dict()) if hasattr(t, "to_dict") else {"size": t.vocab_size}
        d.pop("counts", None)
        return d

    if key(other) != key(tokenizer):
        raise UserError(
            f"{folder} was prepared with a different vocabulary ({other.kind}, "
            f"{other.vocab_size} tokens) than the checkpoint ({tokenizer.kind}, "
            f"{tokenizer.vocab_size} tokens): point --data at the folder the model was trained on"
        )


# ------------------------------------------------------------------------ stories


def ngrams(ids: Sequence[int], n: int) -> list[tuple[int, ...]]:
    return [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]


def story_metrics(stories: Sequence[Sequence[int]], finished: Sequence[bool]) -> dict[str, float]:
    """Measurements of generated token ids (``<eot>`` excluded), one list per story.

    * ``eot_share``: stories that ended with ``<eot>`` before the token limit.
    * ``mean_length``: generated tokens per story.
    * ``distinct_1`` / ``distinct_2``: distinct n-grams / all n-grams, pooled over the stories.
    * ``repeated_4gram``: 4-grams that already occurred earlier in the same story, over all
      4-grams: 0 for a story that never repeats itself, near 1 for a loop.
    """
    bodies = [[t for t in s if t != EOT_ID] for s in stories]
    out: dict[str, float] = {
        "stories": len(bodies),
        "eot_share": sum(finished) / max(len(bodies), 1),
        "mean_length": sum(map(len, bodies)) / max(len(bodies), 1),
    }
    for n in (1, 2):
        grams = [g for b in bodies for g in ngrams(b, n)]
        out[f"distinct_{n}"] = len(set(grams)) / len(grams) if grams else 0.0
    repeated = total = 0
    for b in bodies:
        grams = ngrams(b, 4)
        total += len(grams)
        repeated += len(grams) - len(set(grams))
    out["repeated_4gram"] = repeated / total if total else 0.0
    return out


def evaluate_stories(
    model: torch.nn.Module,
    tokenizer: Any,
    sample: SampleConfig,
    context_size: int,
    openings: Sequence[str] = OPENINGS,
    samples_per_opening: int = 2,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Generate ``samples_per_opening`` stories from each opening and measure them.

    Sampling is seeded (``sample.seed``, else 1234) so the numbers are reproducible.
    """
    sample = SampleConfig(
        **{**asdict(sample), "seed": 1234 if sample.seed is None else sample.seed}
    )
    prompts = [p for p in openings for _ in range(samples_per_opening)]
    new_ids: list[list[int]] = []
    finished: list[bool] = []
    texts: list[str] = []
    for b in range(0, len(prompts), batch_size):
        batch_sample = SampleConfig(**{**asdict(sample), "seed": sample.seed + b})
        res = generate(
            model, tokenizer, prompts[b : b + batch_size], batch_sample, context_size, warn=_quiet
        )
        new_ids += res.new_ids
        finished += res.finished
        texts += res.texts
    out: dict[str, Any] = story_metrics(new_ids, finished)
    out["settings"] = {**asdict(sample), "context_size": context_size}
    out["settings_text"] = describe(sample, context_size)
    out["examples"] = texts[: min(3, len(texts))]
    return out


def _quiet(_: str) -> None:
    """Openings with words outside a small vocabulary still make fair prompts: no warning."""


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
    if "stories" in result:
        s = result["stories"]
        rows += [
            ("stories", f"{s['stories']} from {len(OPENINGS)} openings"),
            ("settings", s["settings_text"]),
            ("ended with <eot>", f"{s['eot_share']:.0%}"),
            ("mean length (tokens)", f"{s['mean_length']:.1f}"),
            ("distinct-1 / distinct-2", f"{s['distinct_1']:.3f} / {s['distinct_2']:.3f}"),
            ("repeated 4-grams", f"{s['repeated_4gram']:.2%}"),
        ]
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    if "valid" in result and result["valid"]["unk_rate"] > 0:
        lines.append(f"note: {UNK_NOTE}")
    return "\n".join(lines)
