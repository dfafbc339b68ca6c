"""One writer per folder: a lock held while a process writes a run, a prepared folder or an export.

The lock is a hidden file beside the folder (``.<name>.lock``), so it never becomes an entry of
the folder itself, and it is an OS lock (``flock``) on that file: the kernel releases it when the
holder exits, however it exits, so a lock left by a killed process is simply taken, and the
holder's note (pid, host, since when, command) still in the file lets us say whose it was.
Readers (evaluate, generate, serve, compare) never take it.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import cannot_write

try:
    import fcntl
except ImportError:  # Windows: no flock; the lock is advisory only there
    fcntl = None  # type: ignore[assignment]


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of ``folder``: hidden, beside it."""
    folder = Path(folder).resolve()
    return folder.with_name(f".{folder.name}.lock")


def _holder(f: IO[str]) -> dict[str, Any]:
    f.seek(0)
    try:
        note = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return note if isinstance(note, dict) else {}


def _describe(note: dict[str, Any]) -> str:
    if not note:
        return "another process"
    return (
        f"pid {note.get('pid')} on {note.get('host')} since {note.get('since')}"
        f" ({note.get('command', '?')})"
    )


def _acquire(path: Path, folder: str | os.PathLike, flag: str) -> IO[str]:
    """The lock file, open and locked. A holder unlinks the file as it releases it, so after
    locking we check that the path is still the file we locked, else try again."""
    while True:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (the caller closes it)
        except OSError as e:
            raise UserError(cannot_write(path.parent, e, flag)) from None
        if fcntl is None:
            return f
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = _describe(_holder(f))
            f.close()
            raise UserError(
                f"{flag} {folder} is being written by {holder}: wait for it to finish or stop "
                "it; readers (evaluate, generate, serve) need no lock"
            ) from None
        try:
            if os.stat(path).st_ino == os.fstat(f.fileno()).st_ino:
                return f
        except FileNotFoundError:
            pass
        f.close()


@contextlib.contextmanager
def folder_lock(
    folder: str | os.PathLike, flag: str, warn: Callable[[str], None] | None = None
) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; a second writer gets one line naming the holder."""
    path = lock_path(folder)
    f = _acquire(path, folder, flag)
    try:
        stale = _holder(f)
        if stale and warn is not None:
            warn(f"took over the lock of {folder} left by {_describe(stale)}, which is gone")
        note = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": datetime.datetime.now().isoformat(timespec="seconds"),
            "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:3]),
        }
        f.seek(0)
        f.truncate()
        f.write(json.dumps(note))
        f.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # before the OS lock goes: a waiter then finds no stale note
        f.close()
