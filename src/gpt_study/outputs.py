"""The one guard for a single file a command writes: plot's PNG, evaluate's JSON, compare's
reports.

gpt-study replaces a file only when it wrote that file for the same purpose: each such file
carries its writer's mark (a PNG's ``Software`` text, a JSON's ``written_by``, a Markdown
comment), and :func:`check_output_file` refuses, with one line and before any work, a path that
is a folder, whose folder does not exist, that is an input of the command, that lies inside a
checkpoint or a prepared folder, that is one of a run folder's own files (only its plot may be
redrawn, by plot; a report beside them is fine), or that exists without the writer's mark. Folders are guarded by
:func:`gpt_study.runtime.files.check_replaceable`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

from gpt_study import runs
from gpt_study.checkpoint import CONFIG, TOKENIZER, WEIGHTS
from gpt_study.data.prepare.folder import PREPARED_FILES
from gpt_study.runtime.errors import UserError


def mark(writer: str) -> str:
    """What a file written by ``gpt-study <writer>`` carries, to be known as its own."""
    return f"gpt-study {writer}"


def md_mark(writer: str) -> str:
    return f"<!-- written by {mark(writer)} -->"


def folder_kind(folder: Path) -> str | None:
    """Which of the project's folders ``folder`` is, if any."""
    if (folder / WEIGHTS).exists() or (
        (folder / CONFIG).exists() and (folder / TOKENIZER).exists()
    ):
        return "a checkpoint"
    if all((folder / name).exists() for name in PREPARED_FILES):
        return "a prepared folder"
    if any((folder / name).exists() for name in (runs.METRICS_JSONL, runs.LAST, runs.BEST)):
        return "a run folder"
    return None


def is_own_file(path: Path, writer: str) -> bool:
    """Whether ``path`` carries ``gpt-study <writer>``'s mark."""
    if not path.is_file():
        return False
    if path.suffix == ".json":
        try:
            obj = json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return False
        return isinstance(obj, dict) and obj.get("written_by") == mark(writer)
    with open(path, "rb") as f:
        head = f.read(4096)
    wanted = mark(writer) if path.suffix == ".png" else md_mark(writer)
    return wanted.encode() in head


def check_output_file(
    path: str | os.PathLike,
    writer: str,
    flag: str,
    inputs: Iterable[str | os.PathLike] = (),
    own_in_run: str | None = None,
) -> Path:
    """Refuse (one line, nothing written) a file path ``gpt-study <writer>`` must not write;
    ``own_in_run`` is the one name it may redraw inside a run folder (plot: ``loss.png``)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{flag} {path} is a folder: pass a file name")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise UserError(f"{flag} {path}: its folder does not exist ({parent}); create it first")
    for p in inputs:
        if Path(p).resolve() == path.resolve():
            raise UserError(
                f"{flag} {path} is an input of this command: gpt-study never replaces its "
                f"inputs; pass another {flag}"
            )
    kind = folder_kind(parent)
    own_here = kind == "a run folder" and path.name == own_in_run
    theirs = kind != "a run folder" or path.name in runs.RUN_FILES  # a run may hold reports
    if kind and theirs and not own_here:
        raise UserError(
            f"{flag} {path} is inside {kind} ({parent}), whose files belong to it: "
            f"pass a path outside it"
        )
    if path.exists() and not own_here and not is_own_file(path, writer):
        raise UserError(
            f"{path} was not written by {mark(writer)}, which never replaces it: "
            f"pass another {flag}"
        )
    return path
