"""Where a run executes: device, dtype, autocast, threads and the process-wide speed settings.

This is the one module that decides these. Model, loss and training code receive a device name
and a dtype and never look at the machine themselves. The process-wide settings (thread count,
TF32 matmuls, bf16 attention math, glibc's memory reuse) are applied through
:func:`process_settings`, a context manager that restores them (``fit`` holds it for its run), so
calling ``fit`` from a notebook changes nothing outside the call. The one setting a run changes while it runs, the thread count
under ``--threads auto`` (:class:`ThreadTuner`), is restored by :func:`thread_tuning` likewise.

``benchmarks/bench_train.py`` measures each piece of the fast step against the study's plain
fp32 step with the same functions, so the benchmark measures what users run.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from gpt_study.runtime.choices import DTYPES, SWITCH
from gpt_study.runtime.errors import UserError


def resolve_device(name: str) -> str:
    """``auto``: CUDA, else Apple MPS, else CPU; other names are checked with a clear error."""
    if name == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        return "mps" if mps is not None and mps.is_available() else "cpu"
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}, but no CUDA GPU is visible: use --device cpu or auto")
    if kind == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise UserError(f"--device {name}, but MPS is not available: use --device cpu or auto")
    if kind not in ("cpu", "cuda", "mps"):
        raise UserError(f"unknown --device {name!r}: use auto, cpu, cuda, cuda:N or mps")
    return name


def cpu_has_fast_bf16() -> bool:
    """bf16 matmuls run natively (AMX or AVX512-BF16); elsewhere they are emulated and slow."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """Training's autocast dtype: ``auto`` picks bfloat16 where the device computes it natively
    (float16, never picked by ``auto``, is for GPUs without bf16 and trains with a GradScaler)."""
    if name not in DTYPES:
        raise UserError(f"unknown --dtype {name!r}: use {', '.join(DTYPES)}")
    if name != "auto":
        return getattr(torch, name)
    kind = device.split(":")[0]
    if kind == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    if kind == "cpu" and cpu_has_fast_bf16():
        return torch.bfloat16
    return torch.float32


def inference_dtype(name: str, device: torch.device) -> torch.dtype:
    """Weights' dtype for generation and evaluation.

    ``auto``: bfloat16 on a GPU that supports it, float32 elsewhere (on a CPU, float32 is both the
    faster and the exact choice for a model this small: docs/train.md, "Measurements").
    """
    if name == "auto":
        use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
        name = "bfloat16" if use_bf16 else "float32"
    return getattr(torch, name)


def autocast(device: str, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    """Mixed precision for forward passes: matmuls in ``dtype`` (bf16 or fp16), weights and
    optimizer in fp32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=dtype)


def resolve_pin_memory(setting: str, device: str) -> bool:
    """Whether batches are pinned (page-locked) and copied non-blocking. ``auto``: on CUDA.
    ``on`` needs pinned memory, which torch has only with a GPU (a CPU-only torch refuses)."""
    if setting not in SWITCH:
        raise UserError(f"unknown --pin_memory {setting!r}: use {', '.join(SWITCH)}")
    if setting == "auto":
        return device.startswith("cuda")
    if setting == "on":
        try:
            torch.empty(1).pin_memory()
        except RuntimeError:
            raise UserError(
                "--pin_memory on, but this torch cannot pin memory without a GPU: use auto or off"
            ) from None
    return setting == "on"


def to_device(a: np.ndarray, device: str, pin: bool | None = None) -> torch.Tensor:
    """A numpy batch on ``device``, pinned and copied non-blocking when ``pin`` (None: as
    :func:`resolve_pin_memory` decides for ``auto``, so on CUDA)."""
    t = torch.from_numpy(a)
    if pin is None:
        pin = resolve_pin_memory("auto", device)
    if pin:
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


# ---------------------------------------------------------------- process-wide settings


def allow_bf16_attention_math(enabled: bool = True) -> None:
    """Let the math path of ``scaled_dot_product_attention`` compute in bf16 under autocast.

    It is the path taken with attention dropout on a CPU (the fused kernels refuse dropout
    there). By default it copies bf16 q, k, v to fp32 and the result back; allowing bf16
    reductions makes attention faster (docs/train.md, "Measurements"), at the precision of the
    rest of the bf16 step (the softmax still sums in fp32). A process-wide flag: set it where
    autocast is chosen.
    """
    setter = getattr(torch.backends.cuda, "allow_fp16_bf16_reduction_math_sdp", None)
    if setter is not None:  # despite its namespace, the math path reads it on every device
        setter(enabled)


def _bf16_attention_math() -> bool:
    getter = getattr(torch.backends.cuda, "fp16_bf16_reduction_math_sdp_allowed", None)
    return bool(getter()) if getter is not None else False


# glibc's mallopt parameters (malloc.h). "Restored" means the values its dynamic thresholds
# settle at once a process has freed large blocks: mmap from 32 MiB, trim above 64 MiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_SETTLED_MMAP_THRESHOLD, _SETTLED_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 32 << 20, 64 << 20, 65536


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Keep the memory a training step frees for the next step, instead of handing it back.

    glibc serves every block of 32 MiB or more with a fresh ``mmap`` and unmaps it on free;
    the kernel then zero-fills each 4 KiB page on first touch. One layer's attention weights
    at the seed config (64 x 16 x 128 x 128 in bf16) are exactly 32 MiB, and a CPU step
    allocates dozens of them, so the page faults are a real share of a step (docs/train.md,
    "Measurements"; ``benchmarks/bench_train.py --reuse_memory on|off`` measures it). With
    ``mmap`` off and a high trim threshold the heap keeps its pages, and the process holds on to
    its peak memory (what a training process does anyway) until it exits. Returns whether it
    applied: only glibc (Linux) has these knobs; elsewhere it does nothing. ``enabled=False``
    goes back to where glibc's own adaptive thresholds settle in a long-running process.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        if enabled:
            settings = ((_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**31 - 1))
        else:
            settings = (
                (_M_MMAP_MAX, _DEFAULT_MMAP_MAX),
                (_M_MMAP_THRESHOLD, _SETTLED_MMAP_THRESHOLD),
                (_M_TRIM_THRESHOLD, _SETTLED_TRIM_THRESHOLD),
            )
        return all(libc.mallopt(param, value) == 1 for param, value in settings)
    except (OSError, AttributeError):
        return False


def set_threads(threads: int | None) -> None:
    """``threads`` CPU threads for torch; None or 0 (auto) leaves torch's default, one per core
    (training tunes it then, see :class:`ThreadTuner`)."""
    if threads is not None and threads < 0:
        raise UserError(f"--threads {threads} is out of range: use auto or a count >= 1")
    if threads:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def process_settings(
    threads: int | None = None,
    device: str = "cpu",
    dtype: torch.dtype = torch.float32,
    training: bool = True,
) -> Iterator[None]:
    """Apply the process-wide settings of a run for the duration of the block, then restore them.

    * ``threads`` (None, auto: torch's default);
    * on CUDA, TF32 for any fp32 matmul left outside bf16;
    * where SDPA takes its unfused math path, let it compute in bf16 under bf16 autocast instead
      of copying to fp32 (CPU attention with dropout runs :mod:`gpt_study.model.kernels` instead);
    * when ``training``, keep freed memory for the next step: a CPU step's 32 MiB blocks
      otherwise come back as fresh zero-filled pages every time (:func:`reuse_freed_memory`).
    """
    old_threads = torch.get_num_threads()
    old_precision = torch.get_float32_matmul_precision()
    old_math = _bf16_attention_math()
    set_threads(threads)
    if device.startswith("cuda"):
        torch.set_float32_matmul_precision("high")
    allow_bf16_attention_math(dtype == torch.bfloat16)
    reused = training and reuse_freed_memory(True)
    try:
        yield
    finally:
        if reused:
            reuse_freed_memory(False)
        allow_bf16_attention_math(old_math)
        torch.set_float32_matmul_precision(old_precision)
        torch.set_num_threads(old_threads)


# ---------------------------------------------------------------- --threads auto


class ThreadTuner:
    """Keeps torch on whichever of a few thread counts trains faster now (1 or all cores).

    Why: torch splits each operation over its threads and waits for all of them at the end. When
    another process keeps a core busy, the thread sharing that core gets it only part of the
    time, and every operation waits for it: a run trains at a fraction of its idle speed, slower
    than on one thread, which never waits. Idle, all cores are faster. The load can change during
    a run, so at the start of every epoch the tuner runs ``warmup`` untimed steps (on the count
    in use; the first time on each count, to start its threads), then times up to ``trials``
    rounds of one step per count, interleaved so that every count sees the same load, and keeps
    the fastest (by mean step time) for the rest of the epoch.

    A trial on the slower count costs time (on a busy machine, several times a step on one
    thread: docs/train.md, "Measurements"), so the rounds stop early once the choice is plain:
    when the slowest timed step of one count is still ``margin`` times faster than the fastest
    step of every other.

    With fewer than two candidates it does nothing (``--threads N``, a GPU, or a process already
    held to one thread). ``clock`` and ``apply`` (which sets the count) are parameters so that
    tests can drive it with a fake clock.
    """

    def __init__(
        self,
        candidates: Sequence[int],
        warmup: int = 2,
        trials: int = 3,
        margin: float = 1.5,
        clock: Callable[[], float] = time.perf_counter,
        apply: Callable[[int], None] = torch.set_num_threads,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.candidates = sorted(set(candidates))
        self.warmup, self.trials, self.margin = warmup, trials, margin
        self.clock, self.apply, self.log = clock, apply, log
        self.chosen: int | None = None  # the count in use outside the trials
        self.plan: list[tuple[int, bool]] = []  # (threads, timed) of the coming steps
        self.times: dict[int, list[float]] = {}

    @property
    def active(self) -> bool:
        return len(self.candidates) > 1

    def new_epoch(self, steps: int) -> None:
        """Plan the trials at the start of an epoch of ``steps`` steps (none if it is too short
        to keep the winner for at least one step)."""
        c = self.candidates
        self.plan, self.times = [], {t: [] for t in c}
        if not self.active or steps <= self.warmup + self.trials * len(c):
            return
        if self.chosen is None:
            warm = [c[i % len(c)] for i in range(self.warmup)]
        else:
            warm = [self.chosen] * self.warmup
        self.plan = [(t, False) for t in warm] + [(t, True) for _ in range(self.trials) for t in c]

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """Run one training step inside this: the planned thread count, timed if it is a trial.
        A step that raises is not timed."""
        if not self.plan:
            yield
            return
        threads, timed = self.plan.pop(0)
        self.apply(threads)
        start = self.clock()
        yield
        if timed:
            self.times[threads].append(self.clock() - start)
            if self._plain():
                self.plan = []
        if not self.plan:
            self._choose()

    def _plain(self) -> bool:
        """After a whole round: one count is ``margin`` times faster than the others at worst."""
        counts = {len(v) for v in self.times.values()}
        if len(counts) != 1 or 0 in counts:
            return False
        fast = min(self.candidates, key=lambda t: max(self.times[t]))
        worst = max(self.times[fast])
        return all(min(v) > self.margin * worst for t, v in self.times.items() if t != fast)

    def _choose(self) -> None:
        mean = {t: sum(v) / len(v) for t, v in self.times.items()}
        best = min(self.candidates, key=lambda t: mean[t])  # a tie keeps fewer threads
        first, changed = self.chosen is None, best != self.chosen
        self.chosen = best
        self.apply(best)
        if self.log is not None and changed:
            others = "; ".join(
                f"{t} threads: {mean[t] * 1e3:.0f} ms/step" for t in self.candidates if t != best
            )
            self.log(
                f"threads: {'now ' if not first else ''}{best} ({mean[best] * 1e3:.0f} ms/step; "
                f"{others}; mean of {len(self.times[best])} timed steps each), timed again "
                "every epoch"
            )


@contextlib.contextmanager
def thread_tuning(
    threads: int | None,
    device: str,
    log: Callable[[str], None] | None = None,
    compiled: bool = False,
) -> Iterator[ThreadTuner]:
    """The run's :class:`ThreadTuner`, and torch's thread count as it was afterwards.

    ``threads`` None or 0 (auto) on a CPU tunes between 1 and the threads torch has now (one
    per core unless something set it); any other case gets a tuner that does nothing. So does a
    ``compiled`` step: the compiler writes the thread count into its CPU kernels, so every count
    tried would compile the whole step again (about as long as compiling it the first time).
    """
    before = torch.get_num_threads()
    tune = not threads and device.split(":")[0] == "cpu" and before > 1 and not compiled
    try:
        yield ThreadTuner([1, before] if tune else [], log=log)
    finally:
        torch.set_num_threads(before)
