"""Runs side by side: their curves on one figure, their figures in one table, their stories.

The study's results are a comparison (ex-01 against ex-02 with ``--sp_weight 2.0``); this is
that comparison for any runs ``gpt-study train`` wrote. :func:`compare_runs` does it all; the
parts, one module each:

* :mod:`.runs`: read each run's ``config.json`` and ``metrics.jsonl``; the settings that
  differ (and only those); final and best figures per run; what cannot be compared (per-token
  NLL across tokenizers, different data folders) and runs without figures, one line each.
* :mod:`.plot`: ``compare.png``, valid NLL against step, tokens and minutes, and bits per byte
  against tokens, training loss faint behind.
* :mod:`.stories`: the story protocol (:mod:`gpt_study.evaluate.stories`, as ``evaluate`` writes
  stories) from every run's ``best/``, with its metrics per run.
* :mod:`.references`: published transformers models (``--hf``) and evaluate reports
  (``--evaluated``) beside the runs: a table of their own and a line each on the bits-per-byte
  panel.
* :mod:`.report`: the table printed, and written as ``compare.md`` and ``compare.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gpt_study.compare.plot import PNG, plot_runs
from gpt_study.compare.references import HFSettings, References, reference_notes
from gpt_study.compare.report import (
    JSON,
    MARKDOWN,
    OWN_FILES,
    check_out,
    format_markdown,
    format_text,
    write_reports,
)
from gpt_study.compare.runs import (
    RunData,
    comparability_notes,
    differing_settings,
    group_by_settings,
    load_runs,
    same_tokenizer,
    summarize,
)
from gpt_study.compare.stories import StorySettings, compare_stories

__all__ = [
    "JSON",
    "MARKDOWN",
    "HFSettings",
    "References",
    "OWN_FILES",
    "PNG",
    "RunData",
    "StorySettings",
    "compare_runs",
    "compare_stories",
    "comparability_notes",
    "default_out",
    "differing_settings",
    "format_markdown",
    "format_text",
    "load_runs",
    "plot_runs",
    "summarize",
]


def default_out(paths: list[str]) -> Path:
    """``<first run's parent>/compare``: beside the runs, where a study keeps them together."""
    return Path(paths[0]).parent / "compare"


def compare_runs(
    paths: list[str],
    out: str | Path | None = None,
    stories: StorySettings | None = None,
    references: References | None = None,
) -> dict[str, Any]:
    """Compare the runs at ``paths``; write ``compare.png``, ``compare.md`` and
    ``compare.json`` into ``out`` (default :func:`default_out`) and return what the JSON holds.

    ``stories=None`` skips the stories (no checkpoint is loaded). ``references`` puts models
    beside the runs (:mod:`.references`): then one run is enough.
    """
    out = Path(out) if out is not None else default_out(paths)
    check_out(out)  # before any work: a refusal costs nothing
    references = references or References()
    references.check()
    runs, notes = load_runs(paths, min_runs=1 if references else 2)
    settings = differing_settings(runs)
    summaries = [summarize(r) for r in runs]
    notes += comparability_notes(runs)
    refs = references.rows(
        runs[0].config.prepared_folder(), stories.protocol() if stories else None
    )
    notes += reference_notes(refs, {str(r.config.prepared_folder().resolve()) for r in runs})
    result: dict[str, Any] = {
        "runs": summaries,
        "settings": settings,
        "notes": notes,
        "groups": group_by_settings(runs, settings, summaries),
        "stories": compare_stories(runs, stories) if stories is not None else None,
        "references": refs,
    }
    out.mkdir(parents=True, exist_ok=True)
    note = "" if same_tokenizer(runs) else "(tokenizers differ: not comparable)"
    result["files"] = [str(out / name) for name in OWN_FILES]
    plot_runs(runs, settings, out / PNG, nll_note=note, references=refs)
    write_reports(result, out)
    return result
