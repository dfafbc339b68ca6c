"""A run's metrics files: ``metrics.jsonl`` (every record) and ``metrics.csv`` (the same, flat).

The writer appends one record per log line and per validation (rank 0 only); on resume it first
forgets the records written after the checkpoint it resumes from, since those steps are redone.
``gpt-study plot`` draws from the JSONL.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from gpt_study.runs import METRICS_CSV, METRICS_JSONL, read_metrics
from gpt_study.runtime.files import atomic_open

CSV_COLUMNS = (
    "kind",
    "step",
    "epoch",
    "tokens",
    "train_loss",
    "valid_loss",
    "valid_nll",
    "valid_ppl",
    "valid_bpb",
    "lr",
    "tokens_per_s",
    "elapsed_s",
)


class MetricsWriter:
    """Appends records to metrics.jsonl and metrics.csv."""

    def __init__(self, save_root: Path, resume_step: int | None) -> None:
        self.jsonl = save_root / METRICS_JSONL
        self.csv = save_root / METRICS_CSV
        if resume_step is None:
            self.jsonl.unlink(missing_ok=True)
            self.csv.unlink(missing_ok=True)
        else:
            self._truncate(resume_step)
        if not self.csv.exists():  # the header whole or not at all; rows are appended after
            with atomic_open(self.csv, newline="") as f:
                csv.writer(f).writerow(CSV_COLUMNS)

    def _truncate(self, step: int) -> None:
        """Forget records written after the checkpoint we resume from: they will be redone."""
        records = read_metrics(self.jsonl) if self.jsonl.exists() else []
        keep = [r for r in records if r.get("step", 0) <= step]
        with atomic_open(self.jsonl) as f:
            f.write("".join(json.dumps(r) + "\n" for r in keep))
        with atomic_open(self.csv, newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_COLUMNS)
            for r in keep:
                w.writerow([_csv_cell(r.get(c)) for c in CSV_COLUMNS])

    def write(self, record: dict[str, Any]) -> None:
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(record) + "\n")
        with open(self.csv, "a", newline="") as f:
            csv.writer(f).writerow([_csv_cell(record.get(c)) for c in CSV_COLUMNS])


def _csv_cell(v: Any) -> Any:
    if v is None:
        return ""
    return f"{v:.6g}" if isinstance(v, float) else v
