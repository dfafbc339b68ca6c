"""What a training step learns with: the loss, the optimizer and the learning-rate schedule,
three sections of :class:`~gpt_study.config.train.TrainConfig` (see that module for how the
sections read)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from gpt_study.config.fields import (
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    Section,
    doc,
)
from gpt_study.runtime.errors import UserError

__all__ = ["DECAY_SHAPES", "LossConfig", "OptimConfig", "ScheduleConfig"]


@dataclass
class LossConfig(Section):
    """The training loss: the study's label smoothing and <sot>/<eot> weight."""

    label_smoothing: float = field(
        default=0.1, metadata=doc("label smoothing of the training loss")
    )
    sp_weight: float = field(
        default=1.0,
        metadata=doc(
            "class weight of <sot>/<eot> in the loss, as CrossEntropyLoss(weight=...): on those "
            "targets and on their share of every position's smoothing (1: no extra weight)"
        ),
    )

    RANGES = {"label_smoothing": PROBABILITY, "sp_weight": POSITIVE}


@dataclass
class OptimConfig(Section):
    """The optimizer: AdamW as the study set it, or Muon with AdamW."""

    optimizer: str = field(
        default="adamw",
        metadata=doc(
            "adamw (the study) or muon: Muon for the blocks' weight matrices, AdamW for "
            "embeddings, output layer, biases and LayerNorms (needs torch 2.9 or later)",
            choices=["adamw", "muon"],
        ),
    )
    lr: float = field(default=2.5e-4, metadata=doc("peak learning rate"))
    lr_betas: tuple[float, float] = field(default=(0.9, 0.98), metadata=doc("AdamW betas", nargs=2))
    eps: float = field(default=1e-9, metadata=doc("AdamW epsilon"))
    weight_decay: float = field(default=5e-4, metadata=doc("AdamW weight decay"))
    decay_all: bool = field(
        default=True,
        metadata=doc(
            "AdamW weight decay on every parameter, biases and LayerNorms included (the study); "
            "--no-decay_all decays only weight matrices and embeddings"
        ),
    )
    muon_lr: float = field(
        default=0.02,
        metadata=doc("--optimizer muon: Muon's peak lr, scaled by the schedule as --lr"),
    )
    muon_momentum: float = field(default=0.95, metadata=doc("--optimizer muon: Nesterov momentum"))
    grad_clip: float = field(default=0.0, metadata=doc("clip the gradient norm to this (0: off)"))
    ema: float = field(
        default=0.0, metadata=doc("decay of a weight average that validation and best/ use; 0: off")
    )

    RANGES = {
        "ema": PROBABILITY,
        "lr": POSITIVE,
        "lr_betas": PROBABILITY,
        "eps": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "muon_lr": POSITIVE,
        "muon_momentum": PROBABILITY,
        "grad_clip": NON_NEGATIVE,
    }

    def __post_init__(self) -> None:
        self.lr_betas = tuple(self.lr_betas)  # JSON gives a list
        super().__post_init__()
        if len(self.lr_betas) != 2:
            raise UserError(f"--lr_betas takes two values, got {len(self.lr_betas)}")


# The learning-rate schedules by name: how much of the way from --lr down to --min_lr is left at a
# share ``progress`` of the decay (0 to 1) with ``--cooldown`` ``c``, or None for a schedule that
# does not decay. The one home of the names: the flag's choices, the --min_lr check and the rate
# itself (train.optim.lr_at).
DECAY_SHAPES: dict[str, Callable[[float, float], float] | None] = {
    "constant": None,
    "cosine": lambda progress, _c: 0.5 * (1 + math.cos(math.pi * progress)),
    "linear": lambda progress, _c: 1 - progress,
    # warmup-stable-decay: the peak, then 1 - sqrt over the last c (Hägele et al. 2024, "Scaling
    # Laws and Compute-Optimal Training Beyond Fixed Training Durations")
    "wsd": lambda progress, c: 1 - math.sqrt(max(0.0, progress - 1 + c) / c),
}


@dataclass
class ScheduleConfig(Section):
    """The learning-rate and dropout schedules, pure functions of the step (so a resumed run
    follows them)."""

    lr_schedule: str = field(
        default="constant",
        metadata=doc(
            "constant (the study); cosine, linear or wsd (--lr held until the last --cooldown, "
            "then 1 - sqrt): linear warmup, then that decay to --min_lr",
            choices=list(DECAY_SHAPES),
        ),
    )
    warmup_steps: int = field(default=0, metadata=doc("linear warmup steps"))
    min_lr: float = field(default=0.0, metadata=doc("final learning rate of every decay"))
    cooldown: float = field(
        default=0.2,
        metadata=doc(
            "the share of the decay that wsd's 1 - sqrt cooldown takes (0.2 matched the cosine "
            "in Hägele et al. 2024); the other schedules ignore it, as constant ignores --min_lr"
        ),
    )
    dropout_from: float = field(
        default=0.0,
        metadata=doc(
            "share of the schedule's steps trained without dropout; the model's rates from "
            "then on (late dropout, Liu et al. 2023)"
        ),
    )

    RANGES = {
        "warmup_steps": NON_NEGATIVE,
        "min_lr": NON_NEGATIVE,
        "cooldown": Range(0, 1, lo_open=True),
        "dropout_from": PROBABILITY,
    }
