"""Decoding settings: ``gpt-study generate``, the epoch's sample story and the story protocol."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from gpt_study.config.fields import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    SEED,
    Range,
    check_choices,
    check_ranges,
    doc,
)
from gpt_study.runtime.errors import UserError


@dataclass
class SampleConfig:
    """Decoding settings (``gpt-study generate`` and the sample story of each epoch)."""

    max_new_tokens: int = field(default=256, metadata=doc("most tokens to generate per story"))
    greedy: bool = field(
        default=False, metadata=doc("the study's greedy decoding (ignores sampling flags)")
    )
    temperature: float = field(default=0.8, metadata=doc("softmax temperature"))
    top_k: int = field(default=0, metadata=doc("sample among the k likeliest tokens (0: off)"))
    top_p: float = field(default=0.95, metadata=doc("nucleus sampling mass (1: off)"))
    repetition_penalty: float = field(
        default=1.1,
        metadata=doc(
            "lower the logits of tokens already in the story (CTRL-style; 1: off); 1.1 with "
            "temperature 0.8 and top_p 0.95 was measured to stop loops (docs/generate.md)"
        ),
    )
    seed: int | None = field(
        default=None,
        metadata=doc("seed for reproducible sampling (prompt i draws from seed + i)"),
    )

    RANGES: ClassVar[dict[str, Range]] = {
        "max_new_tokens": AT_LEAST_1,
        "top_k": NON_NEGATIVE,
        "top_p": Range(0, 1, lo_open=True),
        "repetition_penalty": POSITIVE,
        "seed": SEED,
    }

    def __post_init__(self) -> None:
        check_ranges(self, self.RANGES)
        check_choices(self)
        if self.greedy:
            return  # greedy decoding reads none of the sampling settings
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(
                f"--temperature {self.temperature} is out of range: use a value > 0 "
                "(or --greedy for the study's argmax decoding)"
            )

    def from_row(self, first: int) -> SampleConfig:
        """The settings of a batch whose first prompt is prompt ``first`` of many: prompt ``i``
        draws from ``seed + i`` (row ``r`` of a batch from the batch's ``seed + r``), so a story
        depends on its seed and its place among the prompts, never on how they were batched."""
        return self if self.seed is None else dataclasses.replace(self, seed=self.seed + first)

    def for_transformers(self) -> dict[str, Any]:
        """These settings in the words of transformers' ``generate``: the one translation, for
        an export's ``generation_config.json``, its check and ``evaluate --hf``'s stories.

        Every setting is spelled out (top_k 0 and repetition_penalty 1.0 mean off in both), so no
        default of a model's own ``generation_config.json`` or of transformers' fills a gap (greedy
        too, with the values transformers leaves unused there: else a model's sampling settings
        fill them and transformers warns that they are ignored); its
        repetition penalty is the same CTRL rule as ours, over prompt and output. Greedy is the
        study's argmax, without the penalty. The seed has no place here: transformers draws
        from torch's global generator.
        """
        if self.greedy:  # transformers' own neutral values: set, so no model default fills them
            return {
                "do_sample": False,
                "temperature": 1.0,
                "top_k": 50,
                "top_p": 1.0,
                "repetition_penalty": 1.0,
            }
        return {
            "do_sample": True,
            "temperature": self.temperature,
            "top_k": self.top_k,
            "top_p": self.top_p,
            "repetition_penalty": self.repetition_penalty,
        }
