"""Where and how fast a training run executes: the ``runtime`` section of
:class:`~gpt_study.config.train.TrainConfig` (device, precision, compilation, threads and the
device-dependent choices that gpt_study.runtime.plan resolves)."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpt_study.config.fields import AT_LEAST_1, Section, doc, thread_count
from gpt_study.runtime.choices import ATTENTION, BACKENDS, DTYPES, SWITCH


@dataclass
class RuntimeConfig(Section):
    """Where and how fast the run executes: the device, precision, compilation, threads and the
    device-dependent choices (``auto`` each: as gpt_study.runtime.plan decides for the device;
    docs/train.md, "Device choices")."""

    device: str = field(
        default="auto", metadata=doc("auto, cpu, cuda, cuda:N or mps", resume="free")
    )
    dtype: str = field(
        default="float32",
        metadata=doc(
            "float32 (the study), auto (bf16 autocast where the hardware computes it natively), "
            "bfloat16, or float16 (autocast with a GradScaler, for GPUs without bf16)",
            choices=DTYPES,
        ),
    )
    compile: bool = field(
        default=False,
        metadata=doc(
            "torch.compile the training step (on in the cpu preset; a CPU without a C++ "
            "compiler trains eagerly, with a warning)",
            resume="free",
        ),
    )
    fused_adamw: str = field(
        default="auto",
        metadata=doc(
            "fused AdamW: auto (where torch has it), on, off", choices=SWITCH, resume="free"
        ),
    )
    pin_memory: str = field(
        default="auto",
        metadata=doc(
            "pinned batches: auto (on CUDA), on (a GPU's torch), off", choices=SWITCH, resume="free"
        ),
    )
    attention: str = field(
        default="auto",
        metadata=doc(
            "training's attention and dropout: auto (cpu_kernels, model/kernels.py, on a CPU; "
            "PyTorch's sdpa elsewhere), sdpa or cpu_kernels",
            choices=ATTENTION,
            resume="free",
        ),
    )
    backend: str = field(
        default="auto",
        metadata=doc(
            "torchrun backend: auto (nccl for CUDA, else gloo), gloo or nccl",
            choices=BACKENDS,
            resume="free",
        ),
    )
    threads: int | None = field(
        default=None,
        metadata=doc(
            "CPU threads for torch; auto (the default, or 0): each epoch, time a few steps with "
            "1 thread and with all cores and keep the faster (other work sharing the cores makes "
            "1 faster); N: pin N threads (for bit-exact resume, pin them)",
            type=thread_count,
            metavar="N|auto",
            resume="free",
        ),
    )

    RANGES = {"threads": AT_LEAST_1}

    def __post_init__(self) -> None:
        if type(self.threads) is int and self.threads == 0:
            self.threads = None  # auto, as configs saved before it had a name store it
        super().__post_init__()
