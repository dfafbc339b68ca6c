"""A checkpoint is one self-describing folder, written atomically and read by one function.

Layout of ``<save_root>/<name>/``::

    model.safetensors   weights (safetensors: no pickle, memory-mappable)
    config.json         the whole Config (model, train, sample, data)
    tokenizer.json      the vocabulary the weights were trained with
    state.json          training state: step, epoch, best validation, data position, metrics
    optimizer.pt        optimizer / scheduler / RNG tensors (torch.save; read weights_only=True)

The folder is built under a temporary name and renamed into place, so a run killed while saving
leaves the previous checkpoint intact and never a half-written one that looks finished.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from gpt_study.config import Config, load_config, save_config
from gpt_study.data.tokenizer import load_tokenizer
from gpt_study.model.gpt import GPT
from gpt_study.runtime import device as runtime
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import (
    UMASK,
    FolderMark,
    check_replaceable,
    fresh_temp_folder,
    old_name,
    out_of_space,
    publish_folder,
    recover_folder,
    sha256_file,
    write_json_atomic,
)

WEIGHTS, CONFIG, TOKENIZER, STATE, OPTIMIZER = (
    "model.safetensors",
    "config.json",
    "tokenizer.json",
    "state.json",
    "optimizer.pt",
)
FILES = (WEIGHTS, CONFIG, TOKENIZER, STATE, OPTIMIZER)
MARK = FolderMark(STATE, (("step", ...),), "a checkpoint gpt-study wrote")
"""Every checkpoint's state.json has its step: how a folder is known as a checkpoint gpt-study
wrote (``check_replaceable``)."""
TOKENIZER_DIGEST = "tokenizer_sha256"
"""The key in state.json of the SHA-256 of the tokenizer.json the model was saved with."""


@dataclass
class Checkpoint:
    model: GPT
    config: Config
    tokenizer: Any  # gpt_study.data.tokenizer.Tokenizer
    state: dict[str, Any] = field(default_factory=dict)
    optimizer_state: dict[str, Any] | None = None
    path: Path | None = None

    @property
    def window(self) -> int:
        """The input positions the model was trained on: what generation, evaluation, serving
        and export read by default (``--window`` changes it, within
        :func:`gpt_study.generate.window.resolve_window`'s rule)."""
        return self.config.train.window


def unwrap(model: torch.nn.Module) -> GPT:
    """The plain GPT inside DDP / torch.compile wrappers, so saved keys never carry prefixes."""
    while True:
        if hasattr(model, "module"):  # DistributedDataParallel
            model = model.module
        elif hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        else:
            return model  # type: ignore[return-value]


def save_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    config: Config,
    tokenizer_file: str | os.PathLike,
    state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
) -> Path:
    """Write a checkpoint folder at ``path`` atomically (build beside it, then rename)."""
    path = Path(path)
    recover_folder(path, WEIGHTS)  # a save died between its two renames: finish the swap back
    check_replaceable(path, FILES, "checkpoint", mark=MARK)
    tmp = fresh_temp_folder(path)
    try:
        _write_files(tmp, model, config, tokenizer_file, state, optimizer_state)
        publish_folder(tmp, path)
    except OSError as e:  # a full disk, a quota: the last good checkpoint stays as it was
        shutil.rmtree(tmp, ignore_errors=True)
        raise out_of_space(path, e, _size(model, optimizer_state)) from None
    return path


def _write_files(
    tmp: Path,
    model: torch.nn.Module,
    config: Config,
    tokenizer_file: str | os.PathLike,
    state: dict[str, Any] | None,
    optimizer_state: dict[str, Any] | None,
) -> None:
    weights = {k: v.detach().cpu().contiguous() for k, v in unwrap(model).own_weights().items()}
    save_file(weights, str(tmp / WEIGHTS))
    os.chmod(tmp / WEIGHTS, 0o666 & ~UMASK)  # as the other files: safetensors writes it 0600
    save_config(tmp / CONFIG, config)
    shutil.copyfile(tokenizer_file, tmp / TOKENIZER)
    digest = sha256_file(tmp / TOKENIZER)  # and a step, which MARK knows a checkpoint by
    write_json_atomic(tmp / STATE, {"step": 0, **(state or {}), TOKENIZER_DIGEST: digest})
    if optimizer_state is not None:
        torch.save(optimizer_state, tmp / OPTIMIZER)


def _size(model: torch.nn.Module, optimizer_state: dict[str, Any] | None) -> int:
    """Roughly the bytes a checkpoint of ``model`` takes: its weights, and AdamW's two moments."""
    n = sum(p.numel() * p.element_size() for p in unwrap(model).parameters())
    return n * (3 if optimizer_state is not None else 1)


def _resolve(path: Path) -> Path:
    """``path``, or the previous copy kept while a save was interrupted between two renames:
    a complete checkpoint (:func:`_complete`)."""
    if (path / WEIGHTS).exists():
        return _complete(path)
    old = old_name(path)
    if (old / WEIGHTS).exists():
        return _complete(old)
    if not path.exists():
        raise UserError(
            f"no checkpoint at {path}: train one with `gpt-study train`, or check the path"
        )
    inside = [p.name for p in (path / "best", path / "last") if (p / WEIGHTS).exists()]
    if inside:
        raise UserError(
            f"{path} is a run folder, not a checkpoint: pass {path / inside[0]} "
            "(best: lowest validation loss; last: the newest)"
        )
    raise UserError(
        f"{path} is not a complete checkpoint (no {WEIGHTS}): point at a folder that train wrote"
    )


def _damaged(file: Path, error: BaseException) -> UserError:
    """A one-line error for a checkpoint file that exists but cannot be read (a save torn by a
    crash outside the atomic rename, a full disk, a bad copy): which file, why, the way out."""
    lines = str(error).strip().splitlines()
    why = lines[0].split(". ")[0].rstrip(".") if lines else type(error).__name__
    return UserError(
        f"{file} is damaged ({why}): use the other checkpoint (best/ or last/) or retrain"
    )


def _read_weights(file: Path, device: str) -> dict[str, torch.Tensor]:
    try:
        weights = load_file(str(file), device=device)
    except SafetensorError as e:  # truncated, empty or not safetensors at all
        raise _damaged(file, e) from None
    for name, w in weights.items():  # a NaN would only show later, as text or a loss of nan
        if w.is_floating_point() and not bool(torch.isfinite(w).all()):
            raise UserError(
                f"{file}: weight {name} holds NaN or infinite values (a diverged run or a "
                "damaged file): use the other checkpoint (best/ or last/) or retrain"
            )
    return weights


def _read_state(file: Path) -> dict[str, Any]:
    if not file.exists():
        return {}
    try:
        state = json.loads(file.read_text(encoding="utf-8"))
    except ValueError as e:  # torn JSON, or bytes that are not UTF-8 text
        raise _damaged(file, e) from None
    if not isinstance(state, dict):
        raise _damaged(file, ValueError(f"a JSON {type(state).__name__}, not an object"))
    return state


def _read_optimizer(file: Path, device: str | torch.device) -> dict[str, Any]:
    try:
        return torch.load(file, map_location=device, weights_only=True)
    except Exception as e:  # noqa: BLE001 (any failure to read it back means the file is damaged)
        # torch.load of a truncated file: EOFError (empty), RuntimeError (no zip directory),
        # OSError (a cut-off record); weights_only's unpickling error for anything but tensors.
        raise _damaged(file, e) from None


def _complete(path: Path) -> Path:
    """``path``, refused in one line unless it holds the files every reader of a checkpoint needs
    beside its weights."""
    for name in (CONFIG, TOKENIZER):
        if not (path / name).is_file():
            raise UserError(
                f"{path} is not a complete checkpoint (no {name}): copy back the run's own "
                f"{name}, or use another checkpoint"
            )
    return path


def _check_tokenizer(path: Path, want: str | None) -> None:
    """The tokenizer.json beside the weights must be the one they were saved with (``want``, its
    SHA-256 from state.json): another of the same size would decode every id into the wrong
    word without a sound."""
    if want is None:
        return  # saved before the digest was recorded
    if sha256_file(path / TOKENIZER) != want:
        raise UserError(
            f"{path / TOKENIZER} is not the tokenizer this model was saved with (its SHA-256 "
            f"differs from the one in {STATE}): copy back the run's own tokenizer.json, or "
            "use another checkpoint"
        )


def load_checkpoint(
    path: str | os.PathLike, device: str | torch.device = "cpu", optimizer: bool = False
) -> Checkpoint:
    """The one function that reads a checkpoint; checks weights, config and tokenizer agree."""
    path = _resolve(Path(path))
    config = load_config(path / CONFIG)
    state = _read_state(path / STATE)
    _check_tokenizer(path, state.pop(TOKENIZER_DIGEST, None))
    tokenizer = load_tokenizer(path / TOKENIZER)
    if tokenizer.vocab_size != config.model.vocab_size:
        raise UserError(
            f"{path}: tokenizer has {tokenizer.vocab_size} tokens but the model expects "
            f"{config.model.vocab_size}: the folder mixes files from different runs"
        )
    model = GPT(config.model)
    model.trained_window = config.train.window
    weights = _read_weights(path / WEIGHTS, str(device))
    own = model.state_dict()
    wrong = [k for k, v in weights.items() if k in own and own[k].shape != v.shape]
    if wrong:
        raise UserError(
            f"{path}: weight {wrong[0]} has shape {tuple(weights[wrong[0]].shape)} but "
            f"config.json implies {tuple(own[wrong[0]].shape)}: the folder mixes files from "
            "different runs"
        )
    missing, unexpected = model.load_own_weights(weights)
    if missing or unexpected:
        raise UserError(
            f"{path}: weights do not match config.json (missing {list(missing)[:3]}, "
            f"unexpected {list(unexpected)[:3]}): the folder mixes files from different runs"
        )
    model.to(device)
    opt = None
    if optimizer and (path / OPTIMIZER).exists():
        opt = _read_optimizer(path / OPTIMIZER, device)
    return Checkpoint(model, config, tokenizer, state, opt, path)


def load_for_inference(checkpoint: str, device: str = "auto", dtype: str = "auto") -> Checkpoint:
    """A checkpoint ready for generation or evaluation: eval mode, on ``device``, in ``dtype``
    (``auto``: :func:`gpt_study.runtime.inference_dtype`)."""
    dev = torch.device(runtime.resolve_device(device))
    ckpt = load_checkpoint(checkpoint, device=dev)
    ckpt.model.to(dtype=runtime.inference_dtype(dtype, dev)).eval()
    return ckpt
