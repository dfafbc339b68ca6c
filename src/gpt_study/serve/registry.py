"""What a server may show: the checkpoints and the runs it was started with, by name only.

The browser never sends a path. Checkpoints are loaded once at start and looked up by name or
index; runs are the folders under ``--runs`` that hold a ``metrics.jsonl`` (rescanned on each
listing, so a run still training shows up and its curves grow), looked up by the name the
listing gave them. Nothing here imports the web stack, so it is tested on its own.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt_study.checkpoint import Checkpoint, load_for_inference
from gpt_study.config import Config, config_to_dict, load_config
from gpt_study.evaluate.introspect import text_ids
from gpt_study.generate import encode_prompt
from gpt_study.generate.weights import quantize as quantize_weights
from gpt_study.generate.window import resolve_window
from gpt_study.runs import METRICS_JSONL, read_metrics
from gpt_study.runtime.errors import UserError

__all__ = ["Models", "NotFound", "Runs", "Served"]


class NotFound(Exception):
    """No model or run by that name here (HTTP 404); the message lists the choices."""


RUN_DEPTH = 3  # how far below --runs a run folder may sit (runs/<study>/<variant>/<seed>)


@dataclass
class Served:
    """One loaded checkpoint and the name the API knows it by.

    Requests run in several threads at once. The model only reads its weights, but the word
    tokenizer keeps a cache of spaCy splits that one thread may clear while another reads it,
    so encoding goes through :meth:`encode_prompt` and :meth:`encode_text`, one at a time.
    """

    name: str
    checkpoint: Checkpoint
    window: int | None = None  # the positions it reads (None: those it was trained on)
    note: str | None = field(init=False, default=None)  # resolve_window's, for the log
    _encoding: threading.Lock = field(init=False, repr=False, default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.window, self.note = resolve_window(self.checkpoint.model, self.window)

    def encode_prompt(self, prompt: str) -> tuple[list[int], list[str]]:
        """A prompt's ids as generation reads it, and any warnings (cut to the window)."""
        with self._encoding:
            return encode_prompt(self.checkpoint.tokenizer, prompt, self.window)

    def encode_text(self, text: str) -> tuple[list[int], int, int]:
        """:func:`gpt_study.evaluate.introspect.text_ids` of a pasted text: ids, bytes, stories."""
        with self._encoding:
            return text_ids(self.checkpoint.tokenizer, text)

    def describe(self, index: int) -> dict[str, Any]:
        """The ``GET /api/models`` entry: what a student needs to read the model's numbers."""
        ck = self.checkpoint
        state = ck.state or {}
        return {
            "index": index,
            "name": self.name,
            "params": ck.model.num_params(),
            "tokenizer": ck.tokenizer.kind,
            "vocab_size": ck.tokenizer.vocab_size,
            "context_size": self.window,  # the study's name for the window
            "layers": ck.config.model.n_layers,
            "heads": ck.config.model.n_heads,
            "step": state.get("step"),
            "best_valid_nll": state.get("best_valid_nll"),
            "sample": config_to_dict(ck.config)["sample"],
            "config": config_to_dict(ck.config, flat=True),  # the study's setting names
        }


def _names(paths: list[Path]) -> list[str]:
    """Short, distinct names: the last two parts of each path (``run/best``), numbered if equal."""
    names: list[str] = []
    for p in paths:
        base = "/".join(p.resolve().parts[-2:])
        name, n = base, 2
        while name in names:
            name, n = f"{base} ({n})", n + 1
        names.append(name)
    return names


class Models:
    """The checkpoints given with ``--checkpoint``, loaded once for inference."""

    def __init__(self, served: list[Served]) -> None:
        self.served = served

    @classmethod
    def load(
        cls,
        paths: list[str],
        device: str = "auto",
        dtype: str = "auto",
        quantize: str = "none",
        window: int | None = None,
    ) -> Models:
        """Each checkpoint read as ``generate`` and ``evaluate`` read one: ``quantize`` "int8"
        for int8 weight-only linear layers, ``window`` (None: each its trained one) checked by
        :func:`~gpt_study.generate.window.resolve_window`."""
        resolved = [Path(p) for p in paths]
        cks = [load_for_inference(str(p), device, dtype) for p in resolved]
        for ck in cks:
            quantize_weights(ck.model, quantize)
        names = _names(resolved)
        return cls([Served(n, c, window) for n, c in zip(names, cks, strict=True)])

    def __len__(self) -> int:
        return len(self.served)

    def get(self, ref: int | str) -> Served:
        """A model by index or name; a clear message naming the choices otherwise."""
        if not self.served:
            raise NotFound("no checkpoint is served: start with `gpt-study serve --checkpoint`")
        if isinstance(ref, int) and not isinstance(ref, bool):
            if 0 <= ref < len(self.served):
                return self.served[ref]
        else:
            for s in self.served:
                if s.name == ref:
                    return s
        choices = ", ".join(f"{i} ({s.name})" for i, s in enumerate(self.served))
        raise NotFound(f"no model {ref!r}: choose one of {choices}")

    def describe(self) -> list[dict[str, Any]]:
        return [s.describe(i) for i, s in enumerate(self.served)]


class Runs:
    """The training runs under one folder: each folder there with a ``metrics.jsonl``."""

    def __init__(self, root: str | os.PathLike | None) -> None:
        self.root = None if root is None else Path(root).resolve()
        if self.root is not None and not self.root.is_dir():
            raise UserError(f"--runs {root} is not a folder: point it at a save_root or its parent")

    def scan(self) -> dict[str, Path]:
        """Run name (its path under the root, ``.`` for the root itself) -> folder."""
        if self.root is None:
            return {}
        found: dict[str, Path] = {}
        frontier = [self.root]
        for _ in range(RUN_DEPTH + 1):
            nxt = []
            for folder in frontier:
                if (folder / METRICS_JSONL).is_file():
                    rel = folder.relative_to(self.root).as_posix()
                    found[rel if rel != "." else self.root.name] = folder
                try:
                    children = sorted(c for c in folder.iterdir() if c.is_dir())
                except OSError:
                    continue
                nxt += [c for c in children if not c.name.startswith(".") and not c.is_symlink()]
            frontier = nxt
        return found

    def summaries(self) -> list[dict[str, Any]]:
        """One line per run for the listing: steps, last losses, the best validation."""
        out = []
        for name, folder in self.scan().items():
            try:
                records = read_metrics(folder / METRICS_JSONL)
            except UserError as e:  # one damaged run never hides the others
                out.append({"name": name, "records": 0, "problem": str(e)})
                continue
            valid = [r for r in records if r.get("kind") == "valid"]
            train = [r for r in records if r.get("kind") == "train"]
            cfg = _run_config(folder)
            # the validation best/ holds, by the run's own --best_by (unknown without its config)
            best = cfg.train.valid.best_of(valid) if cfg is not None else None
            out.append(
                {
                    "name": name,
                    "records": len(records),
                    "last_step": records[-1].get("step") if records else None,
                    "last_train_loss": train[-1].get("train_loss") if train else None,
                    "best_valid_nll": best.get("valid_nll") if best else None,
                }
            )
        return out

    def detail(self, name: str) -> dict[str, Any]:
        """A run's records and settings, by the name :meth:`summaries` gave it."""
        runs = self.scan()
        if name not in runs:
            choices = ", ".join(runs) or "none (start with --runs DIR)"
            raise NotFound(f"no run {name!r}: choose one of {choices}")
        folder = runs[name]
        cfg = _run_config(folder)
        return {
            "name": name,
            "settings": config_to_dict(cfg, flat=True) if cfg is not None else None,
            "records": read_metrics(folder / METRICS_JSONL),
        }


def _run_config(folder: Path) -> Config | None:
    """A run's config (its own, else its best checkpoint's); None where there is none or it is
    from another version: the curves are shown anyway."""
    for path in (folder / "config.json", folder / "best" / "config.json"):
        if path.is_file():
            try:
                return load_config(path)
            except UserError:
                return None
    return None
