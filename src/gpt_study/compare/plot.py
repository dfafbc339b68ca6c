"""One PNG with every run's curves overlaid, on four axes that compare runs fairly.

Valid NLL against the optimizer step (the study's axis), against tokens seen (fair between
runs of different batch sizes) and against minutes (fair between runs of different speeds), and
bits per byte against tokens (fair between tokenizers too). Each run's training loss is drawn
faint behind its NLL: it is the study's smoothed, ``sp_weight``-weighted loss, so it shows the
run's shape, not a figure to compare. Runs that differ only in their seed share a colour and
differ in line style, so a change of setting stands out from the seed-to-seed spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gpt_study.compare.runs import RunData, format_value
from gpt_study.outputs import mark
from gpt_study.runtime.files import atomic_path

PNG = "compare.png"
SOFTWARE = mark("compare")  # written into the PNG, so compare knows the file is its own
STYLES = ("-", "--", ":", "-.")


def _x(record: dict[str, Any], axis: str) -> float:
    if axis == "minutes":
        return record.get("elapsed_s", 0.0) / 60
    return record[axis]


def run_styles(runs: list[RunData], settings: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Colour per group of runs that differ only in ``seed``, line style within a group, and a
    label naming the run with its differing settings."""
    import matplotlib

    colours = matplotlib.colormaps["tab10"].colors
    groups: dict[str, int] = {}
    seen: dict[str, int] = {}
    out = []
    for i, run in enumerate(runs):
        key = ", ".join(f"{k} {format_value(v[i])}" for k, v in settings.items() if k != "seed")
        colour = colours[groups.setdefault(key, len(groups)) % len(colours)]
        n = seen[key] = seen.get(key, -1) + 1
        shown = ", ".join(f"{k} {format_value(v[i])}" for k, v in settings.items())
        label = f"{run.name} ({shown})" if shown else run.name
        out.append({"color": colour, "linestyle": STYLES[n % len(STYLES)], "label": label})
    return out


def plot_runs(
    runs: list[RunData],
    settings: dict[str, list[Any]],
    out: str | Path,
    nll_note: str = "",
    dpi: int = 100,
    references: Sequence[dict[str, Any]] = (),
) -> Path:
    """Draw the runs' curves to ``out`` (written atomically). ``nll_note`` is added to the
    titles of the NLL panels (e.g. that the tokenizers differ); each of ``references`` (rows of
    :mod:`gpt_study.compare.references`) is a horizontal line on the bits-per-byte panel."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (servers, CI)
    import matplotlib.pyplot as plt

    styles = run_styles(runs, settings)
    fig, axes = plt.subplots(2, 2, figsize=(12, 8))
    panels = [
        (axes[0, 0], "step", "valid_nll", "optimizer step"),
        (axes[0, 1], "tokens", "valid_nll", "tokens seen"),
        (axes[1, 0], "minutes", "valid_nll", "minutes of training"),
        (axes[1, 1], "tokens", "valid_bpb", "tokens seen"),
    ]
    for ax, axis, key, xlabel in panels:
        for run, style in zip(runs, styles, strict=True):
            if key == "valid_nll" and run.train:
                ax.plot(
                    [_x(r, axis) for r in run.train],
                    [r["train_loss"] for r in run.train],
                    color=style["color"],
                    linestyle=style["linestyle"],
                    alpha=0.2,
                    linewidth=1,
                )
            points = [r for r in run.valid if r.get(key) is not None]
            ax.plot(
                [_x(r, axis) for r in points],
                [r[key] for r in points],
                marker="o",
                markersize=3,
                **style,
            )
        what = "valid NLL (nats/token)" if key == "valid_nll" else "valid bits per byte"
        ax.set_title(f"{what} vs {xlabel}" + (f" {nll_note}" if key == "valid_nll" else ""))
        ax.set_xlabel(xlabel)
        ax.set_ylabel(what)
        ax.grid(alpha=0.3)
    _limit_to_valid(axes, runs)
    _reference_lines(axes[1, 1], references)
    axes[0, 0].legend(fontsize=8, title="faint: train loss (smoothed, weighted)", title_fontsize=8)
    fig.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:  # a viewer never sees half a PNG
        fig.savefig(tmp, dpi=dpi, format="png", metadata={"Software": SOFTWARE})
    plt.close(fig)
    return out


def _reference_lines(ax: Any, references: Sequence[dict[str, Any]]) -> None:
    """A dashed line per reference model at its bits per byte, named in the panel's legend."""
    import matplotlib

    colours = matplotlib.colormaps["Dark2"].colors
    drawn = False
    for i, ref in enumerate(references):
        bpb = ref.get("bits_per_byte")
        if bpb is None or not math.isfinite(bpb):
            continue
        label = f"{ref['name']}: {bpb:.3f}"
        ax.axhline(bpb, color=colours[i % len(colours)], linestyle="--", linewidth=1.2, label=label)
        drawn = True
    if drawn:
        ax.legend(fontsize=8, title="dashed: models beside the runs", title_fontsize=8)


def _limit_to_valid(axes: Any, runs: list[RunData]) -> None:
    """Keep the NLL panels' y range on the part of training the validations cover: the first
    steps' losses are far higher and would flatten the part of the curves worth reading."""
    values = []
    for run in runs:
        first = min(r["step"] for r in run.valid)
        values += [r["valid_nll"] for r in run.valid]
        values += [r["train_loss"] for r in run.train if r["step"] >= first]
    lo, hi = min(values), max(values)
    pad = 0.05 * (hi - lo or 1.0)
    for ax in (axes[0, 0], axes[0, 1], axes[1, 0]):
        ax.set_ylim(lo - pad, hi + pad)
