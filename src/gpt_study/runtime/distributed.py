"""Multi-process training helpers: who am I, set-up and tear-down, small collectives.

``torchrun`` starts one process per device and tells each its place through the environment
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``). Without those
variables nothing here touches ``torch.distributed``: a single process runs exactly as before.

The training loop calls these helpers so it reads the same alone or under ``torchrun``:
``rank()``/``world_size()`` are 0/1 alone, ``barrier()`` and ``all_reduce_sum()`` are no-ops.
"""

from __future__ import annotations

import datetime
import json
import os

import torch
import torch.distributed as dist

from gpt_study.runtime.errors import UserError
from gpt_study.runtime.plan import resolve_backend


def env_world_size() -> int:
    """Processes in the job, as ``torchrun`` announces it (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    """Rank 0 alone logs, evaluates the sample, plots and writes checkpoints."""
    return rank() == 0


def init(device: str, backend: str = "auto") -> str:
    """Join the ``torchrun`` job if there is one; return the device this process should use.

    One GPU per local rank on CUDA. ``backend`` as the run's plan resolved it (``auto``: nccl for
    CUDA, gloo for CPU, by :func:`gpt_study.runtime.plan.resolve_backend`). A rank that dies
    makes the others fail at their next collective (torchrun then stops the job), so
    ``timeout`` only bounds a stall.
    """
    if env_world_size() <= 1 or is_distributed():
        return device
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed: run without torchrun")
    backend = resolve_backend(backend, device)
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise UserError("--device cuda under torchrun, but no CUDA GPU is visible")
        device = f"cuda:{local_rank()}"
        torch.cuda.set_device(device)
    elif device != "cpu":
        raise UserError(f"--device {device} cannot run under torchrun: use cuda or cpu")
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
    return device


# Process groups that shutdown() retired, kept alive until the process ends (see there).
_retired: list[object] = []


def shutdown() -> None:
    """Leave the process group, without letting its C++ destructor run now.

    A gloo group's destructor joins its worker threads, and it runs wherever the last reference
    goes: in ``destroy_process_group`` or when DDP's reducer is freed, both with the GIL held.
    A worker that is still releasing its last collective's tensors needs the GIL for that, so
    the join can wait forever (seen about once in 15 two-process runs on a loaded 2-core CPU).
    Holding one reference here moves the destructor to the end of the process, when the
    workers have long been idle.
    """
    if is_distributed():
        _retired.append(dist.group.WORLD)
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective tensors must live: the GPU for nccl, the CPU for gloo."""
    if is_distributed() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(values: list[float]) -> list[float]:
    """Element-wise sum over ranks: sharded validation adds its partial sums, the loop its loss
    and stop flags (a flag summed above 0: some rank wants to stop, so all stop)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def gather_json(obj: object) -> list[object] | None:
    """Every rank's JSON-able ``obj``, on rank 0 (None elsewhere); alone: ``[obj]``.

    Sent as UTF-8 bytes in a tensor rather than with ``gather_object`` so nothing is pickled.
    """
    if not is_distributed():
        return [obj]
    dev = _comm_device()
    payload = torch.tensor(list(json.dumps(obj).encode()), dtype=torch.uint8, device=dev)
    size = torch.tensor([payload.numel()], dtype=torch.int64, device=dev)
    sizes = [torch.zeros_like(size) for _ in range(world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=dev)
    padded[: payload.numel()] = payload
    parts = [torch.zeros_like(padded) for _ in range(world_size())]
    dist.all_gather(parts, padded)
    if not is_main():
        return None
    return [
        json.loads(bytes(p[: int(s.item())].cpu().tolist()).decode())
        for p, s in zip(parts, sizes, strict=True)
    ]
