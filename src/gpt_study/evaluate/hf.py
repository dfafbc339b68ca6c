"""Any transformers causal LM scored as gpt-study scores its own: ``gpt-study evaluate --hf``.

A published model (``roneneldan/TinyStories-33M``) or a folder (``gpt-study export`` writes one)
is read with its own tokenizer and measured on a prepared folder's split as text, with the same
numbers as ``evaluate`` on a checkpoint (:mod:`gpt_study.evaluate.report`):

* **The text** is :func:`gpt_study.data.text.split_stories`: the cleaned stories ``prepare``
  encoded. Each story is encoded with the model's tokenizer, with no special tokens, and framed
  by the model's markers, read as ``import`` reads them
  (:func:`~gpt_study.data.tokenizer.imported.published_roles`): its beginning-of-sequence token
  before each story (its eos where it has none) and its end-of-sequence token after; a marker that
  plays both (GPT-2's ``<|endoftext|>``) is written once between stories, so every story is read
  after a marker, as gpt-study's are after ``<sot>`` (one rule frames both:
  :func:`~gpt_study.data.tokenizer.base.join_stories`). For a gpt-study export (bos ``<sot>``,
  eos ``<eot>``) that is exactly the stream of the prepared folder, and for a published model
  exactly that of a folder prepared with its imported tokenizer.
* **The walk** is :func:`gpt_study.evaluate.heldout.scored_windows` over that stream: windows of
  the model's positions (at most 4,096; a gpt-study export's trained window; ``--window`` for
  fewer) overlapping by one, so a story longer than the window is scored in pieces exactly as
  gpt-study's own are.
* **Bits per byte** divides the NLL of every target (markers included) by the split's bytes
  (:func:`gpt_study.data.text.split_bytes`), the number ``evaluate`` divides by; NLL per token
  is per the model's own token.
* **Stories** are the story protocol's openings and seeds (:mod:`gpt_study.evaluate.stories`),
  each prompt the start marker and the opening: transformers' ``generate`` runs the model,
  gpt-study's sampler draws (:class:`OwnDraw`); a story ends at the model's end-of-sequence
  token.

transformers is imported inside these functions only (an optional extra).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt_study.config import SampleConfig
from gpt_study.data.dataset import open_prepared
from gpt_study.data.text import split_bytes, split_stories
from gpt_study.data.tokenizer.base import join_stories, shared_marker
from gpt_study.data.tokenizer.imported import published_roles
from gpt_study.evaluate.heldout import score_tokens
from gpt_study.evaluate.report import split_result, stories_result
from gpt_study.evaluate.stories import STORY_PROTOCOL, Stories, StoryProtocol, settings_line
from gpt_study.generate.sampling import draw_state, next_token
from gpt_study.generate.text import without_markers
from gpt_study.generate.window import crop_prompt, keep_size, segment_start
from gpt_study.runtime import device as runtime
from gpt_study.runtime.errors import (
    TRANSFORMERS_INSTALL,
    UserError,
    check_hf_source,
    muted,
    read_error_line,
    read_errors,
    require,
    weights_dtype,
)

DEFAULT_WINDOW_CAP = 4096
"""A model with more positions is scored in windows of this many unless ``--window`` says
otherwise: the logits of one window of 4,096 tokens over a 50k vocabulary already take 800 MB."""
POSITION_KEYS = ("n_positions", "max_position_embeddings", "n_ctx", "seq_length")
EXPORT_RECORD = "gpt_study_export.json"
"""What ``gpt-study export`` writes beside the weights (one of its ``FILES``, checked by a
test): its ``context_size`` is the window the checkpoint was trained on, the default here too."""
NOTE = (
    "bits per byte divides by the UTF-8 bytes of the split's cleaned stories, as evaluate does; "
    "NLL per token counts the model's own tokens, its end-of-story markers included"
)


def require_transformers() -> Any:
    return require("transformers", "evaluate --hf", TRANSFORMERS_INSTALL)


@dataclass
class HFModel:
    """A transformers model ready to score: eval mode, on its device, in its dtype."""

    name: str
    model: Any
    tokenizer: Any
    window: int  # input positions per scored window
    start_id: int  # before each story (its eos where it has no bos: then once between stories)
    eos_id: int  # after each story; generation stops at it
    unk_id: int | None = None  # counted by the scorer (None: the tokenizer has none of its own)

    def describe(self) -> dict[str, Any]:
        """What the report says about the model."""
        tok = self.tokenizer
        return {
            "name": self.name,
            "class": type(self.model).__name__,
            "parameters": sum(p.numel() for p in self.model.parameters()),
            "vocab_size": len(tok),
            "positions": model_positions(self.model),
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "start": tok.convert_ids_to_tokens(self.start_id),
            "end": tok.convert_ids_to_tokens(self.eos_id),
        }


def model_positions(model: Any) -> int | None:
    """The positions a transformers model reads, from its config (None if it names none)."""
    for key in POSITION_KEYS:
        value = getattr(model.config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_hf(
    name: str,
    device: str = "auto",
    dtype: str = "auto",
    window: int | None = None,
    remote: bool = False,
) -> HFModel:
    """``from_pretrained(name)`` for the model and its tokenizer (a Hub name or a folder,
    passed on unchanged), in eval mode on ``device`` in ``dtype`` (``auto``: as a checkpoint,
    :func:`gpt_study.runtime.device.inference_dtype`); ``window`` checked against its positions."""
    transformers = require_transformers()
    check_hf_source(name)
    dev = torch.device(runtime.resolve_device(device))
    weights = weights_dtype(transformers, runtime.inference_dtype(dtype, dev))
    try:
        with muted(transformers):  # its bars and load reports: noise beside our one line
            tok = transformers.AutoTokenizer.from_pretrained(name, trust_remote_code=remote)
            model = transformers.AutoModelForCausalLM.from_pretrained(
                name, trust_remote_code=remote, **weights
            )
    except read_errors() as e:
        first = read_error_line(e)
        raise UserError(
            f"cannot load {name} with transformers ({first}): pass a folder that "
            "AutoModelForCausalLM loads, or a Hub name (needs internet the first time)"
        ) from None
    model.to(dev).eval()
    roles = published_roles(tok, model.config)
    return HFModel(name, model, tok, _window(model, window, trained_window(name)), *roles)


def trained_window(name: str) -> int | None:
    """The window a gpt-study export was trained on (None for any other model)."""
    try:
        record = json.loads((Path(name) / EXPORT_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    window = record.get("context_size") if isinstance(record, dict) else None
    return window if isinstance(window, int) and window > 0 else None


def _window(model: Any, window: int | None, trained: int | None = None) -> int:
    """``window``, checked; by default a gpt-study export's trained window, else the model's
    positions up to :data:`DEFAULT_WINDOW_CAP`."""
    positions = model_positions(model)
    if window is None:
        if positions is None and trained is None:
            raise UserError("the model's config names no positions: pass --window")
        return min(trained or positions or 0, positions or DEFAULT_WINDOW_CAP, DEFAULT_WINDOW_CAP)
    if window < 1:
        raise UserError(f"--window {window} is out of range: use a window of at least 1 token")
    if positions is not None and window > positions:
        raise UserError(
            f"--window {window} is longer than the model's {positions} positions: "
            f"use --window {positions} or less"
        )
    return window


# ------------------------------------------------------------------------ held-out text


def story_stream(tokenizer: Any, texts: list[str], start: int, eos: int) -> np.ndarray:
    """The stories as the model reads them: ``[start] ids [eos]`` each (see
    :func:`~gpt_study.data.tokenizer.imported.published_roles`), a marker that plays both written
    once between them (:func:`~gpt_study.data.tokenizer.base.join_stories`). int64, whatever the
    vocabulary size."""
    parts: list[np.ndarray] = []
    for i in range(0, len(texts), 1024):
        encoded = tokenizer(texts[i : i + 1024], add_special_tokens=False, verbose=False)
        parts += [np.array([start, *ids, eos], dtype=np.int64) for ids in encoded["input_ids"]]
    if not parts:
        return np.zeros(0, dtype=np.int64)
    return join_stories(np.concatenate(parts), shared_marker(start, eos))


class Logits(torch.nn.Module):
    """A transformers causal LM as the scorer calls a model: ids (B, T) -> logits (B, T, V)."""

    def __init__(self, model: Any) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)  # the walk puts back this mode: the model's own

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        mask = torch.ones_like(idx)  # no padding: every window is whole
        return self.model(input_ids=idx, attention_mask=mask, use_cache=False).logits


LOGITS_BUDGET = 1 << 27
"""Float32 logits per forward pass that :func:`default_batch_size` aims at (512 MB)."""


def default_batch_size(hf: HFModel) -> int:
    """Windows per forward pass whose float32 logits stay near :data:`LOGITS_BUDGET`: 1 for a
    window of 2,048 over GPT-2's 50,257 tokens, 16 at most."""
    vocab = hf.model.get_output_embeddings().weight.shape[0]
    return max(1, min(16, LOGITS_BUDGET // (hf.window * vocab)))


def evaluate_hf_split(
    hf: HFModel,
    data_folder: str | Path,
    split: str = "valid",
    batch_size: int = 4,
    max_rows: int = 0,
    progress: bool | None = False,
) -> dict[str, Any]:
    """The ``valid`` part of an evaluate report for ``hf`` on a prepared folder's split."""
    data = open_prepared(data_folder)
    stream = story_stream(hf.tokenizer, split_stories(data, split), hf.start_id, hf.eos_id)
    sums = score_tokens(
        Logits(hf.model),
        stream,
        hf.window,
        batch_size,
        max_rows,
        dtype=next(hf.model.parameters()).dtype,
        progress=progress,
        unk_id=hf.unk_id,
    )
    out = split_result(sums.as_dict(), split_bytes(data, split), len(stream), split, data.folder)
    out["note"] = NOTE
    return out


# ------------------------------------------------------------------------ stories


@torch.no_grad()
def write_hf_stories(
    hf: HFModel, sample: SampleConfig | None, protocol: StoryProtocol = STORY_PROTOCOL
) -> Stories:
    """The protocol's stories from ``hf``: each prompt its start marker and the
    opening, each batch's rows seeded as the protocol says (:meth:`SampleConfig.from_row
    <gpt_study.config.SampleConfig.from_row>`), drawn with ``sample``'s settings by
    :func:`generate_rows`; a story is the new tokens before the first eos."""
    tok = hf.tokenizer
    prompts = {
        p: [hf.start_id] + tok(p, add_special_tokens=False)["input_ids"] for p in protocol.openings
    }
    sample = protocol.decoding(sample)
    texts, new_ids, finished = [], [], []
    for first, batch in protocol.batches():
        new, done = generate_rows(hf, sample.from_row(first), [prompts[p] for p in batch])
        new_ids += new
        finished += done
        texts += [
            _readable(hf, crop_prompt(prompts[p], hf.window) + ids)
            for p, ids in zip(batch, new, strict=True)
        ]
    text = settings_line(sample, hf.window, protocol)
    return Stories(texts, new_ids, finished, sample, text)


def _readable(hf: HFModel, ids: list[int]) -> str:
    """A story's text as gpt-study's own read (:func:`~gpt_study.generate.text.readable`): the
    prompt as the model read it (cut to the window) and the story, without the story markers
    but with every other token shown, an ``<unk>`` included."""
    decode = hf.tokenizer.decode
    return without_markers(
        lambda kept: decode(kept, skip_special_tokens=False), ids, (hf.start_id, hf.eos_id)
    )


class OwnDraw:
    """A logits processor for transformers' ``generate`` that picks every row's token with
    gpt-study's :func:`~gpt_study.generate.sampling.next_token` (the one home of greedy,
    temperature, top-k, top-p, the repetition penalty and the per-row seeds) and leaves only
    that token possible, so ``generate``'s greedy step takes it. transformers runs the model and
    its cache; gpt-study draws, so a published model and a checkpoint are sampled alike.

    ``rows``: which row of the whole batch each row of the current ``generate`` call is (rows
    leave as they end); ``seen`` covers each whole row, whatever the window re-encodes."""

    def __init__(
        self, sample: SampleConfig, rows: list[list[int]], vocab: int, device: torch.device
    ) -> None:
        self.sample = sample
        self.generator, self.seen = draw_state(sample, rows, vocab, device)
        self.rows: list[int] = list(range(len(rows)))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        seen = None if self.seen is None else self.seen[self.rows]  # (B, V)
        picked = next_token(scores, self.sample, seen, self.generator, self.rows)  # (B,)
        if self.seen is not None:
            self.seen[self.rows, picked] = 1.0
        only = torch.full_like(scores, float("-inf"))  # (B, V)
        return only.scatter_(1, picked[:, None], 0.0)


def generate_rows(
    hf: HFModel, sample: SampleConfig, rows: list[list[int]]
) -> tuple[list[list[int]], list[bool]]:
    """Up to ``sample.max_new_tokens`` new tokens after each prompt of ``rows`` (before its eos),
    and whether it ended with eos; row ``r`` draws from ``sample.seed + r`` (:class:`OwnDraw`).
    transformers' ``generate`` runs the model on the window schedule of gpt-study's decoders
    (:func:`~gpt_study.generate.window.segment_start`): a row fills the window, then goes on
    from its most recent ``keep_size`` tokens, re-encoded. So a model of any window writes
    stories of the protocol's length, and the export of a checkpoint with learned positions
    writes the checkpoint's own, sampled or greedy (a rotary cache keeps its keys instead)."""
    config = _generation_config(hf)
    keep = keep_size(hf.window, None)
    device = next(hf.model.parameters()).device
    rows = [crop_prompt(r, hf.window) for r in rows]
    draw = OwnDraw(sample, rows, hf.model.get_output_embeddings().weight.shape[0], device)
    processors = require_transformers().LogitsProcessorList([draw])
    new: list[list[int]] = [[] for _ in rows]
    done = [False] * len(rows)
    while True:
        active = [i for i, d in enumerate(done) if not d and len(new[i]) < sample.max_new_tokens]
        if not active:
            return new, done
        seqs = [rows[i] + new[i] for i in active]
        ctx = [q[segment_start(len(q), hf.window, keep) :] for q in seqs]
        width = max(map(len, ctx))  # <= window; every choice of this call reads one segment
        step = min(sample.max_new_tokens - len(new[active[0]]), hf.window - width + 1)
        pad = config.pad_token_id
        ids = torch.tensor([[pad] * (width - len(c)) + c for c in ctx], device=device)
        mask = torch.tensor([[0] * (width - len(c)) + [1] * len(c) for c in ctx], device=device)
        config.max_new_tokens = step
        draw.rows = active
        out = hf.model.generate(
            ids, attention_mask=mask, generation_config=config, logits_processor=processors
        )
        for i, row in zip(active, out[:, width:].tolist(), strict=True):
            end = row.index(hf.eos_id) if hf.eos_id in row else len(row)
            new[i] += row[:end]
            done[i] = end < len(row)  # (a finished row is padded after its eos)


def _generation_config(hf: HFModel) -> Any:
    """transformers' greedy step, which takes the one token :class:`OwnDraw` leaves; every
    setting spelled out, so no default of the model's own ``generation_config.json`` fills a gap."""
    transformers = require_transformers()
    pad = hf.tokenizer.pad_token_id
    return transformers.GenerationConfig(
        eos_token_id=hf.eos_id,
        pad_token_id=hf.eos_id if pad is None else pad,
        **SampleConfig(greedy=True).for_transformers(),
    )


def evaluate_hf_stories(
    hf: HFModel, sample: SampleConfig | None, protocol: StoryProtocol = STORY_PROTOCOL
) -> dict[str, Any]:
    """The ``stories`` part of an evaluate report for ``hf`` (see :func:`write_hf_stories`)."""
    written = write_hf_stories(hf, sample, protocol)
    return stories_result(written, hf.window, protocol)


def evaluate_hf(
    hf: HFModel,
    data_folder: str | Path | None,
    split: str = "valid",
    batch_size: int | None = None,
    max_rows: int = 0,
    progress: bool | None = False,
    sample: SampleConfig | None = None,
    protocol: StoryProtocol | None = STORY_PROTOCOL,
) -> dict[str, Any]:
    """An evaluate report for ``hf``, in the shape of a checkpoint's (the caller adds who wrote
    it): held-out text unless ``data_folder`` is None, stories unless ``protocol`` is None."""
    result: dict[str, Any] = {"checkpoint": hf.name, "hf": hf.describe(), "context_size": hf.window}
    if data_folder is not None:
        batch = batch_size or default_batch_size(hf)
        result["valid"] = evaluate_hf_split(hf, data_folder, split, batch, max_rows, progress)
    if protocol is not None:
        result["stories"] = evaluate_hf_stories(hf, sample, protocol)
    return result
