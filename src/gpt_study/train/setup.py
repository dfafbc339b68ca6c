"""From overrides to the run's :class:`~gpt_study.config.Config`, for a new run or a resumed one.

This is the library form of ``gpt-study train``'s flags: :func:`build_config` takes a preset and
per-section overrides (``train``, ``model``, ``data``: the flat setting names of TrainConfig, the
field names of GPTConfig and DataConfig) and returns one validated Config, which
:func:`~gpt_study.train.fit.fit` trains. On ``resume`` the saved run's config is the base, and a
change to a setting not marked ``resume="free"`` in its field is logged as a warning. The
data section only names the default prepared folder and must agree with what ``prepare``
recorded; the model's vocabulary size always comes from the folder's tokenizer. With
``init_from`` (fine-tuning) the model section is the checkpoint's (only its dropouts may change)
and the folder must be prepared with the checkpoint's tokenizer.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from gpt_study.checkpoint import CONFIG as CHECKPOINT_CONFIG
from gpt_study.checkpoint import TOKENIZER, WEIGHTS, load_checkpoint
from gpt_study.config import (
    Config,
    DataConfig,
    TrainConfig,
    config_from_dict,
    config_to_dict,
    load_config,
)
from gpt_study.config.data import data_folder
from gpt_study.config.fields import fixed_on_resume, flat_fields, flatten, free_on_resume
from gpt_study.config.presets import preset_config
from gpt_study.data.dataset import PreparedData, open_prepared
from gpt_study.data.tokenizer import Tokenizer, load_tokenizer
from gpt_study.runs import CONFIG, LAST, damaged_last, resume_source
from gpt_study.runtime.errors import UserError

log = logging.getLogger("gpt_study.train")

# DataConfig fields that train accepts: the study's, to find the default prepared folder.
DATA_FLAGS = ("dataset_root", "min_freq", "vocab_size", "tokenizer")
# Model options a run that starts from a checkpoint may change: they hold no weights.
FREE_ON_INIT = ("attention_drop", "residual_drop", "embedding_drop", "inner_drop")


def build_config(
    preset: str | None = None,
    train: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
    resume: bool = False,
) -> Config:
    """The Config of a run: ``preset`` (default ``seed``, the study) plus overrides, or, with
    ``resume=True`` and ``train={"save_root": ...}``, the saved run's config plus the overrides
    (a warning for each that changes what the run computes). Train it with ``fit(cfg, resume)``.
    """
    train = flatten(TrainConfig, dict(train or {}))
    model, data = dict(model or {}), dict(data or {})
    if "resume" in train:
        raise UserError("resume is no setting of the run: pass build_config(..., resume=True)")
    if "vocab_size" in model:
        raise UserError("the model's vocab_size comes from the tokenizer: drop it")
    unknown = sorted(set(data) - set(DATA_FLAGS))
    if unknown:
        raise UserError(f"train takes only {', '.join(DATA_FLAGS)} of the data settings")
    save_root = Path(train.get("save_root", TrainConfig().save_root))
    if resume:
        return _resumed_config(save_root, preset, train, model)
    init = Path(train["init_from"]) if train.get("init_from") else None
    if init is not None:
        model = _model_of(init, model)
    prepared = open_prepared(data_folder(train.get("data"), data))
    _check_meta(prepared, data)
    tokenizer = load_tokenizer(prepared.tokenizer_path)
    if init is not None:
        _check_tokenizer_of(init, tokenizer, prepared.folder)
        train["init_from"] = str(init.resolve())
    train["data"] = str(prepared.folder.resolve())  # a checkpoint works from any directory
    model["vocab_size"] = tokenizer.vocab_size
    recorded = dataclasses.asdict(_data_config(prepared, data, tokenizer))
    return preset_config(preset or "seed", train=train, model=model, data=recorded)


def _model_of(path: Path, model_ov: dict[str, Any]) -> dict[str, Any]:
    """The model options of the checkpoint at ``path``, with the overrides that change no
    weight (:data:`FREE_ON_INIT`); any other that differs is refused in one line."""
    if not (path / WEIGHTS).is_file():
        load_checkpoint(path)  # its one line: no checkpoint there, or a run folder (pass best/)
    options = dataclasses.asdict(load_config(path / CHECKPOINT_CONFIG).model)
    for k, v in model_ov.items():
        if k not in FREE_ON_INIT and options.get(k) != v:
            raise UserError(
                f"--{k} {v}, but the model options come from --init_from {path} ({k} "
                f"{options.get(k)}): drop the flag (only {', '.join(FREE_ON_INIT)} may change)"
            )
    return {**options, **model_ov}


def _check_tokenizer_of(path: Path, tokenizer: Tokenizer, folder: Path) -> None:
    """The prepared folder must split text as the checkpoint's tokenizer does."""
    own = load_tokenizer(path / TOKENIZER)
    if own.vocabulary_key() != tokenizer.vocabulary_key():
        raise UserError(
            f"{folder} was prepared with another tokenizer ({tokenizer.kind}, "
            f"{tokenizer.vocab_size} tokens) than --init_from {path} ({own.kind}, "
            f"{own.vocab_size} tokens): prepare one with `gpt-study prepare --tokenizer_from "
            f"{path} --data <corpus> --out <folder>` and pass it as --data"
        )


def _check_meta(data: PreparedData, data_ov: dict[str, Any]) -> None:
    """Flags that describe the corpus must agree with what ``prepare`` recorded."""
    settings = data.info.settings
    for name in ("min_freq", "tokenizer"):
        if name in data_ov and name in settings and settings[name] != data_ov[name]:
            raise UserError(
                f"--{name} {data_ov[name]} but {data.folder} was prepared with {settings[name]}: "
                f"drop the flag or prepare a folder with it"
            )


def _data_config(data: PreparedData, data_ov: dict[str, Any], tokenizer: Tokenizer) -> DataConfig:
    """The DataConfig recorded in the checkpoint: what ``prepare`` used, as meta.json says."""
    settings = data.info.settings
    known = {f.name for f in dataclasses.fields(DataConfig)}
    values = {k: v for k, v in settings.items() if k in known}
    values.update(data_ov)
    values.setdefault("tokenizer", getattr(tokenizer, "kind", "word"))
    values["vocab_size"] = tokenizer.vocab_size
    values["out"] = str(data.folder.resolve())
    try:
        return DataConfig(**values)
    except (TypeError, UserError) as e:
        raise UserError(
            f"{data.folder / 'meta.json'} records settings gpt-study cannot read ({e}): "
            "prepare the folder again with gpt-study prepare --force"
        ) from None


def _resumed_config(
    save_root: Path, preset: str | None, train_ov: dict[str, Any], model_ov: dict[str, Any]
) -> Config:
    """The config of the run in ``save_root``, with the flags that may change applied."""
    last = resume_source(save_root)
    try:
        cfg = load_config(last / CONFIG)
    except UserError as e:
        raise damaged_last(save_root, e) from None
    if preset is not None and preset != cfg.preset:
        raise UserError(
            f"--preset {preset}, but the run in {save_root} used preset {cfg.preset}: "
            "drop --preset when resuming"
        )
    for k, v in model_ov.items():
        if getattr(cfg.model, k) != v:
            raise UserError(
                f"--{k} {v} differs from the checkpoint's {getattr(cfg.model, k)}: the "
                "architecture cannot change on --resume; drop the flag or start a new run"
            )
    d = config_to_dict(cfg)
    d["train"] = train = cfg.train.flat()
    names = flat_fields(TrainConfig)
    for k, v in train_ov.items():
        old = train.get(k)
        changed = k in names and old != (tuple(v) if isinstance(old, tuple) else v)
        if changed and fixed_on_resume(names[k][1]):
            raise UserError(
                f"--{k} {v} with --resume: the run started with {old}, and a resumed run "
                f"continues from its own {LAST}/; drop --{k}, or start a new run (a new "
                "--save_root) with it"
            )
        if changed and not free_on_resume(names[k][1]):
            log.warning("--%s %s replaces %s: the resumed run is no longer the same run", k, v, old)
        train[k] = v  # an unknown name is refused below, with the others
    train["save_root"] = str(save_root)
    train["data"] = str(Path(train["data"]).resolve())
    return config_from_dict(d, "resumed config")
