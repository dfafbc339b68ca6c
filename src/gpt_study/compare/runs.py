"""Runs to compare: each ``--save_root`` folder read once, its settings and its figures.

A run is the folder ``gpt-study train`` wrote: ``config.json`` (what it was asked to do),
``metrics.jsonl`` (what it measured) and ``best/`` (the checkpoint of its lowest valid NLL).
Everything here reads those files only, so comparing runs never touches their weights until
the stories are written (:mod:`gpt_study.compare.stories`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpt_study.config import Config, config_to_dict, load_config
from gpt_study.runs import BEST, METRICS_JSONL, read_metrics
from gpt_study.runtime.errors import UserError

# Settings that name places or switch logging, not what a run computes: never "a difference".
IGNORED = {
    "train.save_root",
    "train.data",  # a path: different data folders get their own note instead
    "train.progress",
    "data.data",
    "data.dataset_root",
    "data.out",
    "data.force",
    "data.workers",
}
IGNORED_PREFIXES = ("train.wb_",)


@dataclass
class RunData:
    """One run as compare sees it: its name in tables, its config and its metric records."""

    name: str
    path: Path
    config: Config
    train: list[dict[str, Any]] = field(default_factory=list)
    valid: list[dict[str, Any]] = field(default_factory=list)

    @property
    def tokenizer(self) -> tuple[str, int]:
        """What a per-token NLL is measured in: the tokenizer kind and its vocabulary size."""
        return self.config.data.tokenizer, self.config.model.vocab_size

    @property
    def best_checkpoint(self) -> Path:
        return self.path / BEST


def load_runs(paths: list[str], min_runs: int = 2) -> tuple[list[RunData], list[str]]:
    """The runs at ``paths`` that have validation figures, and one note naming those that do not.

    Bad input (a missing folder, a folder that is no run, the same run twice, fewer than
    ``min_runs`` runs left to compare: two, or one beside reference models) is a
    :class:`UserError`.
    """
    if len(paths) < min_runs:
        raise UserError(
            "compare needs at least two runs, or one with --hf or --evaluated: pass two or more "
            "--save_root folders of train"
        )
    folders = [Path(p) for p in paths]
    seen: dict[Path, str] = {}
    for p in folders:
        where = p.resolve()
        if where in seen:
            raise UserError(f"{p} is given twice (as {seen[where]} and {p}): pass each run once")
        seen[where] = str(p)
        _check_run_folder(p)
    names = short_names(folders)
    runs, empty = [], []
    for name, p in zip(names, folders, strict=True):
        run = RunData(name, p, load_config(p / "config.json"))
        if (p / METRICS_JSONL).exists():
            records = read_metrics(p / METRICS_JSONL)
            run.train = [r for r in records if r.get("kind") == "train"]
            run.valid = [r for r in records if r.get("kind") == "valid"]
        (runs if run.valid else empty).append(run)
    notes = []
    if empty:
        listed = ", ".join(r.name for r in empty)
        notes.append(
            f"no validation figures yet, left out: {listed} (train to the end of an epoch)"
        )
    if len(runs) < min_runs:
        want = "two" if min_runs == 2 else str(min_runs)
        raise UserError(
            f"fewer than {want} runs have validation figures ({notes[0] if notes else ''}): "
            "train them to the end of an epoch first"
        )
    return runs, notes


def _check_run_folder(p: Path) -> None:
    if not p.is_dir():
        raise UserError(f"no run folder at {p}: pass --save_root folders that train wrote")
    if (p / "model.safetensors").exists():
        raise UserError(f"{p} is a checkpoint, not a run: pass its run folder {p.parent}")
    if not (p / "config.json").exists():
        raise UserError(f"{p} holds no config.json: pass a --save_root folder that train wrote")


def short_names(paths: list[Path]) -> list[str]:
    """The shortest trailing parts of the paths that tell the runs apart (``ex-01``, or
    ``a/run`` and ``b/run`` when two runs share a folder name)."""
    parts = [p.resolve().parts for p in paths]
    for n in range(1, max(map(len, parts)) + 1):
        names = ["/".join(q[-n:]) for q in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


# ------------------------------------------------------------------------ settings


def flat_settings(cfg: Config) -> dict[str, Any]:
    """``section.field -> value`` of a config, the ignored paths and logging switches left out;
    train's settings by their flat names (``train.sp_weight``), as the study named them."""
    out: dict[str, Any] = {}
    for section, values in config_to_dict(cfg, flat=True).items():
        if not isinstance(values, dict):
            out[section] = values  # "preset"
            continue
        for key, value in values.items():
            name = f"{section}.{key}"
            if name in IGNORED or name.startswith(IGNORED_PREFIXES):
                continue
            out[name] = list(value) if isinstance(value, tuple) else value
    return out


def differing_settings(runs: list[RunData]) -> dict[str, list[Any]]:
    """The settings whose values are not the same in every run: ``name -> value per run``.

    A name is the field's own (``sp_weight``) unless two sections hold that field with
    different differences (``data.vocab_size``, ``model.vocab_size``); the same difference seen
    twice (a vocabulary size recorded by both data and model) is shown once.
    """
    flats = [flat_settings(r.config) for r in runs]
    keys = sorted({k for f in flats for k in f})
    differ = {
        k: [f.get(k) for f in flats] for k in keys if len({repr(f.get(k)) for f in flats}) > 1
    }
    out: dict[str, list[Any]] = {}
    for key, values in differ.items():
        bare = key.rsplit(".", 1)[-1]
        twins = [k for k in differ if k.rsplit(".", 1)[-1] == bare]
        if all(differ[t] == values for t in twins):
            out.setdefault(bare, values)
        else:
            out[key] = values
    return out


# ------------------------------------------------------------------------ figures


def summarize(run: RunData) -> dict[str, Any]:
    """A run's final and best figures, straight from its metric records.

    ``best`` is the validation whose checkpoint ``best/`` holds (by the run's ``--best_by``:
    :meth:`~gpt_study.config.train.ValidConfig.best_of`, as training chose it). Steps, tokens and
    minutes come from the last record of either kind; ``tokens_per_s`` is the mean of the
    logged training rates (validation time excluded, as train prints it).
    """
    last = max(run.train + run.valid, key=lambda r: (r["step"], r.get("kind") == "valid"))
    final = run.valid[-1]
    best = run.config.train.valid.best_of(run.valid)
    rates = [r["tokens_per_s"] for r in run.train if r.get("tokens_per_s")]
    kind, vocab = run.tokenizer
    return {
        "run": run.name,
        "path": str(run.path),
        "tokenizer": f"{kind} {vocab}",
        "steps": last["step"],
        "tokens": last.get("tokens"),
        "minutes": last.get("elapsed_s", 0.0) / 60,
        "tokens_per_s": sum(rates) / len(rates) if rates else None,
        "valid_fraction": final.get("valid_fraction"),
        "final_step": final["step"],
        "final_valid_nll": final["valid_nll"],
        "final_valid_ppl": final["valid_ppl"],
        "final_valid_bpb": final.get("valid_bpb"),
        "best_step": best["step"],
        "best_valid_nll": best["valid_nll"],
        "best_valid_ppl": best["valid_ppl"],
        "best_valid_bpb": best.get("valid_bpb"),
    }


def comparability_notes(runs: list[RunData]) -> list[str]:
    """One line per reason the runs' figures do not all measure the same thing.

    Per-token NLL (and perplexity) counts tokens, so it compares only runs with the same
    tokenizer kind and vocabulary size; bits per byte divides by the bytes of the text and
    still compares. Runs validated on different data folders measure different text.
    """
    notes = []
    groups: dict[tuple[str, int], list[str]] = {}
    for r in runs:
        groups.setdefault(r.tokenizer, []).append(r.name)
    if len(groups) > 1:
        listed = "; ".join(f"{', '.join(v)} ({k[0]} {k[1]})" for k, v in groups.items())
        notes.append(
            f"per-token NLL and perplexity do not compare across tokenizers ({listed}): "
            "compare bits per byte"
        )
    folders = {str(r.config.prepared_folder().resolve()) for r in runs}
    if len(folders) > 1:
        notes.append(
            "the runs were validated on different data folders, so their figures measure "
            "different text"
        )
    return notes


def same_tokenizer(runs: list[RunData]) -> bool:
    return len({r.tokenizer for r in runs}) == 1


def group_by_settings(
    runs: list[RunData], settings: dict[str, list[Any]], summaries: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Runs that differ only in ``seed``, pooled: mean and spread (max - min) of their best
    figures, so a change of setting can be read beside the seed-to-seed noise. Empty unless
    some setting other than the seed differs and some group holds two runs or more."""
    if "seed" not in settings or len(settings) < 2:
        return []
    others = {k: v for k, v in settings.items() if k != "seed"}
    groups: dict[str, list[int]] = {}
    for i in range(len(runs)):
        key = ", ".join(f"{k} {format_value(v[i])}" for k, v in others.items())
        groups.setdefault(key, []).append(i)
    if max(map(len, groups.values())) < 2:
        return []
    out = []
    for key, idx in groups.items():
        row: dict[str, Any] = {"settings": key, "runs": [runs[i].name for i in idx]}
        for fig in ("best_valid_nll", "best_valid_bpb"):
            vals = [summaries[i][fig] for i in idx if summaries[i][fig] is not None]
            row[f"{fig}_mean"] = sum(vals) / len(vals) if vals else None
            row[f"{fig}_spread"] = max(vals) - min(vals) if vals else None
        out.append(row)
    return out


def format_value(v: Any) -> str:
    """A setting as a flag would spell it: lists space-separated, ``None`` as ``-``."""
    if v is None:
        return "-"
    if isinstance(v, (list, tuple)):
        return " ".join(map(format_value, v)) or "[]"
    return str(v)
