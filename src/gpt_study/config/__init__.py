"""Typed configuration: one source of truth for every stage, and the one reader of a saved one.

What lives here: ``model`` (:class:`GPTConfig`, the architecture), ``train`` (:class:`TrainConfig`,
the run; its ``runtime`` section in ``runtime``), ``data`` (:class:`DataConfig`, the corpus, and
the special tokens), ``sample`` (:class:`SampleConfig`, decoding), ``fields`` (each field's help,
range and choices) and ``presets`` (named starting points). This package module bundles them as
:class:`Config`, saved as JSON inside every checkpoint and read back by :func:`load_config` only.
``train`` is saved in its sections (``"optim": {"lr": ...}``); a ``train`` of flat names, as saved
before the sections, still loads, so every checkpoint ever written keeps working.

Field names are the study's flag names (``--lr``, ``--sp_weight``, ``--d_model`` ...) and
defaults its values, so its scripts still read true. Imports: only ``runtime.errors`` and
``runtime.files`` of the package, and no torch, so ``gpt-study prepare`` and ``--help`` start
quickly.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from gpt_study.config.data import (
    BYTE_VOCAB,
    EOT_ID,
    SOT_ID,
    SPECIALS,
    UNK_ID,
    DataConfig,
    data_folder,
)
from gpt_study.config.fields import check_choices, flat_fields, flatten, sections
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

    def prepared_folder(self) -> Path:
        """The prepared folder the run trains and validates on: ``train.data`` as training
        recorded it, else where ``prepare`` puts the data settings' folder. Every reader of a
        run's data (evaluate, compare, export's check) goes through here."""
        return data_folder(self.train.data, asdict(self.data))

    def __post_init__(self) -> None:
        check_choices(self)
        context_size = self.train.rows.context_size
        if context_size > self.model.max_len:
            raise UserError(
                f"--context_size {context_size} is above --max_len {self.model.max_len}: "
                "raise --max_len or lower --context_size"
            )


def _from_dict(cls: type, values: Any, where: str) -> Any:
    """Build dataclass ``cls`` from ``values``: its settings by flat name, its sections (if any)
    as dicts, or both; anything else is refused with one line naming it."""
    if not isinstance(values, dict):
        raise UserError(f"{where} is not a table of settings: the file is damaged")
    parts, names = sections(cls), flat_fields(cls)
    unknown = [k for k in values if k not in names and k not in parts]
    for k, v in values.items():
        if k in parts and not isinstance(v, dict):
            raise UserError(f"{where} {k} is not a table of settings: the file is damaged")
        if k in parts:
            unknown += [f"{k}.{n}" for n in v if names.get(n, (None,))[0] != k]
    if unknown:
        raise UserError(
            f"unknown setting(s) {', '.join(sorted(unknown))} in {where}: remove them or update "
            "gpt-study"
        )
    return cls(**flatten(cls, values))


def config_from_dict(d: dict[str, Any], where: str = "config") -> Config:
    """The inverse of :func:`config_to_dict` (either form)."""
    parts = {"model": GPTConfig, "train": TrainConfig, "sample": SampleConfig, "data": DataConfig}
    if not isinstance(d, dict):
        raise UserError(f"{where} is not a table of settings: the file is damaged")
    unknown = sorted(set(d) - set(parts) - {"preset"})
    if unknown:
        raise UserError(
            f"unknown section(s) {', '.join(unknown)} in {where}: a gpt-study config holds only "
            f"{', '.join(parts)} and preset; remove them, or pass a config gpt-study wrote"
        )
    kw = {k: _from_dict(cls, d.get(k, {}), f"{where} [{k}]") for k, cls in parts.items()}
    return Config(**kw, preset=d.get("preset", "seed"))


def config_to_dict(cfg: Config, flat: bool = False) -> dict[str, Any]:
    """``cfg`` as JSON-ready dicts: ``train`` in its sections (what config.json holds), or with
    ``flat`` by the study's flat names (what the tables of compare and serve show)."""
    d = asdict(cfg)
    if flat:
        d["train"] = cfg.train.flat()
    return d


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
    if isinstance(train, dict) and not set(train) & set(sections(TrainConfig)):
        # Flat, as saved before the sections. ``resume`` was stored, though it only said how
        # that invocation started. Configs saved before these settings existed decayed only the
        # weight matrices, drew windows at any offset and kept the checkpoint of lowest NLL as
        # best: they keep that. (``threads`` 0 is auto: RuntimeConfig reads it so.)
        train.pop("resume", None)
        train.setdefault("decay_all", False)
        train.setdefault("study_rows", False)
        train.setdefault("best_by", "nll")
    try:
        return config_from_dict(d, str(path))
    except UserError as e:  # a value of the wrong type or range: say which file holds it
        raise (e if str(path) in str(e) else UserError(f"{path}: {e}")) from None
