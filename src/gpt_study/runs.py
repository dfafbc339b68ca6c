"""A run folder (``--save_root``): what ``gpt-study train`` writes there, named once.

As :mod:`gpt_study.checkpoint` owns a checkpoint folder's layout, this module owns a run's::

    <save_root>/
      config.json      the run's Config (also inside each checkpoint)
      info.log         the console's lines
      metrics.jsonl    one JSON record per log line and per validation (the one plot reads)
      metrics.csv      the same records, flat
      loss.png         the loss curves, redrawn every epoch
      last/            the newest checkpoint, with optimizer state: --resume continues from it
      best/            the checkpoint of the best validation number (--best_by)

Training, compare, serve, plot and evaluate read these names from here, not from each other.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from gpt_study.checkpoint import FILES as CHECKPOINT_FILES
from gpt_study.checkpoint import MARK as CHECKPOINT_MARK
from gpt_study.checkpoint import load_checkpoint
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import FolderMark, check_replaceable, old_name

CONFIG = "config.json"
INFO_LOG = "info.log"
METRICS_JSONL, METRICS_CSV = "metrics.jsonl", "metrics.csv"
PLOT = "loss.png"
LAST, BEST = "last", "best"

RUN_FILES = (CONFIG, INFO_LOG, METRICS_JSONL, METRICS_CSV, PLOT, LAST, BEST)
"""Everything a run writes into --save_root: a new run starts only in a folder holding nothing
else."""
MARK = FolderMark(CONFIG, (("model", ...), ("train", ...)), "a run folder gpt-study wrote")
"""A run folder's config.json, with the sections of gpt-study's config: how --save_root is known as
a run gpt-study wrote."""


def kept_last(save_root: Path) -> Path:
    """The copy of ``last/`` that an interrupted save keeps until the new one is complete."""
    return old_name(save_root / LAST)


def has_run(save_root: Path) -> bool:
    """Whether ``save_root`` holds a run's checkpoint (or the copy kept by an interrupted save)."""
    return (save_root / LAST).exists() or kept_last(save_root).exists()


def resume_source(save_root: Path) -> Path:
    """The checkpoint ``--resume`` reads its config from: ``last/``, else the kept copy."""
    last = save_root / LAST
    if (last / CONFIG).exists():
        return last
    if kept_last(save_root).exists():
        return kept_last(save_root)
    raise UserError(
        f"--resume, but {save_root} holds no checkpoint '{LAST}': "
        "drop --resume to start a run, or point --save_root at an existing run"
    )


def check_save_root(save_root: Path, resume: bool, inputs: list[Path] | None = None) -> None:
    """The ``--save_root`` rule, before anything is written (train's, and the demo's for its run):
    ``--resume`` needs a run there; a new run never lands on one, nor among files gpt-study did
    not write, nor on its ``inputs``."""
    if resume:
        resume_source(save_root)
    elif has_run(save_root):
        raise UserError(
            f"{save_root} already holds a run: pass --resume to continue it, "
            "or choose another --save_root"
        )
    else:
        check_replaceable(save_root, RUN_FILES, "--save_root", inputs or [], mark=MARK)
        for name in (LAST, BEST):  # what the run will replace there, checked before it trains
            folder = save_root / name
            check_replaceable(folder, CHECKPOINT_FILES, "--save_root", mark=CHECKPOINT_MARK)


def damaged_last(save_root: Path, error: UserError) -> UserError:
    """The error of a damaged ``last/``, saying whether ``best/`` can be used instead."""
    try:
        best = load_checkpoint(save_root / BEST)
    except UserError:
        return UserError(f"{error}; {save_root / BEST} cannot be used either: start a new run")
    return UserError(
        f"{error}; {best.path} (step {best.state.get('step')}) is intact but holds no optimizer "
        "state, so the run cannot continue exactly: use it with generate or evaluate, or start "
        "a new run"
    )


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a metrics.jsonl: the JSON objects of its lines, skipping a torn last line of a
    killed run (and any line that is not a record). A file that is not text, or cannot be read,
    is one line naming it."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(
            f"{path} is damaged (not text): it is not a metrics file gpt-study wrote; "
            "its run's curves cannot be drawn"
        ) from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out
