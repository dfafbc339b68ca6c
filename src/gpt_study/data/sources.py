"""Where stories come from: the Hugging Face Hub, or local files, folders and globs.

Everything is a stream of raw story strings, read lazily, so a corpus larger than memory works.
Local formats:

- ``.txt``: the raw TinyStories layout, stories separated by lines holding ``<|endoftext|>``
  (a file without such lines is one story);
- ``.jsonl`` / ``.json``: one JSON object per line (or, for ``.json``, one array of objects)
  with a ``text`` or ``story`` field;
- ``.parquet``: a ``text`` (or ``story``) column;
- ``.gz`` of any of these.

Split of a file, by its name: ``valid``/``val``/``validation``/``dev``/``test`` -> valid, anything
else -> train. With no valid file, prepare holds out a deterministic share of the train stories.
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import os
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from gpt_study.runtime.errors import UserError, install

HUB_DATASET = "roneneldan/TinyStories"
HUB_SPLITS = {"train": "train", "valid": "validation"}
END_OF_TEXT = "<|endoftext|>"
FORMATS = ("txt", "jsonl", "json", "parquet")
_VALID_NAME = re.compile(r"(^|[^a-z])(valid|validation|val|dev|test)([^a-z]|$)")
_FIELDS = ("text", "story")
LOCAL_HINT = "pass --data with local files, e.g. --data ../shared/data/tinystories"


@dataclass(frozen=True)
class Source:
    """One input: a local file (``path``) or a split of the Hub dataset (``hub_split``)."""

    split: str  # "train" or "valid": where its stories go
    path: Path | None = None
    hub_split: str | None = None

    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"hub:{HUB_DATASET}/{self.hub_split}"

    @property
    def format(self) -> str:
        return file_format(self.path) if self.path is not None else "hub"


def file_format(path: Path) -> str:
    """``txt``, ``jsonl``, ``json`` or ``parquet`` (a ``.gz`` suffix is looked through)."""
    suffixes = [s.lower().lstrip(".") for s in path.suffixes]
    if suffixes and suffixes[-1] == "gz":
        suffixes = suffixes[:-1]
    fmt = suffixes[-1] if suffixes else ""
    if fmt not in FORMATS:
        raise UserError(
            f"unknown format of {path}: use .txt (<|endoftext|> lines), .jsonl, .json, .parquet "
            "or .gz of these"
        )
    return fmt


def split_of(path: Path) -> str:
    """``valid`` if the file name says so (valid, val, validation, dev, test), else ``train``."""
    return "valid" if _VALID_NAME.search(path.name.lower()) else "train"


def _expand(item: str) -> list[Path]:
    """Files named by one ``--data`` item: a file, a folder (its corpus files) or a glob."""
    if any(c in item for c in "*?["):
        files = [Path(p) for p in sorted(glob.glob(item, recursive=True)) if Path(p).is_file()]
        if not files:
            raise UserError(f"no file matches {item}: check the pattern")
        return [p for p in files if _is_corpus(p)] or files
    path = Path(item).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and _is_corpus(p))
        if not files:
            raise UserError(
                f"folder {path} holds no corpus files: put .txt/.jsonl/.json/.parquet(.gz) in it"
            )
        return files
    if not path.exists():
        raise UserError(f"no such file or folder: {item}: check the --data path")
    return [path]


def _is_corpus(path: Path) -> bool:
    if path.name.startswith("."):
        return False
    try:
        file_format(path)
    except UserError:
        return False
    return True


def resolve_sources(data: list[str]) -> list[Source]:
    """The sources for ``--data`` (none: the Hub dataset's train and validation splits)."""
    if not data:
        return [Source(split, hub_split=hub) for split, hub in HUB_SPLITS.items()]
    seen: dict[Path, Source] = {}
    for item in data:
        for path in _expand(item):
            file_format(path)  # an unknown format fails here, before any work
            if path.stat().st_size == 0:
                raise UserError(f"{path} is empty: remove it from --data")
            key = path.resolve()
            if key not in seen:
                seen[key] = Source(split_of(path), path=path)
    sources = list(seen.values())
    if not any(s.split == "train" for s in sources):
        names = ", ".join(str(s.path) for s in sources)
        raise UserError(
            f"no training file among {names} (their names say valid/val/test): "
            "add a file for training to --data"
        )
    return sources


# ------------------------------------------------------------------------------ local files


def _open_text(path: Path) -> IO[str]:
    raw: IO[bytes] = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8", errors="strict", newline="\n")


def _unmark(story: str) -> str:
    """A story without the line breaks of the marker lines around it, so that its raw length
    (which the ``--min_chars`` filter reads) is that of the story, as in the Hub's ``text``."""
    return story.removeprefix("\n").removesuffix("\n")


def _txt_stories(path: Path, block: int = 1 << 20) -> Iterator[str]:
    """Stories between ``<|endoftext|>`` marks, read a block at a time (no per-line work)."""
    tail = ""
    with _open_text(path) as f:
        while True:
            data = f.read(block)
            if not data:
                break
            *stories, tail = (tail + data).split(END_OF_TEXT)
            yield from (_unmark(s) for s in stories if s.strip())
    if tail.strip():
        yield _unmark(tail)


def _field(obj: Any, path: Path, where: str) -> str:
    if isinstance(obj, dict):
        for key in _FIELDS:
            value = obj.get(key)
            if isinstance(value, str):
                return value
    raise UserError(f"{path} {where} has no text or story field: give each record a 'text' string")


def _json_stories(path: Path) -> Iterator[str]:
    with _open_text(path) as f:
        head = f.read(1)
        while head.isspace():
            head = f.read(1)
        if head == "[":  # one JSON array (TinyStories' data00.json layout): read it whole
            try:
                records = json.loads(head + f.read())
            except json.JSONDecodeError as e:
                raise UserError(f"{path} is not valid JSON ({e.msg}): fix or remove it") from None
            for i, obj in enumerate(records):
                yield _field(obj, path, f"record {i}")
            return
        for n, line in enumerate(f, start=1):
            if n == 1:
                line = head + line
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path} line {n} is not JSON ({e.msg}): fix or remove it"
                ) from None
            yield _field(obj, path, f"line {n}")


def _parquet_stories(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"reading {path} needs pyarrow: {install('parquet')}") from None
    opener = gzip.open(path, "rb") if path.suffix.lower() == ".gz" else open(path, "rb")
    with opener as raw:
        try:
            pf = pq.ParquetFile(raw)
        except Exception as e:  # pyarrow raises several types for damaged files
            raise UserError(
                f"{path} is not a readable parquet file ({e}): fix or remove it"
            ) from None
        names = pf.schema_arrow.names
        column = next((c for c in _FIELDS if c in names), None)
        if column is None:
            raise UserError(f"{path} has no text or story column (it has {', '.join(names)})")
        for batch in pf.iter_batches(columns=[column], batch_size=4096):
            for value in batch.column(0).to_pylist():
                if value is not None:
                    yield value


def _file_stories(path: Path) -> Iterator[str]:
    fmt = file_format(path)
    reader = {"txt": _txt_stories, "jsonl": _json_stories, "json": _json_stories}.get(fmt)
    try:
        if reader is None:
            yield from _parquet_stories(path)
        else:
            yield from reader(path)
    except UnicodeDecodeError as e:
        raise UserError(
            f"{path} is not UTF-8 text (undecodable byte {e.object[e.start : e.start + 1]!r}): "
            "convert it to UTF-8"
        ) from None
    except (OSError, EOFError) as e:  # gzip damage, unreadable file
        raise UserError(f"cannot read {path} ({e}): check the file") from None


# ------------------------------------------------------------------------------------- Hub


def _reachable(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``host`` opens within ``timeout`` (DNS included)."""
    ok = [False]

    def attempt() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                ok[0] = True
        except OSError:
            pass

    t = threading.Thread(target=attempt, daemon=True)
    t.start()
    t.join(timeout)
    return ok[0]


def _hub_host() -> str:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    return re.sub(r"^\w+://", "", endpoint).split("/")[0].split(":")[0]


def load_hub_split(hub_split: str) -> Any:
    """The Hub dataset's split as a local ``datasets.Dataset`` (downloaded once, then cached).

    Offline it fails fast with one line: a cached copy is used if ``HF_HUB_OFFLINE=1`` is set.
    """
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    proxied = any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY"))
    # Fail in seconds, not after the Hub client's retries (a proxy may reach what we cannot).
    if not offline and not proxied and not _reachable(_hub_host()):
        raise UserError(f"the Hugging Face Hub ({_hub_host()}) is not reachable: {LOCAL_HINT}")
    try:
        import datasets
    except ImportError:
        raise UserError(
            f"reading {HUB_DATASET} needs the hub extra ({install('hub')}), or {LOCAL_HINT}"
        ) from None
    try:
        return datasets.load_dataset(HUB_DATASET, split=hub_split)
    except Exception as e:  # network, cache and auth errors come in many types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"could not load {HUB_DATASET} [{hub_split}] ({first}): {LOCAL_HINT}"
        ) from None


def _hub_stories(dataset: Any) -> Iterator[str]:
    column = next((c for c in _FIELDS if c in dataset.column_names), None)
    if column is None:
        raise UserError(f"{HUB_DATASET} has no text column: {LOCAL_HINT}")
    for batch in dataset.iter(batch_size=4096):
        yield from (t for t in batch[column] if t is not None)


def hub_fingerprint(dataset: Any) -> str:
    return str(getattr(dataset, "_fingerprint", "") or "")


def iter_stories(source: Source, hub_dataset: Any = None) -> Iterator[str]:
    """Raw stories of one source, in file order (not yet cleaned or filtered)."""
    if source.path is not None:
        return _file_stories(source.path)
    dataset = hub_dataset if hub_dataset is not None else load_hub_split(str(source.hub_split))
    return _hub_stories(dataset)
