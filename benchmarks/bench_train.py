"""Time a training step of the study's model: gpt-study's fast step against the study's own.

    python benchmarks/bench_train.py                       # seed config, batch 64 x 128, CPU
    python benchmarks/bench_train.py --ablation            # also each speed-up on its own
    python benchmarks/bench_train.py --threads 1           # a CPU shared with other work
    python benchmarks/bench_train.py --device cuda         # on a GPU: MFU against its peak
    python benchmarks/bench_train.py --preset cpu          # the cpu preset's step, PREPARED_WITH
    python benchmarks/bench_train.py --preset cpu --batch_size 8 --context_size 256  # other rows
    python benchmarks/bench_train.py --preset peer         # the peer's shape vs a nanoGPT step
    python benchmarks/bench_train.py --huge_pages off      # without 2 MiB pages (earlier rounds)

``--preset seed`` (the default) is what this docstring describes below. ``--preset cpu`` times
the step ``gpt-study train --preset cpu`` runs (bf16 as ``--dtype auto`` resolves, the library's
``LMLoss`` and ``make_optimizer``, gradient clipping at the preset's 1.0; built by
``profile_train.py``'s ``build``/``step``) alone: tokens/s, FLOP/s and MFU. ``--preset peer``
configures gpt-study to the peer's shape (learned positions, LayerNorm, GELU, tied embeddings, no
biases, dropout 0.1 where nanoGPT has it: embeddings, attention weights and both branches'
outputs, ``--inner_drop 0``; 4 x 128 wide, 4 heads, d_ff 512: 1,328,256 parameters at bpe
4,096, batch 32 x 128) and times its step, the cpu preset's recipe, against
``reference.NanoStyleGPT`` of the same shape run as nanoGPT's train.py runs on a CPU: fp32, its
unfused AdamW, clipping at 1.0.

The reference (benchmarks/reference.py) is the study's step: fp32, separate q/k/v projections,
attention as an explicit masked softmax, cross-entropy with label smoothing on the full fp32
logits, and AdamW without foreach or fused kernels. The fast step is what ``gpt-study train
--dtype auto`` runs (the ``seed`` preset keeps the study's fp32 unless asked): bf16 autocast, the model's attention (``scaled_dot_product_attention``, or on a CPU with
dropout the cheaper masks and hand-written attention of ``gpt_study.model.kernels``), the chunked output
layer + loss (``gpt_study.model.loss.head_loss``), fused AdamW, bf16 attention math and memory that
stays mapped between steps (``gpt_study.runtime.device``). Both start from the same weights; the script
first checks that they compute the same loss, then times them in alternation in this one
process, so that other work on the machine slows both alike, and reports medians.

FLOP/s count the model's training FLOPs (``gpt_study.model.flops_per_token``: 6 per weight per
token, plus attention), divided by the measured time. MFU divides them by a matmul peak that
the script measures on this machine, in fp32 and in bf16: "MFU" uses the peak of the dtype the
step computes in (fp32 for the reference, bf16 for the fast step).

On a CPU that other processes keep busy, two threads can be slower than one: every parallel
region waits for a thread the scheduler has put aside. The script prints the load average;
compare ``--threads 1`` with the default there.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpt_study.config import GPTConfig, TrainConfig  # noqa: E402
from gpt_study.config.presets import prepared_vocab  # noqa: E402
from gpt_study.model.gpt import GPT, flops_per_token  # noqa: E402
from gpt_study.model.kernels import use_cpu_path  # noqa: E402
from gpt_study.model.loss import head_loss, reference_lm_loss  # noqa: E402
from gpt_study.model.masks import mask_stream  # noqa: E402
from gpt_study.runtime.device import allow_bf16_attention_math, reuse_freed_memory  # noqa: E402
from gpt_study.runtime.memory import use_huge_pages  # noqa: E402
from profile_train import SHAPES, build  # noqa: E402
from profile_train import step as train_step  # noqa: E402
from reference import NanoStyleGPT, ReferenceGPT, copy_from, nano_adamw, reference_loss  # noqa: E402

# The study's optimizer and loss settings: the config's defaults, which are the study's.
_STUDY = TrainConfig()
ADAMW = dict(
    lr=_STUDY.optim.lr,
    betas=_STUDY.optim.lr_betas,
    eps=_STUDY.optim.eps,
    weight_decay=_STUDY.optim.weight_decay,
)
LABEL_SMOOTHING = _STUDY.loss.label_smoothing


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> float:
    """Best FLOP/s of an n x n matmul: what this machine's matrix units deliver at best."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)
    sync(device)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        sync(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def reference_step(model, opt, x, y) -> Callable[[], torch.Tensor]:
    def step() -> torch.Tensor:
        loss = reference_loss(model(x), y, LABEL_SMOOTHING)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def fast_step(model, opt, x, y, device, bf16=True, chunked=True, hidden=None):
    """The training step of gpt-study; ``bf16``/``chunked`` off give the ablation rows."""
    hidden = hidden or model.hidden

    def step() -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16), mask_stream():
            if chunked:
                loss = head_loss(model.head, hidden(x), y, LABEL_SMOOTHING)
            else:
                loss = reference_lm_loss(model.head(hidden(x)), y, LABEL_SMOOTHING)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step


def adamw(params, fused: bool):
    if fused:
        return torch.optim.AdamW(params, fused=True, **ADAMW)
    return torch.optim.AdamW(params, foreach=False, fused=False, **ADAMW)


SEED_ONLY = ("vocab_size", "ablation", "no_dropout")  # the flags that only the seed's rows read


def not_for_preset(args: argparse.Namespace) -> str | None:
    """One line naming the flags that ``--preset`` would ignore, so that no figure is read as
    the option's when the benchmark left it out."""
    unused = [f"--{k}" for k in SEED_ONLY if args.preset != "seed" and getattr(args, k)]
    if args.preset == "peer" and args.context_size:
        unused.append("--context_size")  # the peer keeps nanoGPT's block of 128 tokens
    if not unused:
        return None
    return (
        f"{' and '.join(unused)}: not read by --preset {args.preset} (it times its own "
        "settings); drop them, or use --preset seed"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    ap.add_argument(
        "--preset",
        choices=("seed", "cpu", "peer"),
        default="seed",
        help="seed: the study's step vs gpt-study's fast step (default); cpu: the cpu preset's "
        "step; peer: gpt-study in the peer's shape vs a nanoGPT-style step",
    )
    ap.add_argument(
        "--batch_size",
        type=int,
        default=0,
        help="rows per step (0: 64 for seed, the cpu preset's own, 32 for peer)",
    )
    ap.add_argument(
        "--context_size",
        type=int,
        default=0,
        help="tokens per row (0: 128 for seed, the cpu preset's own; peer keeps its 128)",
    )
    ap.add_argument(
        "--vocab_size",
        type=int,
        default=0,
        help="seed only (0: the study's 30,000; cpu: its PREPARED_WITH, peer: 4,096)",
    )
    ap.add_argument("--steps", type=int, default=5, help="timed steps of each kind")
    ap.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="untimed steps of each kind first (a process's first two fault in its memory)",
    )
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument(
        "--peak_size",
        type=int,
        default=0,
        help="n of the n x n peak matmul (0: 2048 CPU, 8192 GPU)",
    )
    ap.add_argument(
        "--ablation",
        action="store_true",
        help="also time each speed-up added in turn",
    )
    ap.add_argument(
        "--compile", action="store_true", help="also time the fast step with torch.compile"
    )
    ap.add_argument(
        "--no_dropout",
        action="store_true",
        help="dropout 0 in both models (the seed config has 0.1: on a CPU it keeps attention "
        "on PyTorch's math path, as no fused kernel takes dropout there)",
    )
    ap.add_argument(
        "--reuse_memory",
        choices=("on", "off"),
        default="on",
        help="gpt_study.runtime.reuse_freed_memory for the whole process, so for every kind of "
        "step, the reference included (default: on, as gpt-study train does); run once with "
        "each to see what it is worth. Switching it between steps would let one kind's heap "
        "slow the next.",
    )
    ap.add_argument(
        "--huge_pages",
        choices=("on", "off"),
        default="on",
        help="gpt_study.runtime.use_huge_pages (2 MiB pages for PyTorch's large CPU blocks) for "
        "the whole process, the reference included (default: on, as the gpt-study CLI runs); "
        "off: the earlier rounds' conditions, and the study's on a system that gives huge pages "
        "only to programs that ask",
    )
    args = ap.parse_args()
    if problem := not_for_preset(args):
        print(problem, file=sys.stderr)
        return 2
    # Before anything large is allocated: PyTorch reads the setting once.
    use_huge_pages(args.huge_pages == "on")

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here: run with --device cpu", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    reused = args.reuse_memory == "on" and reuse_freed_memory(True)  # off: glibc untouched
    torch.manual_seed(0)
    drop = dict(attention_drop=0.0, residual_drop=0.0, embedding_drop=0.0)
    vocab = args.vocab_size or prepared_vocab("seed")
    cfg = GPTConfig(vocab_size=vocab, **(drop if args.no_dropout else {}))
    B, T = args.batch_size or 64, args.context_size or 128
    x = torch.randint(0, cfg.vocab_size, (B, T), device=device)
    y = torch.randint(0, cfg.vocab_size, (B, T), device=device)

    # Machine and peaks.
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        n, reps = 8192, 20
    else:
        name = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = f"{line.split(':', 1)[1].strip()}, {torch.get_num_threads()} threads"
                    break
        except OSError:
            pass
        n, reps = 2048, 10
    if args.peak_size:
        n, reps = args.peak_size, 3
    peak = {
        "fp32": matmul_peak(device, torch.float32, n, reps),
        "bf16": matmul_peak(device, torch.bfloat16, n, reps),
    }
    print(f"machine: {name}; torch {torch.__version__}; {load()}")
    print(f"freed memory kept for reuse (glibc mallopt): {'yes' if reused else 'no'}")
    print(f"huge pages for large blocks (THP_MEM_ALLOC_ENABLE): {args.huge_pages}")
    if args.preset != "seed":
        return preset_main(args, device, peak, n, reps)

    # Models: the same weights in both.
    gpt = GPT(cfg).to(device)
    ref = ReferenceGPT(cfg).to(device)
    copy_from(ref, gpt)
    assert ref_params(ref) == gpt.num_params(), "reference and model differ in size"
    print(
        f"model: seed config, {gpt.num_params():,} parameters, batch {B} x context {T}, "
        f"vocab {cfg.vocab_size}"
    )

    allow_bf16_attention_math(True)
    gpt.eval(), ref.eval()
    with torch.no_grad():
        want = reference_loss(ref(x), y, LABEL_SMOOTHING).item()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            got = head_loss(gpt.head, gpt.hidden(x), y, LABEL_SMOOTHING).item()
    print(f"same loss at the same weights (no dropout): reference {want:.4f}, fast {got:.4f}")
    if abs(want - got) > 2e-2:
        print("the fast step computes a different loss: not timing it", file=sys.stderr)
        return 1
    gpt.train(), ref.train()

    # Each kind of step with the process-wide settings it runs under: (bf16 attention math,
    # gpt_study.model.kernels' CPU dropout path). They are switched before each step.
    REF, FAST = "reference (fp32, study)", "gpt-study fast step"
    steps: dict[str, Callable[[], torch.Tensor]] = {
        REF: reference_step(ref, adamw(ref.parameters(), False), x, y),
    }
    settings: dict[str, tuple[bool, bool]] = {REF: (False, False)}
    dtype_of = {REF: "fp32"}

    def copy_of_gpt() -> GPT:
        m = GPT(cfg).to(device)
        m.load_state_dict(gpt.state_dict())
        return m

    if args.ablation:
        rows = [  # name, fused AdamW, chunked head, settings
            ("bf16 autocast only", False, False, (False, False)),
            ("+ fused AdamW", True, False, (False, False)),
            ("+ bf16 attention math", True, False, (True, False)),
            ("+ chunked output layer and loss", True, True, (True, False)),
            ("+ CPU dropout path (gpt_study.model.kernels)", True, True, (True, True)),
        ]
        for name, fused, chunked, setting in rows:
            m = copy_of_gpt()
            steps[name] = fast_step(m, adamw(m.parameters(), fused), x, y, device, chunked=chunked)
            settings[name], dtype_of[name] = setting, "bf16"
    steps[FAST] = fast_step(gpt, adamw(gpt.parameters(), True), x, y, device)
    settings[FAST], dtype_of[FAST] = (True, True), "bf16"
    if args.compile:
        mc = copy_of_gpt()
        t = time.perf_counter()
        use_cpu_path(True)
        step = fast_step(
            mc, adamw(mc.parameters(), True), x, y, device, hidden=torch.compile(mc.hidden)
        )
        step()
        sync(device)
        print(f"torch.compile: first step (compiling) took {time.perf_counter() - t:.0f} s")
        name = "fast step + torch.compile"
        steps[name] = step
        settings[name], dtype_of[name] = (True, True), "bf16"

    times = time_steps(steps, settings, args, device)
    report(times, REF, dtype_of, flops_per_token(cfg, T), B * T, peak, n, reps, args, device)
    return 0


def preset_main(args, device, peak, n, reps) -> int:
    """``--preset cpu`` or ``peer``: gpt-study's step as ``gpt-study train`` runs it (alone for
    cpu; against a nanoGPT-style fp32 step of the same shape for peer)."""
    if device.type != "cpu":
        print("--preset cpu and peer time CPU steps: run them with --device cpu", file=sys.stderr)
        return 2
    # the cpu preset's own shape and rows, or the peer's (profile_train's SHAPES)
    _, shape, rows = SHAPES.get(args.preset, ("cpu", None, None))
    rows = dict(rows or {})
    rows.update({"batch_size": args.batch_size} if args.batch_size else {})
    if args.preset == "cpu" and args.context_size:  # the preset at another window
        rows["context_size"] = args.context_size
    cfg, net, loss_fn, opt, dtype, x, y = build("cpu", "auto", shape, rows)
    B = x.size(0)
    T, clip, mc = x.size(1), cfg.train.optim.grad_clip, cfg.model
    name = "gpt-study, cpu preset" if args.preset == "cpu" else "gpt-study, peer shape"
    kind = "bf16" if dtype == torch.bfloat16 else "fp32"
    steps = {name: lambda: train_step(net, loss_fn, opt, dtype, x, y, clip)}
    settings, dtype_of = {name: (dtype == torch.bfloat16, True)}, {name: kind}
    if args.compile:  # what `gpt-study train --compile` runs: the model and loss compiled as one
        _, net_c, loss_c, opt_c, *_ = build("cpu", "auto", shape, rows)
        net_c.load_state_dict(net.state_dict())
        loss_c = torch.compile(loss_c)
        t = time.perf_counter()
        compiled = f"{name} + torch.compile"
        steps[compiled] = lambda: train_step(net_c, loss_c, opt_c, dtype, x, y, clip)
        steps[compiled]()
        print(f"torch.compile: first step (compiling) took {time.perf_counter() - t:.0f} s")
        settings[compiled], dtype_of[compiled] = settings[name], kind
    print(
        f"model: {args.preset}, {net.num_params():,} parameters, batch {B} x context {T}, "
        f"vocab {mc.vocab_size}; {dtype} autocast (--dtype auto), {type(opt).__name__} "
        f"(AdamW fused={getattr(opt, 'adamw', opt).defaults.get('fused')}), grad clip {clip}"
    )
    if args.preset == "peer":
        torch.manual_seed(0)
        nano = NanoStyleGPT(mc)
        nano_opt = nano_adamw(nano)
        assert ref_params(nano) == net.num_params(), "nanoGPT-style model differs in size"
        from torch.optim.optimizer import _default_to_fused_or_foreach  # what step() picks

        foreach = _default_to_fused_or_foreach(list(nano.parameters()), False, False)[1]
        print(
            f"nanoGPT-style reference: {ref_params(nano):,} parameters, fp32, AdamW fused=False, "
            f"foreach=None (torch resolves it to {foreach} on CPU tensors), grad clip 1.0"
        )

        def nano_step() -> torch.Tensor:
            loss = nano(x, y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(nano.parameters(), 1.0)
            nano_opt.step()
            nano_opt.zero_grad(set_to_none=True)
            return loss

        ref = "nanoGPT-style reference (fp32)"
        steps = {ref: nano_step, **steps}
        settings[ref], dtype_of[ref] = (False, True), "fp32"
    times = time_steps(steps, settings, args, device)
    ref = next(iter(times))
    report(times, ref, dtype_of, flops_per_token(mc, T), B * T, peak, n, reps, args, device)
    if args.preset == "peer":
        med = statistics.median(times[ref]) / statistics.median(times[name])
        best = min(times[ref]) / min(times[name])
        print(f"{name} vs nanoGPT-style step: median {med:.2f}x, fastest {best:.2f}x")
    return 0


def time_steps(steps, settings, args, device) -> dict[str, list[float]]:
    """``args.warmup`` then ``args.steps`` timed steps of each kind, in alternation, each under
    its (bf16 attention math, CPU dropout path) settings."""

    def run(name: str) -> float:
        bf16_math, cpu_path = settings[name]
        allow_bf16_attention_math(bf16_math)
        use_cpu_path(cpu_path)
        sync(device)
        t = time.perf_counter()
        loss = steps[name]()
        sync(device)
        elapsed = time.perf_counter() - t
        if not torch.isfinite(loss):
            raise RuntimeError(f"{name}: loss is {loss.item()}")
        return elapsed

    for name in steps:
        for _ in range(args.warmup):
            run(name)
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.steps):  # in alternation: load from other work hits every kind alike
        for name in steps:
            times[name].append(run(name))
    return times


def report(times, REF, dtype_of, fpt, tokens, peak, n, reps, args, device) -> None:
    """The peaks measured again, then a table of the medians and the fastest steps' ratios."""
    # The peak again after the steps: the best of both, so a busy moment cannot lower it.
    for dt, key in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        peak[key] = max(peak[key], matmul_peak(device, dt, n, reps))
    print(
        f"measured matmul peak ({n}x{n}, best of {2 * reps}): fp32 {peak['fp32'] / 1e12:.2f} "
        f"TFLOP/s, bf16 {peak['bf16'] / 1e12:.2f} TFLOP/s; {load()}"
    )
    ref_t = statistics.median(times[REF])
    print(f"training FLOPs per token: {fpt / 1e6:.1f} M; {args.steps} timed steps each, medians")
    print()
    header = (
        "| step | ms/step | tokens/s | vs reference | TFLOP/s | % of fp32 peak "
        "| % of bf16 peak | MFU |"
    )
    print(header)
    print("|" + "---|" * 8)
    for name, ts in times.items():
        t = statistics.median(ts)
        flops = fpt * tokens / t
        mfu = flops / peak[dtype_of[name]]
        print(
            f"| {name} | {t * 1e3:.0f} | {tokens / t:,.0f} | {ref_t / t:.2f}x | "
            f"{flops / 1e12:.3f} | {100 * flops / peak['fp32']:.0f}% | "
            f"{100 * flops / peak['bf16']:.1f}% | {100 * mfu:.1f}% ({dtype_of[name]}) |"
        )
    print()
    for name, ts in times.items():
        print(f"{name}: " + " ".join(f"{t * 1e3:.0f}" for t in ts) + " ms")
    # Fastest steps: the least disturbed by other work on a shared machine.
    best_ref = min(times[REF])
    print(
        "fastest step of each, against the reference's fastest: "
        + ", ".join(f"{name} {best_ref / min(ts):.2f}x" for name, ts in times.items())
    )


def load() -> str:
    """The 1-minute load average: how much other work shared the machine."""
    try:
        return f"load average {os.getloadavg()[0]:.1f}"
    except OSError:
        return "load average unknown"


def ref_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
    raise SystemExit(main())
