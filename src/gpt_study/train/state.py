"""The training state saved in ``state.json`` beside the weights, and the random-number states.

Together with the weights and the optimizer state it is everything an exact resume needs: rows
are a pure function of ``(seed, step)`` and the learning rate of the step, so only the step, the
RNG states of every process and the bookkeeping of the best checkpoint are recorded here.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpt_study.runtime.errors import UserError


@dataclass
class TrainState:
    """What ``state.json`` records (``rng`` holds one entry per process, rank order)."""

    step: int = 0
    epoch: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0
    best_valid_nll: float | None = None  # NLL of the best checkpoint
    best_step: int | None = None
    best_valid_loss: float | None = (
        None  # its smoothed, weighted loss (picks it with --best_by loss)
    )
    last_valid: dict[str, Any] = field(default_factory=dict)
    sampler: dict[str, Any] = field(default_factory=dict)
    wandb_id: str | None = None
    world_size: int = 1
    torch: str = ""
    data_digests: dict[str, str] = field(default_factory=dict)  # the prepared folder's, at start
    rng: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_rng: bool = True) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        if not with_rng:
            d.pop("rng")
        return d

    @classmethod
    def from_dict(cls, d: Any, path: str | Path = "state.json") -> TrainState:
        """Parse a saved state; anything missing or mistyped is one line naming the file."""
        names = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or not isinstance(d.get("step"), int) or d["step"] < 0:
            raise UserError(f"{path} has no valid step: the checkpoint's state is damaged")
        try:
            state = cls(**{k: v for k, v in d.items() if k in names})
        except TypeError as e:
            raise UserError(f"{path} is not a training state ({e}): it is damaged") from None
        if not isinstance(state.rng, list) or not isinstance(state.last_valid, dict):
            raise UserError(f"{path} has a mistyped rng or last_valid: it is damaged")
        return state


def rng_state(device: str) -> dict[str, Any]:
    """This process's random-number states, as JSON (torch's as lists of bytes)."""
    st: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "python": _py_state_to_json(random.getstate()),
        "numpy": _np_state_to_json(np.random.get_state()),
    }
    if device.startswith("cuda"):
        st["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return st


def set_rng_state(st: dict[str, Any], device: str) -> None:
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    random.setstate(_py_state_from_json(st["python"]))
    np.random.set_state(_np_state_from_json(st["numpy"]))
    if "cuda" in st and device.startswith("cuda"):
        torch.cuda.set_rng_state(torch.tensor(st["cuda"], dtype=torch.uint8), device)


def _py_state_to_json(s: tuple) -> list:
    return [s[0], list(s[1]), s[2]]


def _py_state_from_json(s: list) -> tuple:
    return (s[0], tuple(s[1]), s[2])


def _np_state_to_json(s: tuple) -> list:
    return [s[0], s[1].tolist(), int(s[2]), int(s[3]), float(s[4])]


def _np_state_from_json(s: list) -> tuple:
    return (s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
