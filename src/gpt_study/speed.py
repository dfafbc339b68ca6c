"""Process-wide speed settings of a training step, kept out of the model code.

``benchmarks/bench_train.py`` measures each piece of the fast step against the study's plain
fp32 step; the training loop applies the same ones, so the benchmark measures what users run:
bf16 autocast, :func:`gpt_study.loss.head_loss` (or :class:`gpt_study.loss.LMLoss`) instead of
``lm_loss(model(x), y)``, fused AdamW, :func:`allow_bf16_attention_math` and
:func:`reuse_freed_memory`. The CPU dropout path lives in :mod:`gpt_study.ops`, which the model
calls.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

import torch


def allow_bf16_attention_math(enabled: bool = True) -> None:
    """Let the math path of ``scaled_dot_product_attention`` compute in bf16 under autocast.

    It is the path taken with attention dropout on a CPU (the fused kernels refuse dropout
    there). By default it copies bf16 q, k, v to fp32 and the result back; allowing bf16
    reductions makes attention about 1.4x faster, at the precision of the rest of the bf16 step
    (the softmax still sums in fp32). A process-wide flag: set it where autocast is chosen.
    """
    setter = getattr(torch.backends.cuda, "allow_fp16_bf16_reduction_math_sdp", None)
    if setter is not None:  # despite its namespace, the math path reads it on every device
        setter(enabled)


# glibc's mallopt parameters (malloc.h). "Restored" means the values its dynamic thresholds
# settle at once a process has freed large blocks: mmap from 32 MiB, trim above 64 MiB.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -3, -4
_SETTLED_MMAP_THRESHOLD, _SETTLED_TRIM_THRESHOLD, _DEFAULT_MMAP_MAX = 32 << 20, 64 << 20, 65536


def reuse_freed_memory(enabled: bool = True) -> bool:
    """Keep the memory a training step frees for the next step, instead of handing it back.

    glibc serves every block of 32 MiB or more with a fresh ``mmap`` and unmaps it on free;
    the kernel then zero-fills each 4 KiB page on first touch. One layer's attention weights
    at the seed config (64 x 16 x 128 x 128 in bf16) are exactly 32 MiB, and a CPU step
    allocates dozens of them: the page faults were up to a sixth of a step on this project's
    2-core machine (``benchmarks/bench_train.py --reuse_memory on|off`` measures it). With ``mmap`` off and a high
    trim threshold the heap keeps its pages, and the process holds on to its peak memory
    (what a training process does anyway) until it exits. Returns whether it applied: only
    glibc (Linux) has these knobs; elsewhere it does nothing. ``enabled=False`` goes back to
    where glibc's own adaptive thresholds settle in a long-running process.
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
