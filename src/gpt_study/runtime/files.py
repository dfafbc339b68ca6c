"""Atomic writes: a reader (or a run killed half-way) never sees half a file.

Every file the project writes goes to a hidden temp name beside its target and is renamed over it
once complete (``os.replace`` is atomic on one file system). Temp names carry the writer's pid, so
two processes never share one, and a killed writer leaves only a ``.<name>.tmp-<pid>`` file that
is recognisably ours.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gpt_study.runtime.errors import UserError

TMP_MARK = ".tmp-"


def temp_name(path: str | os.PathLike) -> Path:
    """The hidden temp path beside ``path`` that this process writes before renaming."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}")


def is_temp_of(candidate: Path, target: Path) -> bool:
    """Whether ``candidate`` is a temp name that some process made for ``target``."""
    prefix = f".{target.name}{TMP_MARK}"
    return candidate.name.startswith(prefix) and candidate.name[len(prefix) :].isdigit()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file, or every file under a folder, to disk before a rename publishes it: a power
    cut then cannot leave a complete-looking file (or checkpoint folder) of empty files."""
    path = Path(path)
    if path.is_dir():
        for entry in path.iterdir():
            fsync_path(entry)
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path to write (by libraries that take a file name); rename it when done.

    On an error the temp file is removed and the target is left as it was.
    """
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # as a plain open() would have made it
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", **kw: Any) -> Iterator[IO[Any]]:
    """``open(path, mode)`` that appears at ``path`` only once the block ends without error."""
    with atomic_path(path) as tmp, open(tmp, mode, **kw) as f:
        yield f


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON (indented, UTF-8, final newline) atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def old_name(path: Path) -> Path:
    """Where :func:`publish_folder` keeps the folder it replaces until the new one is in place."""
    return path.with_name(f".{path.name}.old")


def _writer_alive(temp: Path) -> bool:
    """Whether another live process owns the temp ``temp`` (this process's own counts as dead:
    it is left from an attempt that failed)."""
    pid = int(temp.name.rsplit(TMP_MARK, 1)[1])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def fresh_temp_folder(out: Path) -> Path:
    """An empty hidden temp folder beside ``out`` (:func:`temp_name`) to build a folder in, after
    removing the temp folders that killed writers of ``out`` left (a live writer's stays)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in out.parent.iterdir():
        if is_temp_of(stale, out) and not _writer_alive(stale):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = temp_name(out)
    tmp.mkdir()
    return tmp


def recover_folder(out: Path, marker: str) -> None:
    """Finish a swap that a killed :func:`publish_folder` left between its two renames: the
    previous folder goes back to ``out`` (``marker``: a file every complete folder holds)."""
    old = old_name(out)
    if not out.exists() and (old / marker).exists():
        os.replace(old, out)


def publish_folder(tmp: Path, out: Path) -> None:
    """Flush the finished folder ``tmp`` to disk and swap it in as ``out``: a reader sees the old
    folder or the new one, whole; the old one survives (at :func:`old_name`) until the new one is
    in place. The one way every folder the project writes (checkpoints, prepared data, exports)
    is published."""
    fsync_path(tmp)
    old = old_name(out)
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        os.replace(out, old)
    os.replace(tmp, out)
    shutil.rmtree(old, ignore_errors=True)


def sha256_file(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes, read in blocks: the fingerprint that ties a checkpoint to
    its tokenizer and a run to its prepared data."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def out_of_space(path: str | os.PathLike, error: OSError, need: int | None = None) -> UserError:
    """The one line for a write that failed (a full disk above all): which path, how much was
    needed and is free, the way out, and that nothing already there was touched."""
    path = Path(path)
    where = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    free = shutil.disk_usage(where).free
    sizes = f"{_human(free)} free" + (f", about {_human(need)} needed" if need else "")
    kept = f"; {path} still holds what it held before" if path.exists() else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return UserError(
            f"writing {path} failed: no space left on the disk ({sizes}): free space or pick "
            f"another folder, then run the command again{kept}"
        )
    return UserError(f"writing {path} failed ({error.strerror or error}){kept}")


def target_of(path: str | os.PathLike) -> Path:
    """``path`` itself, or the file a temp name (:func:`temp_name`) was made for."""
    path = Path(path)
    name, mark, pid = path.name.rpartition(TMP_MARK)
    if mark and name.startswith(".") and pid.isdigit():
        return path.with_name(name[1:])
    return path


def cannot_write(where: str | os.PathLike, error: OSError, flag: str | None = None) -> str:
    """The one line for a place gpt-study may not write: ``where``, why, and the way out (another
    ``flag`` where the caller knows which flag named it)."""
    where = Path(where)
    way = (
        f"pick another {flag}"
        if flag
        else (f"pick a folder you may write to, or change the permissions of {where.parent}")
    )
    return f"cannot write to {where} ({error.strerror or error}): {way}"


def os_error_line(error: OSError) -> str:
    """The one line for a failed read or write that no command foresaw: a full disk (with what is
    free), a folder it may not write (named as the target, not a temp name), or the error."""
    if error.filename and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return str(out_of_space(target_of(error.filename), error))
    if error.filename and error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return cannot_write(target_of(error.filename), error)
    return f"{error.strerror or error}: {error.filename or '?'}"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()  # read once: os.umask can only be read by setting it


# ---------------------------------------------------------------- replacing what we wrote


def foreign_entries(folder: Path, own: Iterable[str]) -> list[str]:
    """Entries of ``folder`` that gpt-study did not write: neither one of ``own`` nor a temp or
    kept-old copy of one (``.<name>.tmp-<pid>``, ``.<name>.old``)."""
    names = set(own)
    kept = {old_name(Path(n)).name for n in names}
    out = []
    for p in sorted(folder.iterdir()):
        if p.name in names or p.name in kept or any(is_temp_of(p, folder / n) for n in names):
            continue
        out.append(p.name)
    return out


@dataclass(frozen=True)
class FolderMark:
    """How gpt-study knows a folder as one it wrote: ``file`` in it, a JSON object holding every
    key of ``keys`` (with that value where one is given; ``...``: any). Names alone do not tell:
    ``config.json`` or ``model.safetensors`` are every tool's names. ``what``: such a folder, in
    words ("a checkpoint gpt-study wrote")."""

    file: str
    keys: tuple[tuple[str, Any], ...]
    what: str

    def __call__(self, folder: Path) -> bool:
        try:
            obj = json.loads((folder / self.file).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # missing, unreadable, not JSON (UnicodeDecodeError too)
            return False
        return isinstance(obj, dict) and all(
            k in obj and (v is ... or obj[k] == v) for k, v in self.keys
        )


def check_replaceable(
    folder: str | os.PathLike,
    own: Iterable[str],
    flag: str,
    inputs: Iterable[Path] = (),
    *,
    mark: FolderMark,
) -> None:
    """Refuse (one line, nothing changed) to replace or delete ``folder`` unless gpt-study can
    tell it wrote everything in it: not the working directory or a folder above it, not an input
    or a folder holding one, no entry but ``own`` (and their temp names), and where it holds any
    of ``own``, the writer's ``mark``."""
    folder = Path(folder)
    where = folder.resolve()
    cwd = Path.cwd().resolve()
    if where == cwd or where in cwd.parents:
        raise UserError(
            f"{flag} {folder} is the working directory or holds it: gpt-study never replaces "
            "it; pass a new folder"
        )
    for p in inputs:
        src = Path(p).resolve()
        if src == where or where in src.parents:
            raise UserError(
                f"{flag} {folder} holds the input {p}: gpt-study never replaces its inputs; "
                "pass a folder apart from them"
            )
    if folder.is_dir():
        own = tuple(own)
        foreign = foreign_entries(folder, own)
        if foreign:
            shown = ", ".join(foreign[:3]) + (" ..." if len(foreign) > 3 else "")
            raise UserError(
                f"{folder} holds files gpt-study did not write ({shown}): it never replaces "
                f"them; pass a new {flag}"
            )
        named = [n for n in own if (folder / n).exists()]
        if named and not mark(folder):
            shown = ", ".join(named[:3]) + (" ..." if len(named) > 3 else "")
            raise UserError(
                f"{folder} is not {mark.what} (it holds {shown}, but no {mark.file} of that "
                f"kind): gpt-study never replaces it; pass a new {flag}"
            )
    elif folder.exists():
        raise UserError(f"{flag} {folder} is a file, not a folder: pass a new {flag}")
