"""The training run's settings (``gpt-study train``), one section of :class:`~gpt_study.config.Config`.

Field names are the study's flag names and defaults its values; each field's ``doc`` is its flag's
help, and ``RANGES`` the values it accepts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from gpt_study.config.fields import (
    AT_LEAST_1,
    NON_NEGATIVE,
    POSITIVE,
    PROBABILITY,
    Range,
    check_choices,
    check_ranges,
    doc,
    thread_count,
)
from gpt_study.runtime.errors import UserError


@dataclass
class TrainConfig:
    """The training run (``gpt-study train``): the study's recipe plus what makes it trustworthy."""

    data: str | None = field(
        default=None,
        metadata=doc(
            "prepared folder (default: <dataset_root>/<tokenizer>-<vocab_size>, as prepare names it)"
        ),
    )
    save_root: str = field(
        default="runs/gpt", metadata=doc("folder for checkpoints, logs and plots")
    )
    resume: bool = field(
        default=False, metadata=doc("continue the run in --save_root from its last checkpoint")
    )
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
    weight_decay: float = field(default=5e-4, metadata=doc("AdamW weight decay"))
    lr: float = field(default=2.5e-4, metadata=doc("peak learning rate"))
    lr_betas: tuple[float, float] = field(default=(0.9, 0.98), metadata=doc("AdamW betas", nargs=2))
    eps: float = field(default=1e-9, metadata=doc("AdamW epsilon"))
    optimizer: str = field(
        default="adamw",
        metadata=doc(
            "adamw (the study) or muon: Muon for the blocks' weight matrices, AdamW for "
            "embeddings, output layer, biases and LayerNorms (needs torch 2.9 or later)",
            choices=["adamw", "muon"],
        ),
    )
    muon_lr: float = field(
        default=0.02,
        metadata=doc(
            "--optimizer muon: Muon's peak learning rate; the schedule scales it as it scales --lr"
        ),
    )
    muon_momentum: float = field(
        default=0.95, metadata=doc("--optimizer muon: Muon's (Nesterov) momentum")
    )
    lr_schedule: str = field(
        default="constant",
        metadata=doc(
            "constant (the study) or cosine (linear warmup, cosine decay)",
            choices=["constant", "cosine"],
        ),
    )
    warmup_steps: int = field(
        default=0, metadata=doc("linear warmup steps for --lr_schedule cosine")
    )
    min_lr: float = field(default=0.0, metadata=doc("final learning rate of the cosine schedule"))
    context_size: int = field(
        default=128,
        metadata=doc("tokens per training row (must be <= max_len); see --study_rows"),
    )
    batch_size: int = field(default=64, metadata=doc("rows per step on each process"))
    grad_accum: int = field(default=1, metadata=doc("micro-batches per optimizer step"))
    grad_clip: float = field(default=0.0, metadata=doc("clip the gradient norm to this (0: off)"))
    epoch: int = field(default=512, metadata=doc("epochs to train (the study's flag)"))
    iters_per_epoch: int = field(default=1024, metadata=doc("optimizer steps per epoch"))
    eval_iters: int = field(
        default=0, metadata=doc("cap on validation batches (0: the whole valid split)")
    )
    max_steps: int = field(
        default=0, metadata=doc("stop after this many optimizer steps (0: no cap)")
    )
    max_time: float = field(
        default=0.0,
        metadata=doc(
            "stop after this many minutes of this invocation (0: no cap); a resumed run gets a fresh budget"
        ),
    )
    print_interval: int = field(default=100, metadata=doc("steps between console log lines"))
    progress: bool | None = field(
        default=None, metadata=doc("progress bar (default: only when stderr is a terminal)")
    )
    sample_tokens: int = field(
        default=256,
        metadata=doc("most tokens of the greedy sample story written each epoch (0: none)"),
    )
    device: str = field(default="auto", metadata=doc("auto, cpu, cuda, cuda:N or mps"))
    dtype: str = field(
        default="float32",
        metadata=doc(
            "float32 (the study), auto (bf16 autocast where the hardware computes it natively) "
            "or bfloat16",
            choices=["auto", "float32", "bfloat16"],
        ),
    )
    compile: bool = field(default=False, metadata=doc("torch.compile the model"))
    threads: int = field(
        default=0,
        metadata=doc(
            "CPU threads for torch; 0 or auto: each epoch, time a few steps with 1 thread and "
            "with all cores and keep the faster (other work sharing the cores makes 1 faster); "
            "N: pin N threads (for bit-exact resume, pin them)",
            type=thread_count,
            metavar="N|auto",
        ),
    )
    seed: int = field(default=1234, metadata=doc("seed for weights, dropout and data order"))
    wb_flag: bool = field(
        default=False, metadata=doc("log to Weights & Biases (needs pip install wandb)")
    )
    wb_project: str = field(default="gpt_study", metadata=doc("wandb project"))
    wb_name: str | None = field(default=None, metadata=doc("wandb run name"))
    wb_notes: str | None = field(default=None, metadata=doc("wandb notes"))
    wb_tags: list[str] = field(default_factory=list, metadata=doc("wandb tags", nargs="*"))
    decay_all: bool = field(
        default=True,
        metadata=doc(
            "AdamW weight decay on every parameter, biases and LayerNorms included (the study); "
            "--no-decay_all decays only weight matrices and embeddings"
        ),
    )
    study_rows: bool = field(
        default=True,
        metadata=doc(
            "training rows as the study drew them: the split cut into rows of --context_size "
            "tokens, inputs the first context_size - 1; --no-study_rows: windows of "
            "context_size + 1 tokens at any offset, context_size inputs"
        ),
    )
    best_by: str = field(
        default="loss",
        metadata=doc(
            "the validation number that picks the best checkpoint: loss (the study's smoothed, "
            "weighted valid loss) or nll",
            choices=["loss", "nll"],
        ),
    )

    RANGES: ClassVar[dict[str, Range]] = {
        "label_smoothing": PROBABILITY,
        "sp_weight": POSITIVE,
        "weight_decay": NON_NEGATIVE,
        "lr": POSITIVE,
        "lr_betas": PROBABILITY,
        "eps": POSITIVE,
        "muon_lr": POSITIVE,
        "muon_momentum": PROBABILITY,
        "warmup_steps": NON_NEGATIVE,
        "min_lr": NON_NEGATIVE,
        **dict.fromkeys(
            ("context_size", "batch_size", "grad_accum", "epoch", "iters_per_epoch"), AT_LEAST_1
        ),
        "print_interval": AT_LEAST_1,
        **dict.fromkeys(("grad_clip", "eval_iters", "max_steps", "max_time"), NON_NEGATIVE),
        **dict.fromkeys(("sample_tokens", "threads", "seed"), NON_NEGATIVE),
    }

    def __post_init__(self) -> None:
        self.lr_betas = tuple(self.lr_betas)  # JSON gives a list
        check_ranges(self, self.RANGES)
        check_choices(self)
        if len(self.lr_betas) != 2:
            raise UserError(f"--lr_betas takes two values, got {len(self.lr_betas)}")
        if self.lr_schedule == "cosine" and self.min_lr > self.lr:
            raise UserError(f"--min_lr {self.min_lr} is above --lr {self.lr}: lower it")
        if self.study_rows and self.context_size < 2:
            raise UserError("--context_size must be at least 2 with --study_rows")

    @property
    def window(self) -> int:
        """Input positions of a training row, the window the model learns: ``context_size - 1``
        with ``study_rows`` (the study's 128-token rows gave 127 inputs), else ``context_size``.
        Validation and generation keep to it."""
        return self.context_size - 1 if self.study_rows else self.context_size
