"""Every device-dependent choice of a training run, decided once: the run's :class:`RuntimePlan`.

Each choice has one function here (or, for those that evaluation shares, in
:mod:`gpt_study.runtime.device`) that turns its setting into what runs; :func:`resolve_plan` calls
them all for one device. ``auto`` is each setting's default and keeps what the project did before
the settings existed; any other value forces the choice, and one that cannot run on the device
is refused with one line that says what to use instead. docs/train.md, "Device choices", has the
table.

- autocast dtype and GradScaler, ``--dtype``: ``auto`` is bf16 where it is native (a CUDA GPU
  with bf16, a CPU with AMX or AVX512-BF16), else fp32; ``float16`` adds a GradScaler;
- fused AdamW, ``--fused_adamw``: ``auto`` is fused wherever torch has the kernel;
- pinned batches, ``--pin_memory``: ``auto`` pins on CUDA (page-locked, copied non-blocking);
- attention and dropout, ``--attention``: ``auto`` is ``cpu_kernels`` on a CPU
  (:mod:`gpt_study.model.kernels`) and PyTorch's SDPA elsewhere;
- ``--compile``: off unless asked (the ``cpu`` preset asks); on a CPU without the C++ compiler
  torch.compile needs there, the run warns and trains eagerly instead of refusing, so that the
  preset still trains on a laptop that has none;
- the torchrun backend, ``--backend``: ``auto`` is nccl for CUDA, gloo for a CPU.

The plan only decides; the attention switch is a process-wide setting of the model package, which
training applies for the duration of ``fit`` (model code never reads a device flag).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from gpt_study.runtime.choices import ATTENTION, BACKENDS, SWITCH
from gpt_study.runtime.device import resolve_device, resolve_dtype, resolve_pin_memory
from gpt_study.runtime.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RuntimePlan:
    """What a training run executes with, every choice resolved for one device."""

    device: str  # "cpu", "cuda", "cuda:N" or "mps"
    dtype: torch.dtype  # the autocast dtype (float32: no autocast)
    scaler: bool  # a GradScaler scales the loss (float16)
    fused_adamw: bool
    pin_memory: bool  # batches pinned and copied non-blocking
    attention: str  # "sdpa" or "cpu_kernels"
    compile: bool
    backend: str  # "nccl" or "gloo": used under torchrun only

    def describe(self) -> str:
        """One line for the run's log."""
        dtype = str(self.dtype).replace("torch.", "")
        return (
            f"{self.device}, {dtype}{' + GradScaler' if self.scaler else ''}, "
            f"{'fused' if self.fused_adamw else 'unfused'} AdamW, pinned batches "
            f"{'on' if self.pin_memory else 'off'}, attention {self.attention}, "
            f"compile {'on' if self.compile else 'off'}, backend {self.backend}"
        )


def _kind(device: str) -> str:
    return device.split(":")[0]


def _fused_adamw_runs(device: str) -> bool:
    """Whether this torch has a fused AdamW kernel for ``device`` (fp32 parameters, as ours)."""
    try:
        p = torch.zeros(1, device=device, requires_grad=True)
        torch.optim.AdamW([p], fused=True)
    except (RuntimeError, TypeError):
        return False
    return True


def resolve_fused_adamw(setting: str, device: str) -> bool:
    """``auto``: fused wherever torch has the kernel (CUDA, CPU and MPS in recent torch); ``on``
    where it has none is refused."""
    if setting not in SWITCH:
        raise UserError(f"unknown --fused_adamw {setting!r}: use auto, on or off")
    if setting == "off":
        return False
    runs = _fused_adamw_runs(device)
    if setting == "on" and not runs:
        raise UserError(
            f"--fused_adamw on, but torch {torch.__version__} has no fused AdamW for {device}: "
            "use auto or off"
        )
    return runs


def resolve_attention(setting: str, device: str) -> str:
    """``auto``: the CPU kernels of :mod:`gpt_study.model.kernels` on a CPU (they only change
    training with dropout), PyTorch's ``scaled_dot_product_attention`` and ``F.dropout``
    elsewhere. The CPU kernels run on a CPU only."""
    if setting not in ATTENTION:
        raise UserError(f"unknown --attention {setting!r}: use auto, sdpa or cpu_kernels")
    cpu = _kind(device) == "cpu"
    if setting == "auto":
        return "cpu_kernels" if cpu else "sdpa"
    if setting == "cpu_kernels" and not cpu:
        raise UserError(f"--attention cpu_kernels runs on a CPU only: use auto or sdpa on {device}")
    return setting


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile would build CPU kernels with, or None if there is none.

    Where inductor looks: on Windows ``$CXX`` or cl; elsewhere the names in its
    ``config.cpp.cxx``, which read ``$CXX`` (else g++, clang++ on macOS) when torch was imported
    and which a program may set (a None there is conda's g++, installed only when asked)."""
    if sys.platform == "win32":
        return shutil.which(os.environ.get("CXX") or "cl")
    from torch._inductor import config as inductor

    names = inductor.cpp.cxx if isinstance(inductor.cpp.cxx, (list, tuple)) else (inductor.cpp.cxx,)
    found = (shutil.which(n) for n in names if n)
    return next((path for path in found if path), None)


def resolve_compile(setting: bool, device: str) -> bool:
    """``--compile`` as asked, except on a CPU without a C++ compiler: a warning, and eager."""
    if not setting or _kind(device) != "cpu" or cpp_compiler() is not None:
        return bool(setting)
    log.warning(
        "--compile: no C++ compiler (g++, or the one $CXX names) was found, and torch.compile "
        "needs one on a CPU, so this run trains without compiling (install g++ to compile, or "
        "pass --no-compile to silence this)"
    )
    return False


def resolve_backend(setting: str, device: str) -> str:
    """The torchrun backend. ``auto``: nccl for CUDA, gloo otherwise; nccl needs CUDA GPUs and a
    torch built with NCCL, and is refused elsewhere."""
    if setting not in BACKENDS:
        raise UserError(f"unknown --backend {setting!r}: use auto, gloo or nccl")
    cuda = _kind(device) == "cuda"
    if setting == "auto":
        return "nccl" if cuda else "gloo"
    if setting == "nccl" and not (cuda and dist.is_available() and dist.is_nccl_available()):
        raise UserError(
            f"--backend nccl needs CUDA GPUs and a torch built with NCCL, not {device}: "
            "use gloo or auto"
        )
    return setting


def resolve_plan(
    device: str = "auto",
    dtype: str = "float32",
    *,
    fused_adamw: str = "auto",
    pin_memory: str = "auto",
    attention: str = "auto",
    compile: bool = False,
    backend: str = "auto",
) -> RuntimePlan:
    """The plan for these settings (a RuntimeConfig's fields, by name): each choice resolved by
    its one function, a forced choice that cannot run here refused with one line."""
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    return RuntimePlan(
        device=dev,
        dtype=torch_dtype,
        scaler=torch_dtype == torch.float16,
        fused_adamw=resolve_fused_adamw(fused_adamw, dev),
        pin_memory=resolve_pin_memory(pin_memory, dev),
        attention=resolve_attention(attention, dev),
        compile=resolve_compile(compile, dev),
        backend=resolve_backend(backend, dev),
    )


def grad_scaler(plan: RuntimePlan) -> torch.amp.GradScaler | None:
    """The run's loss scaler: one for float16 (whose gradients underflow without it), else None."""
    return torch.amp.GradScaler(_kind(plan.device)) if plan.scaler else None
