"""The output folder of ``prepare``: whether an existing one can be reused, the hidden temporary
folder everything is written into, its meta.json, and the rename into place; and :func:`prepare`
itself, which runs a pass (:mod:`gpt_study.data.prepare.passes`) between those steps.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from gpt_study import __version__
from gpt_study.config import SPECIALS, DataConfig
from gpt_study.data.folder import SPLITS
from gpt_study.data.prepare.ids import Holdout, SplitWriter
from gpt_study.data.prepare.passes import (
    Pass,
    given_tokenizer,
    run_bpe,
    run_byte,
    run_given,
    run_word,
    stories_bar,
)
from gpt_study.data.prepare.workers import Workers, start_workers
from gpt_study.data.sources import (
    HUB_DATASET,
    Source,
    hub_fingerprint,
    load_hub_split,
    resolve_sources,
)
from gpt_study.data.tokenizer import Tokenizer
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import (
    FolderMark,
    cannot_write,
    check_replaceable,
    fresh_temp_folder,
    out_of_space,
    publish_folder,
    recover_folder,
    sha256_file,
    write_json_atomic,
)
from gpt_study.runtime.lock import folder_lock

# Everything a prepared folder holds: prepare replaces a folder only if it holds nothing else.
PREPARED_FILES = ("train.bin", "valid.bin", "tokenizer.json", "meta.json")
MARK = FolderMark("meta.json", (("package", "gpt-study"),), "a folder gpt-study prepared")
DIGESTED = PREPARED_FILES[:3]  # what the folder's fingerprint for a run covers

# Settings that change the output; the rest (--out, --workers, --force) do not.
SETTINGS_KEYS = (
    "tokenizer",
    "vocab_size",
    "min_freq",
    "min_chars",
    "lowercase",
    "valid_fraction",
    "bpe_train_chars",
)

# The cleaning rules' version, part of the fingerprint so that a folder prepared under other
# rules is not reused as if it were the same. 2: the study's order (raw-length filter, then
# whitespace, lowercase, ftfy); folders from before had no such key.
CLEANING = 2


def _describe_inputs(sources: list[Source], hub: dict[Source, Any]) -> list[dict[str, Any]]:
    out = []
    for src in sources:
        if src.path is not None:
            out.append(
                {
                    "split": src.split,
                    "path": str(src.path.resolve()),
                    "format": src.format,
                    "bytes": src.path.stat().st_size,
                    "sha256": sha256_file(src.path),
                }
            )
        else:
            ds = hub[src]
            out.append(
                {
                    "split": src.split,
                    "hub": HUB_DATASET,
                    "hub_split": src.hub_split,
                    "rows": len(ds),
                    "fingerprint": hub_fingerprint(ds),
                }
            )
    return out


def _fingerprint(inputs: list[dict[str, Any]], settings: dict[str, Any]) -> str:
    """What makes two prepared folders the same: input contents (not paths) and settings."""
    key = {
        "inputs": [
            [i["split"], i.get("sha256") or i.get("fingerprint"), i.get("hub")] for i in inputs
        ],
        "settings": settings,
        "cleaning": CLEANING,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _existing_meta(out: Path) -> dict[str, Any] | None:
    try:
        return json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _complete(out: Path, meta: dict[str, Any]) -> bool:
    try:
        for split in SPLITS:
            if (out / f"{split}.bin").stat().st_size != 2 * meta["splits"][split]["tokens"]:
                return False
        return (out / "tokenizer.json").is_file()
    except (OSError, KeyError, TypeError):
        return False


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _check_existing(
    cfg: DataConfig, out: Path, fingerprint: str, log: Any, inputs: list[Path]
) -> bool:
    """True when ``out`` is a finished folder of the same inputs and settings (reuse it).

    Raises, changing nothing, when ``out`` holds anything prepare did not write, is an input or
    the working directory (even with ``--force``), or is a prepared folder of other inputs or
    settings and ``--force`` is off.
    """
    check_replaceable(out, PREPARED_FILES, "--out", inputs, mark=MARK)
    if not out.exists() or not any(out.iterdir()):
        return False
    meta = _existing_meta(out)
    if meta is None or "fingerprint" not in meta:
        raise UserError(
            f"{out} exists and is not a folder prepare finished (no readable meta.json): "
            "pass --out with a new folder"
        )
    if cfg.force:
        return False
    if meta.get("fingerprint") == fingerprint and _complete(out, meta):
        log(f"prepare: {out} is up to date (same inputs and settings); --force redoes it")
        return True
    raise UserError(
        f"{out} already holds data prepared from other inputs or settings: "
        "pass --force to replace it, or --out to write elsewhere"
    )


def _make_temp(out: Path) -> Path:
    """A fresh hidden temporary folder next to ``out``, named after this process."""
    try:
        recover_folder(out, "meta.json")  # a prepare died between its two renames
        return fresh_temp_folder(out)
    except OSError as e:
        raise UserError(cannot_write(out.parent, e, "--out")) from None


def _publish(tmp: Path, out: Path, inputs: list[Path]) -> None:
    """Publish the finished ``tmp`` as ``out``, an old ``out`` checked again first (only
    prepare's own files)."""
    check_replaceable(out, PREPARED_FILES, "--out", inputs, mark=MARK)
    publish_folder(tmp, out)


def _split_stats(writers: dict[str, SplitWriter]) -> dict[str, dict[str, Any]]:
    """meta.json's ``splits``: each split's counts and its rate of ``<unk>``."""
    splits = {}
    for split, w in writers.items():
        words = w.tokens - 2 * w.stories  # tokens without <sot>/<eot>
        splits[split] = {
            **w.stats(),
            "unk": w.unk,  # type: ignore[attr-defined]
            "unk_rate": w.unk / words if words else 0.0,  # type: ignore[attr-defined]
        }
    return splits


def _meta(
    cfg: DataConfig,
    tok: Tokenizer,
    *,
    fingerprint: str,
    inputs: list[dict[str, Any]],
    valid_from: str,
    dropped_short: int,
    splits: dict[str, dict[str, Any]],
    digests: dict[str, str],
    workers: int,
    elapsed: float,
) -> dict[str, Any]:
    """meta.json's contents; ``digests``: the SHA-256 of the tokenizer and of each split's ids,
    which a run records and ``--resume`` checks (:func:`gpt_study.data.dataset.data_digest`)."""
    return {
        "format": 1,
        "fingerprint": fingerprint,
        "package": "gpt-study",
        "version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tokenizer": tok.kind,
        "vocab_size": tok.vocab_size,
        "lowercase": tok.lowercase,
        "dtype": "uint16",
        "specials": dict(zip(SPECIALS, (tok.unk_id, tok.sot_id, tok.eot_id), strict=True)),
        "sources": inputs,
        "valid_from": valid_from,
        "dropped_short": dropped_short,
        "splits": splits,
        "digests": digests,
        "settings": {k: v for k, v in vars(cfg).items()},
        "workers": workers,
        "elapsed_s": round(elapsed, 3),
    }


def _run_pass(
    cfg: DataConfig,
    sources: list[Source],
    hub: dict[Source, Any],
    tmp: Path,
    holdout: Holdout,
    per_source: list[dict[str, int]],
    n_workers: int,
    progress: bool | None,
) -> tuple[Tokenizer, dict[str, SplitWriter]]:
    """The tokenization pass of ``cfg.tokenizer`` into ``tmp``, its workers closed afterwards."""
    ok = False
    workers: Workers | None = None
    try:
        kind = "given" if cfg.tokenizer_from else cfg.tokenizer
        workers = start_workers(n_workers, kind, bool(cfg.lowercase), cfg.min_chars)
        with stories_bar(progress) as bar:
            passes = {"word": run_word, "bpe": run_bpe, "byte": run_byte, "given": run_given}
            tok, writers = passes[kind](
                Pass(cfg, sources, hub, tmp, workers, holdout, bar, per_source)
            )
        ok = True
    finally:
        if workers is not None:
            workers.close(ok)
    return tok, writers


def _log_done(log: Any, out: Path, tok: Tokenizer, meta: dict[str, Any], elapsed: float) -> None:
    tr, va = meta["splits"]["train"], meta["splits"]["valid"]
    log(
        f"prepare: {out}: {tok.kind} vocab {tok.vocab_size:,}; train {tr['stories']:,} stories "
        f"{tr['tokens']:,} tokens, valid {va['stories']:,} stories {va['tokens']:,} tokens; "
        f"<unk> {tr['unk_rate']:.3%} / {va['unk_rate']:.3%}; dropped {meta['dropped_short']:,} "
        f"short; {elapsed:.1f} s"
    )


def prepare(cfg: DataConfig, progress: bool | None = None, log: Any = print) -> Path:
    """Run the data stage for ``cfg`` and return the prepared folder.

    A finished folder made from the same input contents and settings is reused unless
    ``cfg.force``; a folder holding anything else is never overwritten without ``--force``.
    """
    t0 = time.perf_counter()
    if cfg.tokenizer_from:  # a checkpoint's tokenizer: its kind, size and lowercasing
        cfg = given_tokenizer(cfg)[0]
    elif cfg.tokenizer == "hf":
        raise UserError(
            "--tokenizer hf is a published model's own: pass --tokenizer_from CHECKPOINT (a "
            "checkpoint gpt-study import wrote) instead"
        )
    sources = resolve_sources(cfg.data)
    hub = {s: load_hub_split(str(s.hub_split)) for s in sources if s.path is None}
    out = cfg.output_dir()
    inputs = _describe_inputs(sources, hub)
    settings = {k: getattr(cfg, k) for k in SETTINGS_KEYS}
    if cfg.tokenizer_from:  # the tokenizer's contents, not its path
        settings["tokenizer_from"] = sha256_file(Path(cfg.tokenizer_from) / "tokenizer.json")
        settings["framing"] = 2  # a shared <sot>/<eot> once between stories (join_stories)
    fingerprint = _fingerprint(inputs, settings)
    paths = [src.path for src in sources if src.path is not None]
    if _check_existing(cfg, out, fingerprint, log, paths):  # refusals before any write
        return out
    with folder_lock(out, "--out", warn=log):  # one writer per prepared folder
        if _check_existing(cfg, out, fingerprint, log, paths):  # another writer just finished
            return out
        meta, tok = _write(cfg, sources, hub, out, inputs, (fingerprint, paths), progress, t0)
    _log_done(log, out, tok, meta, time.perf_counter() - t0)
    return out


def _write(
    cfg: DataConfig,
    sources: list[Source],
    hub: dict[Source, Any],
    out: Path,
    inputs: list[dict[str, Any]],
    known: tuple[str, list[Path]],
    progress: bool | None,
    t0: float,
) -> tuple[dict[str, Any], Tokenizer]:
    """Tokenize into a temp folder beside ``out`` and publish it; on any error remove it.
    ``known``: the inputs' fingerprint and their paths (never replaced)."""
    fingerprint, paths = known
    n_workers = cfg.workers or _cores()
    tmp = _make_temp(out)
    has_valid = any(s.split == "valid" for s in sources)
    holdout = Holdout(None if has_valid else cfg.valid_fraction)
    per_source = [{"read": 0, "short": 0} for _ in sources]
    try:
        tok, writers = _run_pass(cfg, sources, hub, tmp, holdout, per_source, n_workers, progress)
        if tok.vocab_size > 65536:
            raise UserError(
                f"vocabulary of {tok.vocab_size} does not fit uint16: lower --vocab_size"
            )
        tok.save(tmp / "tokenizer.json")
        splits = _split_stats(writers)
        for info, counts in zip(inputs, per_source, strict=True):
            info["stories_read"] = counts["read"]
            info["dropped_short"] = counts["short"]
        elapsed = time.perf_counter() - t0
        meta = _meta(
            cfg,
            tok,
            fingerprint=fingerprint,
            inputs=inputs,
            valid_from=(
                "valid files"
                if has_valid
                else f"every {holdout.every}th kept train story, the first included"
            ),
            dropped_short=sum(c["short"] for c in per_source),
            splits=splits,
            digests={name: sha256_file(tmp / name) for name in DIGESTED},
            workers=n_workers,
            elapsed=elapsed,
        )
        write_json_atomic(tmp / "meta.json", meta)
        _publish(tmp, out, paths)
    except OSError as e:  # disk full, permissions: the sources' own errors are UserErrors
        shutil.rmtree(tmp, ignore_errors=True)
        raise out_of_space(out, e) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return meta, tok
