"""Where a training step's time goes: torch.profiler over the step ``gpt-study train`` runs.

    python benchmarks/profile_train.py --preset cpu            # the cpu preset, PREPARED_WITH
    python benchmarks/profile_train.py --preset seed --steps 3 # the study's model
    python benchmarks/profile_train.py --preset cpu --threads 1 --markdown
    python benchmarks/profile_train.py --preset peer          # bench_train.py's peer shape

It builds the preset's model, loss module (``LMLoss``) and optimizer (``make_optimizer``) with the
library's own functions, runs warm-up steps, then profiles ``--steps`` steps on the CPU and prints
the operators by their own (self) time, each with its share of the step, and the step split into
forward, backward and optimizer. The rows are the same ops whatever the machine; the times are
this machine's, so compare shares, and name the CPU (printed first) beside any figure.
"""

from __future__ import annotations

import argparse
import platform
import time
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from gpt_study.config.presets import PRESETS, prepared_vocab, preset_config
from gpt_study.model.gpt import GPT, flops_per_token
from gpt_study.model.loss import LMLoss
from gpt_study.model.masks import mask_stream
from gpt_study.runtime.device import autocast, process_settings, resolve_dtype
from gpt_study.runtime.memory import use_huge_pages
from gpt_study.train.optim import make_optimizer

# What each preset is prepared with (cpu: the bpe vocabulary it was measured on).
VOCAB = {name: prepared_vocab(name) for name in PRESETS}

# The peer's shape on gpt-study's model options (1,328,256 parameters at bpe 4,096, context 128).
PEER = dict(
    vocab_size=4096,  # the peer's shape as issue 27 measured it: bpe 4,096
    positions="learned",
    norm="layernorm",
    mlp="gelu",
    tie_embeddings=True,
    bias=False,
    norm_bias=False,
    head_bias=False,
    attention_drop=0.1,
    residual_drop=0.1,
    embedding_drop=0.1,
    inner_drop=0.0,  # nanoGPT's feed-forward has no dropout inside it, only on its output
    d_model=128,
    n_layers=4,
    n_heads=4,
    d_ff=512,
    max_len=128,  # its block_size, whatever the cpu preset's window becomes
)
# its batch of 32 rows of its block_size, as issue 27 measured nanoGPT's train.py
PEER_ROWS = {"batch_size": 32, "context_size": PEER["max_len"]}
# --preset peer: the cpu preset's build with the peer's shape and rows
SHAPES = {"peer": ("cpu", PEER, PEER_ROWS)}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def build(preset: str, dtype_name: str, model: dict | None = None, train: dict | None = None):
    """The preset's config (``model`` and ``train`` override its settings), model, loss,
    optimizer, the autocast dtype ``dtype_name`` resolves to, and one random batch of the
    config's rows and window."""
    model = {"vocab_size": VOCAB[preset], **(model or {})}
    cfg = preset_config(preset, model=model, train=train or {})
    torch.manual_seed(0)
    net = GPT(cfg.model)
    loss_fn = LMLoss(net, cfg.train.loss.label_smoothing, cfg.train.loss.sp_weight)
    opt = make_optimizer(net, cfg.train, "cpu")
    dtype = resolve_dtype(dtype_name, "cpu")
    B, T = cfg.train.rows.batch_size, cfg.train.window
    x = torch.randint(0, cfg.model.vocab_size, (B, T))
    y = torch.randint(0, cfg.model.vocab_size, (B, T))
    return cfg, net, loss_fn, opt, dtype, x, y


def step(net, loss_fn, opt, dtype, x, y, clip: float = 0.0) -> torch.Tensor:
    """The arithmetic of one training step (forward and loss, backward, clipping at ``clip``, the
    optimizer) as ``train/loop.py``'s ``train_step`` does it for one micro-batch at a fixed rate:
    the rate's schedule, gradient accumulation, EMA and a GradScaler (fp16) are left out."""
    with record_function("## forward"), autocast("cpu", dtype), mask_stream():
        loss = loss_fn(x, y)
    with record_function("## backward"):
        loss.backward()
    with record_function("## optimizer"):
        if clip > 0:
            torch.nn.utils.clip_grad_norm_(net.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return loss


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--preset", default="cpu", choices=sorted([*VOCAB, *SHAPES]))
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--dtype", default="auto", help="float32, bfloat16 or auto (as train)")
    ap.add_argument("--top", type=int, default=15, help="operator rows to print")
    ap.add_argument("--markdown", action="store_true", help="print Markdown tables")
    args = ap.parse_args()
    use_huge_pages()  # as the gpt-study CLI runs; before anything large is allocated

    threads = args.threads or None
    preset, model, train = SHAPES.get(args.preset, (args.preset, None, None))
    cfg, net, loss_fn, opt, dtype, x, y = build(preset, args.dtype, model, train)
    with process_settings(threads, "cpu", dtype, training=True):
        for _ in range(args.warmup):
            step(net, loss_fn, opt, dtype, x, y)
        t0 = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(args.steps):
                step(net, loss_fn, opt, dtype, x, y)
        wall = (time.perf_counter() - t0) / args.steps
    report(prof, cfg, args, dtype, wall, x.numel())
    return 0


def report(prof, cfg, args, dtype, wall: float, tokens: int) -> None:
    events = prof.key_averages()
    phases = {e.key: e.cpu_time_total for e in events if e.key.startswith("## ")}
    ops = [e for e in events if not e.key.startswith("## ") and e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in ops) or 1.0
    flops = flops_per_token(cfg.model, cfg.train.window) * tokens
    print(f"{_cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(
        f"preset {args.preset}: batch {cfg.train.rows.batch_size} x "
        f"{cfg.train.window}, {sum(p.numel() for p in GPT(cfg.model).parameters()):,} "
        f"parameters, {dtype}; step {wall * 1e3:.0f} ms under the profiler, "
        f"{tokens / wall:,.0f} tokens/s, {flops / wall / 1e12:.3f} TFLOP/s"
    )
    sep = " | " if args.markdown else "  "
    line = (lambda *c: "| " + " | ".join(c) + " |") if args.markdown else (lambda *c: sep.join(c))
    print(line("phase", "ms per step", "share"))
    if args.markdown:
        print("| --- | ---: | ---: |")
    step_us = sum(phases.values()) or 1.0
    for name in ("## forward", "## backward", "## optimizer"):
        us = phases.get(name, 0.0) / args.steps
        print(line(name[3:], f"{us / 1e3:.1f}", f"{phases.get(name, 0) / step_us:.0%}"))
    by_op: dict[str, float] = defaultdict(float)
    for e in ops:
        by_op[e.key] += e.self_cpu_time_total
    print(line("operator (self time)", "ms per step", "share"))
    if args.markdown:
        print("| --- | ---: | ---: |")
    for key, us in sorted(by_op.items(), key=lambda kv: -kv[1])[: args.top]:
        print(line(f"`{key}`", f"{us / args.steps / 1e3:.1f}", f"{us / total:.1%}"))


if __name__ == "__main__":
    raise SystemExit(main())
