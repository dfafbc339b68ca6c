"""Process-wide memory settings that must come before torch allocates anything large.

Torch-free, so the CLI can apply them before it imports a command (and with it torch).
:func:`gpt_study.runtime.device.reuse_freed_memory` (glibc's thresholds) is the other half,
applied around a training run.
"""

from __future__ import annotations

import os

__all__ = ["use_huge_pages"]


def use_huge_pages(enabled: bool = True) -> None:
    """Ask PyTorch's CPU allocator for 2 MiB pages on its large blocks, unless the user said no;
    ``enabled=False`` says no (a benchmark's ``--huge_pages off``).

    With ``THP_MEM_ALLOC_ENABLE=1`` PyTorch aligns CPU allocations of 2 MiB or more to 2 MiB and
    marks them for transparent huge pages (``madvise``), which Linux otherwise gives only to
    programs that ask where ``/sys/kernel/mm/transparent_hugepage/enabled`` is ``madvise`` (a
    common default). Fewer TLB misses make large-tensor steps faster (docs/train.md,
    "Measurements", has the seed's and the study's steps). PyTorch reads the variable
    once, at the process's first large allocation, so the CLI calls this before anything is
    built; a value already in the environment (``0`` turns it off) is kept. Where the system
    has no transparent huge pages it changes nothing but the alignment.
    """
    if enabled:
        os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")
    else:
        os.environ["THP_MEM_ALLOC_ENABLE"] = "0"
