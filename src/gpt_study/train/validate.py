"""Validation during training, and the sample story written after it.

Validation scores the valid split with the one held-out scorer (:mod:`gpt_study.evaluate.heldout`),
sharded over ranks and summed, and reports the study's loss beside the honest numbers.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Any

import torch

from gpt_study.config import Config, TrainConfig
from gpt_study.data.dataset import PreparedData
from gpt_study.data.text import split_bytes
from gpt_study.evaluate.heldout import Sums, rates, roles, score_tokens, scored_bytes
from gpt_study.generate import generate
from gpt_study.model.gpt import GPT
from gpt_study.runtime import distributed
from gpt_study.runtime.device import autocast

log = logging.getLogger("gpt_study.train")


@dataclass
class Validation:
    """Validation numbers; ``loss`` is the study's (smoothed, weighted), the rest are plain NLL."""

    loss: float
    nll: float
    ppl: float
    bpb: float | None
    tokens: int
    fraction: float  # share of the split's targets that were scored

    def as_dict(self) -> dict[str, Any]:
        return {
            "valid_loss": self.loss,
            "valid_nll": self.nll,
            "valid_ppl": self.ppl,
            "valid_bpb": self.bpb,
            "valid_tokens": self.tokens,
            "valid_fraction": self.fraction,
        }


def validate(
    model: torch.nn.Module,
    data: PreparedData,
    cfg: TrainConfig,
    dtype: torch.dtype = torch.float32,
    tokenizer: Any = None,
) -> Validation:
    """Score the valid split (sharded over ranks under torchrun; every rank must call it).

    What is computed, exactly:

    * the split is cut into windows of ``window + 1`` tokens overlapping by one, so each target
      token is scored once, with between 1 and ``window`` tokens of context (``cfg.window``, as
      in training: ``context_size - 1`` with the study's rows); ``--eval_iters N`` keeps ``N x batch_size`` windows spread evenly over the split;
    * ``loss``: the study's training loss (label smoothing, ``sp_weight``) averaged over targets
      with their weights - what the study called "valid loss";
    * ``nll``: plain cross-entropy, nats per token, every target counted once (``<eot>`` and
      ``<sot>`` included: ending a story is part of the text); ``ppl = exp(nll)``
      (capped, see :func:`gpt_study.evaluate.heldout.rates`);
    * ``bpb``: total NLL in bits over the UTF-8 bytes of the text those targets encode. The byte
      count comes from ``meta.json`` (``splits.valid.bytes``, the prepared text); when only a
      share of the targets is scored, the bytes are taken in the same share. With the word
      tokenizer, ``<unk>`` hides the spelling of rare words, so bpb is a little optimistic there.

    ``tokenizer`` (the run's) says which ids are ``<unk>`` and which ``sp_weight`` weighs
    (default: gpt-study's own kinds' 0, 1 and 2).
    """
    tokens = data.tokens("valid")
    mine = score_tokens(
        model,
        tokens,
        cfg.window,
        cfg.rows.batch_size,
        cfg.valid.eval_iters * cfg.rows.batch_size,
        dtype=dtype,
        label_smoothing=cfg.loss.label_smoothing,
        sp_weight=cfg.loss.sp_weight,
        shard=(distributed.rank(), distributed.world_size()),
        **(roles(tokenizer) if tokenizer is not None else {}),
    )
    s = Sums.from_list(distributed.all_reduce_sum(mine.as_list()))
    targets = len(tokens) - 1
    r = rates(s.nll, s.targets, scored_bytes(split_bytes(data, "valid"), s.targets, targets))
    return Validation(
        loss=s.loss / max(s.weight, 1),
        nll=r.nll,
        ppl=r.ppl,
        bpb=r.bpb,
        tokens=int(s.targets),
        fraction=s.targets / targets,
    )


def sample_story(model: GPT, tokenizer: Any, cfg: Config, device: str, dtype: torch.dtype) -> str:
    """One greedy story from ``<sot>`` (the study's decoding), without moving any training RNG."""
    sample = dataclasses.replace(
        cfg.sample, greedy=True, max_new_tokens=cfg.train.valid.sample_tokens
    )
    devices = [torch.device(device)] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices), autocast(device, dtype):
        result = generate(model, tokenizer, "", sample, window=cfg.train.window, warn=log.warning)
    return result.text
