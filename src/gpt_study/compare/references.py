"""Models beside the runs: published transformers models and evaluated checkpoints.

``gpt-study compare RUN... --hf NAME_OR_FOLDER ... --evaluated EVAL.json ...`` adds a row per
model to a table of its own (the runs' table keeps its columns) and a horizontal line per model
on the bits-per-byte panel of ``compare.png``. A reference is an ``evaluate`` report, from
either of its paths (``--checkpoint`` or ``--hf``): ``--evaluated`` reads one that ``gpt-study
evaluate --json`` wrote, ``--hf`` scores the model here on the runs' data folder with
:mod:`gpt_study.evaluate.hf`, so both compare the same numbers ``evaluate`` prints.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt_study.evaluate.hf import evaluate_hf, load_hf
from gpt_study.evaluate.stories import StoryProtocol
from gpt_study.outputs import mark
from gpt_study.runtime.errors import UserError

# (label, row key, format) of the references' table
FIGURES = (
    ("from", "source", "{}"),
    ("tokenizer", "tokenizer", "{}"),
    ("parameters", "parameters", "{:,}"),
    ("bits per byte", "bits_per_byte", "{:.4f}"),
    ("NLL / own token", "nll", "{:.4f}"),
    ("tokens scored", "tokens", "{:,}"),
    ("ended with its end token", "eot_share", "{:.0%}"),
    ("repeated 4-grams", "repeated_4gram", "{:.2%}"),
)


@dataclass
class HFSettings:
    """How compare scores ``--hf`` models: on ``data`` (the runs' folder unless given)."""

    data: str | None = None
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | None = None
    remote: bool = False
    progress: bool | None = None


def read_evaluated(path: str | Path) -> dict[str, Any]:
    """An ``evaluate --json`` report, checked to be one (one line why not)."""
    path = Path(path)
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"--evaluated {path} cannot be read as JSON ({e}): pass a file that "
                        "gpt-study evaluate --json wrote") from None  # fmt: skip
    if not isinstance(result, dict) or result.get("written_by") != mark("evaluate"):
        raise UserError(f"--evaluated {path} was not written by gpt-study evaluate --json")
    if not isinstance(result.get("valid"), dict):
        raise UserError(
            f"--evaluated {path} has no held-out scores (run evaluate without --no_valid)"
        )
    return result


def reference_row(result: dict[str, Any], source: str) -> dict[str, Any]:
    """One row of the references' table from an evaluate report."""
    valid, hf = result["valid"], result.get("hf")
    stories = result.get("stories") or {}
    return {
        "name": str(result.get("checkpoint")),
        "source": source,
        "tokenizer": f"own, {hf['vocab_size']:,} ids" if hf else "gpt-study's",
        "parameters": hf["parameters"] if hf else None,
        "bits_per_byte": valid.get("bits_per_byte"),
        "nll": valid.get("nll"),
        "tokens": valid.get("tokens"),
        "bytes_estimated": valid.get("bytes_estimated", False),
        "data": valid.get("data"),
        "split": valid.get("split"),
        "eot_share": stories.get("eot_share"),
        "repeated_4gram": stories.get("repeated_4gram"),
    }


@dataclass
class References:
    """The models to put beside the runs: ``--hf`` names and ``--evaluated`` reports."""

    hf: list[str] = field(default_factory=list)
    evaluated: list[str] = field(default_factory=list)
    settings: HFSettings = field(default_factory=HFSettings)

    def __bool__(self) -> bool:
        return bool(self.hf or self.evaluated)

    def check(self) -> None:
        """Refuse unreadable reports before any work."""
        for p in self.evaluated:
            read_evaluated(p)

    def rows(self, data: str | None, protocol: StoryProtocol | None) -> list[dict[str, Any]]:
        """A row per reference; ``--hf`` models scored on ``settings.data``, else ``data``."""
        return load_references(
            self.hf, self.evaluated, self.settings.data or data, self.settings, protocol
        )


def load_references(
    hf_names: list[str],
    evaluated: list[str],
    data: str | None,
    settings: HFSettings,
    protocol: StoryProtocol | None,
) -> list[dict[str, Any]]:
    """A row per ``--evaluated`` report and per ``--hf`` model (scored on ``data``)."""
    rows = [reference_row(read_evaluated(p), f"evaluate JSON {p}") for p in evaluated]
    if hf_names and data is None:
        raise UserError("--hf needs a data folder: the runs record none, pass --data")
    for name in hf_names:
        hf = load_hf(name, settings.device, settings.dtype, None, settings.remote)
        result = evaluate_hf(
            hf, data, batch_size=settings.batch_size, progress=settings.progress, protocol=protocol
        )
        rows.append(reference_row(result, "--hf"))
    return rows


def reference_notes(refs: list[dict[str, Any]], run_data: set[str]) -> list[str]:
    """Why a reference's figure may not measure what the runs' do, one line each."""
    notes = []
    for r in refs:
        if r["data"] is not None and str(Path(r["data"]).resolve()) not in run_data:
            notes.append(f"{r['name']} was scored on {r['data']}, not the runs' data folder")
        elif r["split"] not in (None, "valid"):
            notes.append(f"{r['name']} was scored on the {r['split']} split, not valid")
        if r["bytes_estimated"]:
            notes.append(f"{r['name']} read part of the split: its bits per byte is estimated")
    if refs:
        notes.append(
            "references score the whole valid split; a run's figures come from its training "
            "log, which may have read part of it (the 'valid split read' row)"
        )
    return notes
