"""What one training run holds while it runs (:class:`Run`), and what it ends with."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gpt_study.config import Config
from gpt_study.data.dataset import PreparedData, RowSampler
from gpt_study.model.gpt import GPT
from gpt_study.runtime.device import ThreadTuner
from gpt_study.runtime.plan import RuntimePlan
from gpt_study.train.ema import WeightAverage
from gpt_study.train.observe import Observer
from gpt_study.train.optim import Optimizer
from gpt_study.train.signals import StopSignals, exit_code
from gpt_study.train.state import TrainState


@dataclass
class TrainResult:
    """What a call to :func:`~gpt_study.train.fit.fit` ended with."""

    save_root: Path
    step: int
    epoch: int
    stopped: str  # "done", "max_steps", "max_time", "SIGINT", "SIGTERM"
    best_valid_nll: float | None = None
    last_valid: dict[str, Any] = field(default_factory=dict)
    tokens_per_s: float = 0.0

    @property
    def exit_code(self) -> int:
        return exit_code(self.stopped)


@dataclass
class Run:
    """Everything one training run holds, passed to the loop's parts."""

    cfg: Config
    net: GPT  # the plain model: weights, checkpoints, validation, the sample story
    # What a training step calls, (x, y) -> loss: LMLoss(net), the model and the loss as one
    # module, compiled under --compile and wrapped in DistributedDataParallel under torchrun.
    loss_fn: torch.nn.Module
    optimizer: Optimizer  # AdamW, or Muon and AdamW together
    sampler: RowSampler
    data: PreparedData
    tokenizer: Any
    plan: RuntimePlan  # the device choices: device, autocast dtype, scaler, pinning, ...
    state: TrainState
    scaler: torch.amp.GradScaler | None = None  # --dtype float16
    ema: WeightAverage | None = None  # --ema: the weights validation and best/ use
    observer: Observer | None = None  # set once logging is up
    stop: StopSignals | None = None
    tuner: ThreadTuner = field(default_factory=lambda: ThreadTuner(()))  # --threads auto

    @property
    def device(self) -> str:
        return self.plan.device

    @property
    def dtype(self) -> torch.dtype:
        return self.plan.dtype

    @property
    def tokens_per_step(self) -> int:
        return self.sampler.global_rows * self.sampler.inputs

    @property
    def save_root(self) -> Path:
        return Path(self.cfg.train.save_root)

    def result(self, stopped: str, rate: float = 0.0) -> TrainResult:
        st, ipe = self.state, self.cfg.train.budget.iters_per_epoch
        return TrainResult(
            self.save_root, st.step, st.step // ipe, stopped, st.best_valid_nll, st.last_valid, rate
        )
