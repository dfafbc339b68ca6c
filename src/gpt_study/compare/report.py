"""A comparison as a table: printed, and written as Markdown and JSON beside the PNG.

One layout everywhere: a column per run; rows for the settings that differ, then the figures.
The Markdown goes straight into a report; the JSON holds the same numbers unrounded, the
stories in full and the notes. Compare writes only its own three file names into ``--out``,
and replaces one only when it can tell it wrote it (a marker in each file), so a folder shared
with other work never loses a file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from gpt_study.compare.plot import PNG, SOFTWARE
from gpt_study.compare.references import FIGURES as REFERENCE_FIGURES
from gpt_study.compare.runs import format_value
from gpt_study.evaluate.stories import share_text
from gpt_study.outputs import check_output_file, md_mark
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import write_json_atomic, write_text_atomic

MARKDOWN, JSON = "compare.md", "compare.json"
OWN_FILES = (PNG, MARKDOWN, JSON)
MD_MARK = md_mark("compare")

# (label, summary key, format); "step" columns are shown beside their figure.
FIGURES = (
    ("steps", "steps", "{:,}"),
    ("tokens seen", "tokens", "{:,}"),
    ("minutes", "minutes", "{:.1f}"),
    ("tokens/s (training)", "tokens_per_s", "{:,.0f}"),
    ("valid split read", "valid_fraction", "{:.0%}"),
    ("final valid NLL", "final_valid_nll", "{:.4f}"),
    ("best valid NLL", "best_valid_nll", "{:.4f}"),
    ("final bits per byte", "final_valid_bpb", "{:.4f}"),
    ("best bits per byte", "best_valid_bpb", "{:.4f}"),
    ("final perplexity", "final_valid_ppl", "{:.2f}"),
    ("best perplexity", "best_valid_ppl", "{:.2f}"),
)
STORY_FIGURES = (
    ("stories", "stories", "{:.0f}"),
    ("ended with <eot>", "eot_share", share_text),  # with its 95% interval
    ("mean length (tokens)", "mean_length", "{:.1f}"),
    ("repeated 4-grams", "repeated_4gram", "{:.2%}"),
    ("distinct-1", "distinct_1", "{:.3f}"),
    ("distinct-2", "distinct_2", "{:.3f}"),
)


def _cell(fmt: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return fmt.format(v)


def table_rows(result: dict[str, Any]) -> list[list[str]]:
    """Header, then a row per differing setting and per figure; a column per run."""
    runs = result["runs"]
    rows = [["", *(r["run"] for r in runs)]]
    for name, values in result["settings"].items():
        rows.append([name, *map(format_value, values)])
    for label, key, fmt in FIGURES:
        cells = [_cell(fmt, r[key]) for r in runs]
        if key.startswith(("final_", "best_")):
            step = "final_step" if key.startswith("final_") else "best_step"
            cells = [f"{c} (step {r[step]:,})" for c, r in zip(cells, runs, strict=True)]
        rows.append([label, *cells])
    return rows


def _story_cell(fmt: Any, key: str, metrics: dict[str, Any]) -> str:
    return fmt(metrics) if callable(fmt) else _cell(fmt, metrics[key])


def story_rows(stories: dict[str, Any]) -> list[list[str]]:
    per_run = stories["runs"]
    rows = [["", *(s["run"] for s in per_run)]]
    for label, key, fmt in STORY_FIGURES:
        rows.append([label, *(_story_cell(fmt, key, s["metrics"]) for s in per_run)])
    return rows


def group_rows(groups: list[dict[str, Any]]) -> list[list[str]]:
    rows = [["settings", "runs", "best valid NLL", "best bits per byte"]]
    for g in groups:
        cells = []
        for fig in ("best_valid_nll", "best_valid_bpb"):
            mean, spread = g[f"{fig}_mean"], g[f"{fig}_spread"]
            cells.append("-" if mean is None else f"{mean:.4f} ± {spread / 2:.4f}")
        rows.append([g["settings"], ", ".join(g["runs"]), *cells])
    return rows


GROUP_NOTE = "mean over the runs that differ only in seed ± half their range (max - min)"
REFERENCE_NOTE = "each scored on the valid split as text, bits per byte over the same bytes"


def reference_rows(refs: list[dict[str, Any]]) -> list[list[str]]:
    """A row per model beside the runs (:mod:`gpt_study.compare.references`)."""
    rows = [["model", *(label for label, _, _ in REFERENCE_FIGURES)]]
    for r in refs:
        rows.append([r["name"], *(_cell(fmt, r[key]) for _, key, fmt in REFERENCE_FIGURES)])
    return rows


# ------------------------------------------------------------------------ text


def aligned(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows
    )


def format_text(result: dict[str, Any]) -> str:
    """What compare prints: the table, the notes, the story figures and each opening's first
    story per run (all of them are in the Markdown)."""
    parts = [aligned(table_rows(result))]
    if result["groups"]:
        parts.append(f"by setting ({GROUP_NOTE}):\n" + aligned(group_rows(result["groups"])))
    if result.get("references"):
        rows = reference_rows(result["references"])
        parts.append(f"models beside the runs ({REFERENCE_NOTE}):\n" + aligned(rows))
    stories = result.get("stories")
    if stories and stories["runs"]:
        parts.append(
            f"stories ({stories['runs'][0]['settings_text']}):\n" + aligned(story_rows(stories))
        )
        parts.append(_first_stories(stories))
    notes = result["notes"] + (stories["notes"] if stories else [])
    parts += [f"note: {n}" for n in notes]
    return "\n\n".join(parts)


def _first_stories(stories: dict[str, Any]) -> str:
    samples = stories["settings"]["samples"]
    lines = []
    for i in range(0, len(stories["prompts"]), samples):
        lines.append(f"opening {i // samples + 1}: {stories['prompts'][i] or '(none: <sot> only)'}")
        for s in stories["runs"]:
            lines.append(f"  {s['run']}: {s['texts'][i]}")
    return "\n".join(lines)


# ------------------------------------------------------------------------ Markdown


def _md_escape(text: str) -> str:
    """A cell that renders as the text: no table breaks, no ``<eot>`` taken for an HTML tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace("|", "\\|").replace("\n", "<br>")


def md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(_md_escape(c) for c in rows[0]) + " |"]
    lines.append("|" + "---|" * len(rows[0]))
    lines += ["| " + " | ".join(_md_escape(c) for c in r) + " |" for r in rows[1:]]
    return "\n".join(lines)


def format_markdown(result: dict[str, Any]) -> str:
    parts = [MD_MARK, "# Runs compared", md_table(table_rows(result))]
    parts.append(f"![loss curves]({PNG})")
    if result["groups"]:
        parts += [f"## By setting\n\n{GROUP_NOTE}.", md_table(group_rows(result["groups"]))]
    if result.get("references"):
        parts.append(f"## Models beside the runs\n\n{REFERENCE_NOTE.capitalize()}.")
        parts.append(md_table(reference_rows(result["references"])))
    stories = result.get("stories")
    notes = result["notes"] + (stories["notes"] if stories else [])
    if notes:
        parts.append("\n".join(f"- note: {_md_escape(n)}" for n in notes))
    if stories and stories["runs"]:
        parts.append(f"## Stories\n\n{_md_escape(stories['runs'][0]['settings_text'])}.")
        parts.append(md_table(story_rows(stories)))
        parts += _md_stories(stories)
    return "\n\n".join(parts) + "\n"


def _md_stories(stories: dict[str, Any]) -> list[str]:
    samples = stories["settings"]["samples"]
    per_run = stories["runs"]
    out = []
    for i in range(0, len(stories["prompts"]), samples):
        prompt = stories["prompts"][i] or "(no prompt: <sot> only)"
        rows = [["", *(s["run"] for s in per_run)]]
        rows += [[f"{j + 1}", *(s["texts"][i + j] for s in per_run)] for j in range(samples)]
        out += [f"### {_md_escape(prompt)}", md_table(rows)]
    return out


# ------------------------------------------------------------------------ files


def check_out(out: Path) -> None:
    """Refuse (one line, before any work) an ``--out`` where compare would replace a file it
    did not write (:func:`gpt_study.outputs.check_output_file`, the one guard)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder: pass a folder")
    if not out.is_dir():
        return  # compare makes it
    for name in OWN_FILES:
        check_output_file(out / name, "compare", "--out")


def write_reports(result: dict[str, Any], out: Path) -> list[Path]:
    """Write ``compare.md`` and ``compare.json`` into ``out`` (atomically, own names only)."""
    check_out(out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / MARKDOWN, format_markdown(result))
    write_json_atomic(out / JSON, {"written_by": SOFTWARE, **result})
    return [out / MARKDOWN, out / JSON]
