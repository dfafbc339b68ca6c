"""Time held-out scoring of one batch: ``heldout._add`` against the straightforward way.

    python benchmarks/bench_scoring.py                 # the cpu preset's batch: 32 x 128, V 4,096
    python benchmarks/bench_scoring.py --vocab 30000 --sp_weight 2 --smoothing 0.1   # the seed's

Validation after every epoch and ``gpt-study evaluate`` score each batch of logits for the NLL,
the study's loss (class weights, smoothing) and the top-1 hit. The reference does it as written
plainly: ``cross_entropy`` for the NLL, ``cross_entropy`` again with the weights and smoothing,
``argmax`` for the hit. ``_add`` takes the log-softmax once and the hit from ``amax``. Both run
on the same logits, alternating in one process, and must give the same sums (checked).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from gpt_study.evaluate.heldout import Sums, _add  # noqa: E402
from gpt_study.model.loss import class_weights, special_weights  # noqa: E402

IDS = (1, 2)  # <sot>, <eot>


def reference(logits, y, eps, sp) -> tuple[float, float, float, float]:
    flat, t = logits.flatten(0, 1), y.flatten()  # (B*T, V), (B*T,)
    nll = F.cross_entropy(flat, t, reduction="none")
    w = class_weights(flat.size(-1), sp, IDS)
    loss = F.cross_entropy(flat, t, weight=w, label_smoothing=eps, reduction="sum")
    weight = special_weights(t, sp, IDS).sum()
    hits = (flat.argmax(-1) == t).sum()
    return nll.sum().item(), loss.item(), weight.item(), float(hits.item())


def scored(logits, y, eps, sp) -> tuple[float, float, float, float]:
    s = Sums()
    _add(s, logits, y, eps, sp, 0, IDS)
    return s.nll, s.loss, s.weight, s.correct


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--sp_weight", type=float, default=2.0)
    ap.add_argument("--smoothing", type=float, default=0.0)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    logits = torch.randn(args.batch, args.context, args.vocab) * 3  # (B, T, V), fp32 as scored
    y = torch.randint(0, args.vocab, (args.batch, args.context))
    eps, sp = args.smoothing, args.sp_weight
    want, got = reference(logits, y, eps, sp), scored(logits, y, eps, sp)
    for a, b in zip(want, got, strict=True):
        if abs(a - b) > 1e-4 * max(1.0, abs(a)):
            print(f"different sums: reference {want}, _add {got}", file=sys.stderr)
            return 1
    times: dict[str, list[float]] = {"reference": [], "_add": []}
    for _ in range(args.repeats):
        for name, f in (("reference", reference), ("_add", scored)):
            t = time.perf_counter()
            f(logits, y, eps, sp)
            times[name].append(time.perf_counter() - t)
    ref, new = (statistics.median(times[k]) for k in ("reference", "_add"))
    print(
        f"one batch ({args.batch} x {args.context}, V {args.vocab:,}, sp_weight {sp:g}, smoothing "
        f"{eps:g}; {torch.get_num_threads()} threads, medians of {args.repeats}): reference "
        f"{ref * 1e3:.1f} ms, _add {new * 1e3:.1f} ms, {ref / new:.2f}x"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
