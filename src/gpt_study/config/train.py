"""The training run's settings (``gpt-study train``), one section of :class:`~gpt_study.config.Config`.

:class:`TrainConfig` holds the run's places and seed, and one small dataclass per concern (loss,
optim, schedule, rows, budget, valid, runtime, log), each checking its own ranges and choices, so
each reads on its own. Field names are the study's flag names, unique across the sections, and
defaults its values; each field's ``doc`` is its flag's help, ``RANGES`` the values it accepts, and
``resume="free"`` marks a setting that may change on ``--resume`` without changing what the run
computes. The flat names still work everywhere: ``--lr``, ``TrainConfig(lr=1e-3)``,
``build_config(train={"lr": 1e-3})``, presets, and config.json files saved before the sections.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from gpt_study.config.fields import (
    AT_LEAST_1,
    NON_NEGATIVE,
    PROBABILITY,
    SEED,
    Range,
    Section,
    check_choices,
    check_ranges,
    doc,
    flat_fields,
    sections,
)
from gpt_study.config.learning import DECAY_SHAPES, LossConfig, OptimConfig, ScheduleConfig
from gpt_study.config.runtime import RuntimeConfig
from gpt_study.runtime.errors import UserError


@dataclass
class RowsConfig(Section):
    """The rows of a step: their length, how many, and how they are cut from the split."""

    context_size: int = field(
        default=128,
        metadata=doc("tokens per training row (must be <= max_len); see --study_rows"),
    )
    batch_size: int = field(
        default=64,
        # free: fit warns when the global batch (x processes x grad_accum) changes
        metadata=doc("rows per step on each process", resume="free"),
    )
    grad_accum: int = field(
        default=1, metadata=doc("micro-batches per optimizer step", resume="free")
    )
    study_rows: bool = field(
        default=True,
        metadata=doc(
            "training rows as the study drew them: the split cut into rows of --context_size "
            "tokens, inputs the first context_size - 1; --no-study_rows: windows of "
            "context_size + 1 tokens at any offset, context_size inputs"
        ),
    )

    story_starts: float = field(
        default=0.0,
        metadata=doc(
            "share of each step's rows that start at a story's <sot> instead of at any offset "
            "(with --no-study_rows); 0: none"
        ),
    )

    RANGES = {
        **dict.fromkeys(("context_size", "batch_size", "grad_accum"), AT_LEAST_1),
        "story_starts": PROBABILITY,
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.study_rows and self.context_size < 2:
            raise UserError("--context_size must be at least 2 with --study_rows")
        if self.study_rows and self.story_starts:
            raise UserError(
                "--story_starts places rows at stories' starts, but --study_rows cuts the split "
                "into fixed rows: add --no-study_rows, or drop --story_starts"
            )


@dataclass
class BudgetConfig(Section):
    """How long the run trains: the schedule's length, and caps that cut it short."""

    epoch: int = field(
        default=512, metadata=doc("epochs to train (the study's flag)", resume="free")
    )
    iters_per_epoch: int = field(default=1024, metadata=doc("optimizer steps per epoch"))
    max_steps: int = field(
        default=0,
        metadata=doc("stop after this many optimizer steps (0: no cap)", resume="free"),
    )
    max_time: float = field(
        default=0.0,
        metadata=doc(
            "stop after this many minutes of this invocation (0: no cap); a resumed run gets a "
            "fresh budget",
            resume="free",
        ),
    )
    fit_epochs: bool = field(
        default=False,
        metadata=doc(
            "with --max_time: after the first and second epochs, set --epoch to the whole epochs "
            "nearest to what the time budget holds at the speed measured, then refit if the speed "
            "drifts, so the schedule ends at the budget (--max_time cuts at most its last half "
            "epoch): train/budget.py",
            resume="free",
        ),
    )

    @property
    def max_time_s(self) -> float:
        """``--max_time`` in seconds (0: no time budget)."""
        return self.max_time * 60

    @property
    def total_steps(self) -> int:
        """The schedule's length: ``--epoch x --iters_per_epoch`` optimizer steps."""
        return self.epoch * self.iters_per_epoch

    def schedule_done(self, step: int) -> bool:
        """Whether ``step`` optimizer steps complete the schedule (as fitted so far)."""
        return step >= self.total_steps

    def at_step_cap(self, step: int) -> bool:
        """Whether ``--max_steps`` (0: no cap) stops a run at ``step``."""
        return bool(self.max_steps) and step >= self.max_steps

    RANGES = {
        **dict.fromkeys(("epoch", "iters_per_epoch"), AT_LEAST_1),
        **dict.fromkeys(("max_steps", "max_time"), NON_NEGATIVE),
    }


@dataclass
class ValidConfig(Section):
    """The end of each epoch: validation, the best checkpoint's measure, the sample story."""

    eval_iters: int = field(
        default=0,
        metadata=doc("cap on validation batches (0: the whole valid split)", resume="free"),
    )
    best_by: str = field(
        default="loss",
        metadata=doc(
            "the validation number that picks the best checkpoint: loss (the study's smoothed, "
            "weighted valid loss) or nll",
            choices=["loss", "nll"],
        ),
    )
    sample_tokens: int = field(
        default=256,
        metadata=doc("most tokens of the greedy sample story written each epoch (0: none)"),
    )

    RANGES = dict.fromkeys(("eval_iters", "sample_tokens"), NON_NEGATIVE)

    def best_of(self, records: list[dict[str, Any]]) -> dict[str, Any] | None:
        """The validation ``best/`` holds among ``records`` (in order): the first lowest
        ``valid_loss`` or ``valid_nll`` (``--best_by``), a later tie does not replace it. The one
        rule of training (which saves ``best/``), compare and the server (which report it)."""
        key = f"valid_{self.best_by}"
        return min(
            (r for r in records if r.get(key) is not None), key=lambda r: r[key], default=None
        )


@dataclass
class LogConfig(Section):
    """What the run reports, and where: the console, a progress bar, Weights & Biases."""

    print_interval: int = field(
        default=100, metadata=doc("steps between console log lines", resume="free")
    )
    progress: bool | None = field(
        default=None,
        metadata=doc("progress bar (default: only when stderr is a terminal)", resume="free"),
    )
    wb_flag: bool = field(
        default=False,
        metadata=doc("log to Weights & Biases (needs the wandb extra)", resume="free"),
    )
    wb_project: str = field(default="gpt_study", metadata=doc("wandb project", resume="free"))
    wb_name: str | None = field(default=None, metadata=doc("wandb run name", resume="free"))
    wb_notes: str | None = field(default=None, metadata=doc("wandb notes", resume="free"))
    wb_tags: list[str] = field(
        default_factory=list, metadata=doc("wandb tags", nargs="*", resume="free")
    )

    RANGES = {"print_interval": AT_LEAST_1}


@dataclass(init=False)
class TrainConfig:
    """The training run (``gpt-study train``): the study's recipe plus what makes it trustworthy."""

    data: str | None = field(
        default=None,
        metadata=doc(
            "prepared folder (default: <dataset_root>/<tokenizer>-<vocab_size>, as prepare "
            "names it)",
            resume="free",
        ),
    )
    init_from: str | None = field(
        default=None,
        metadata=doc(
            "a checkpoint whose weights the run starts from (fine-tuning; gpt-study's own or one "
            "gpt-study import wrote): the model options are its, the optimizer starts fresh, and "
            "--data must be prepared with its tokenizer (prepare --tokenizer_from CHECKPOINT)",
            resume="fixed",
        ),
    )
    save_root: str = field(
        default="runs/gpt", metadata=doc("folder for checkpoints, logs and plots", resume="free")
    )
    seed: int = field(default=1234, metadata=doc("seed for weights, dropout and data order"))
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    rows: RowsConfig = field(default_factory=RowsConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    valid: ValidConfig = field(default_factory=ValidConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    log: LogConfig = field(default_factory=LogConfig)

    RANGES: ClassVar[dict[str, Range]] = {"seed": SEED}

    def __init__(self, **settings: Any) -> None:
        """Settings by their flat names (``TrainConfig(lr=1e-3)``), as flags, presets and older
        config.json files give them, or whole sections (``optim=OptimConfig(...)``, as
        :func:`dataclasses.replace` passes them); a flat name wins over its section's value."""
        names, parts = flat_fields(TrainConfig), sections(TrainConfig)
        unknown = sorted(set(settings) - set(names) - set(parts))
        if unknown:
            raise TypeError(f"TrainConfig has no setting(s) {', '.join(unknown)}")
        given: dict[str | None, dict[str, Any]] = {}
        for name, value in settings.items():
            if name in names:
                given.setdefault(names[name][0], {})[name] = value
        for f in fields(self):
            own = given.get(f.name, {})
            if f.name not in parts:
                value = given.get(None, {}).get(f.name, _default(f))
            elif f.name in settings:
                value = dataclasses.replace(settings[f.name], **own) if own else settings[f.name]
            else:
                value = parts[f.name](**own)
            setattr(self, f.name, value)
        self.__post_init__()

    def __post_init__(self) -> None:
        """The checks that span sections; each section has checked its own."""
        check_ranges(self, self.RANGES)
        check_choices(self)
        s, lr = self.schedule, self.optim.lr
        if DECAY_SHAPES[s.lr_schedule] is not None and s.min_lr > lr:
            raise UserError(f"--min_lr {s.min_lr} is above --lr {lr}: lower it")

    @property
    def window(self) -> int:
        """Input positions of a training row, the window the model learns (:func:`row_inputs`).
        Validation and generation keep to it."""
        return row_inputs(self.rows.context_size, self.rows.study_rows)

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (``lr``, not ``optim.lr``), a copy: the names of the
        flags, of presets and of compare's tables."""
        d = dataclasses.asdict(self)
        out: dict[str, Any] = {}
        for name, value in d.items():
            out.update(value if name in sections(TrainConfig) else {name: value})
        return out


def row_inputs(context_size: int, study_rows: bool) -> int:
    """Input tokens of a training row: ``context_size - 1`` for the study's rows (its 128-token
    rows gave 127 inputs and their targets), else ``context_size`` (a window of one more token)."""
    return context_size - 1 if study_rows else context_size


def _default(f: dataclasses.Field[Any]) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default
