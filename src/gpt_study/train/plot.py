"""``gpt-study plot``: the loss curves of a run, from its ``metrics.jsonl``, as a PNG.

Like the study's figure: training and validation loss against the optimizer step. Beside the
study's (label-smoothed, ``sp_weight``-weighted) losses it draws the plain validation NLL, the
honest number, and underneath the learning rate. Training redraws ``loss.png`` every epoch; this
command redraws it later, or for a run that was stopped.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpt_study.outputs import check_output_file, mark
from gpt_study.runs import METRICS_JSONL, PLOT, read_metrics
from gpt_study.runtime.errors import UserError
from gpt_study.runtime.files import atomic_path


def plot_run(save_root: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Draw ``<save_root>/loss.png`` (or ``out``) from ``<save_root>/metrics.jsonl``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed (servers, CI)
    import matplotlib.pyplot as plt

    save_root = Path(save_root)
    path = save_root / METRICS_JSONL
    if not path.exists():
        raise UserError(
            f"no {METRICS_JSONL} in {save_root}: point --save_root at a folder `gpt-study train` "
            "wrote"
        )
    out = check_output_file(
        out or save_root / PLOT, "plot", "--out", inputs=[path], own_in_run=PLOT
    )
    records = read_metrics(path)
    train = [r for r in records if r.get("kind") == "train"]
    valid = [r for r in records if r.get("kind") == "valid"]
    if not train and not valid and b"\n" in path.read_bytes():  # whole lines, none a record
        raise UserError(
            f"{path} holds no training records, only other text: it is damaged or not a run's "
            "metrics; point --save_root at a folder `gpt-study train` wrote"
        )
    if not train and not valid:
        raise UserError(f"{path} holds no records yet: train for at least --print_interval steps")

    fig, (ax, ax_lr) = plt.subplots(
        2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    if train:
        ax.plot(
            [r["step"] for r in train],
            [r["train_loss"] for r in train],
            label="train loss (smoothed, weighted)",
            color="tab:blue",
            alpha=0.8,
        )
        ax_lr.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:gray")
    if valid:
        steps = [r["step"] for r in valid]
        ax.plot(
            steps,
            [r["valid_loss"] for r in valid],
            "o-",
            label="valid loss (smoothed, weighted)",
            color="tab:orange",
        )
        ax.plot(
            steps,
            [r["valid_nll"] for r in valid],
            "s--",
            label="valid NLL (nats/token)",
            color="tab:green",
        )
        last = valid[-1]
        bpb = last.get("valid_bpb")
        note = f"last valid: NLL {last['valid_nll']:.3f}, ppl {last['valid_ppl']:.1f}"
        if bpb is not None:
            note += f", {bpb:.3f} bits/byte"
        ax.set_title(f"{save_root.name}: {note}", fontsize=10)
    ax.set_ylabel("loss (nats/token)")
    ax.grid(alpha=0.3)
    ax.legend()
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_xlabel("optimizer step")
    ax_lr.grid(alpha=0.3)
    fig.tight_layout()

    with atomic_path(out) as tmp:  # a viewer never sees half a PNG
        fig.savefig(tmp, dpi=110, format="png", metadata={"Software": mark("plot")})
    plt.close(fig)
    return out
