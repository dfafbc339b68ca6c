"""Typed configuration: one source of truth for every stage, and the one reader of a saved one.

What lives here: ``model`` (:class:`GPTConfig`, the architecture), ``train`` (:class:`TrainConfig`,
the run), ``data`` (:class:`DataConfig`, the corpus, and the special tokens), ``sample``
(:class:`SampleConfig`, decoding), ``fields`` (each field's help, range and choices) and
``presets`` (named starting points). This package module bundles them as :class:`Config`, saved as
JSON inside every checkpoint and read back by :func:`load_config` only.

Field names are the study's flag names (``--lr``, ``--sp_weight``, ``--d_model`` ...) and
defaults its values, so its scripts still read true. Imports: only ``runtime.errors`` and
``runtime.files`` of the package, and no torch, so ``gpt-study prepare`` and ``--help`` start
quickly.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt_study.config.data import BYTE_VOCAB, EOT_ID, SOT_ID, SPECIALS, UNK_ID, DataConfig
from gpt_study.config.fields import check_choices
from gpt_study.config.model import GPTConfig
from gpt_study.config.sample import SampleConfig
from gpt_study.config.train import TrainConfig
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import write_json_atomic

__all__ = [
    "BYTE_VOCAB",
    "EOT_ID",
    "SOT_ID",
    "SPECIALS",
    "UNK_ID",
    "Config",
    "DataConfig",
    "GPTConfig",
    "SampleConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
    "load_config",
    "save_config",
]


@dataclass
class Config:
    """Everything that defines a run; saved as ``config.json`` in every checkpoint."""

    model: GPTConfig = field(default_factory=GPTConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    data: DataConfig = field(default_factory=DataConfig)
    preset: str = "seed"

    def __post_init__(self) -> None:
        check_choices(self)
        if self.train.context_size > self.model.max_len:
            raise UserError(
                f"--context_size {self.train.context_size} is above --max_len {self.model.max_len}: "
                "raise --max_len or lower --context_size"
            )


def _from_dict(cls: type, values: dict[str, Any], where: str) -> Any:
    """Build dataclass ``cls`` from ``values``, rejecting unknown keys with a clear message."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise UserError(
            f"unknown setting(s) {', '.join(unknown)} in {where}: remove them or update gpt-study"
        )
    return cls(**values)


def config_from_dict(d: dict[str, Any], where: str = "config") -> Config:
    """The inverse of :func:`config_to_dict`."""
    parts = {"model": GPTConfig, "train": TrainConfig, "sample": SampleConfig, "data": DataConfig}
    unknown = sorted(set(d) - set(parts) - {"preset"})
    if unknown:
        raise UserError(f"unknown section(s) {', '.join(unknown)} in {where}")
    kw = {k: _from_dict(cls, d.get(k, {}), f"{where} [{k}]") for k, cls in parts.items()}
    return Config(**kw, preset=d.get("preset", "seed"))


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)


def save_config(path: str | os.PathLike, cfg: Config) -> None:
    write_json_atomic(path, config_to_dict(cfg))


def load_config(path: str | os.PathLike) -> Config:
    """The one function that reads a saved config."""
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"no config at {path}: is this a gpt-study checkpoint folder?") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"{path} is not valid JSON ({e.msg}, line {e.lineno}): the file is damaged"
        ) from None
    train = d.get("train") if isinstance(d, dict) else None
    if isinstance(train, dict):
        # Configs saved before these settings existed decayed only the weight matrices, drew
        # windows at any offset and kept the checkpoint of lowest NLL as best: they keep that.
        train.setdefault("decay_all", False)
        train.setdefault("study_rows", False)
        train.setdefault("best_by", "nll")
    return config_from_dict(d, str(path))
