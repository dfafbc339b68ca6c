"""runtime.memory: huge pages for PyTorch's large CPU blocks, asked for by the CLI."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpt_study import cli
from gpt_study.runtime.memory import use_huge_pages

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def test_use_huge_pages_asks_unless_the_user_said_no(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    use_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    use_huge_pages()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    use_huge_pages(False)  # an explicit "off" wins over the environment
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"


def test_the_cli_asks_before_running_a_command(monkeypatch, capsys):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    assert cli.main(["no-such-command"]) == 2  # asked before the command is even looked up
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"


def _huge_kb(code: str) -> int:
    """AnonHugePages (kB) of a fresh Python process after ``code``, without the variable set."""
    code += "\nprint(open('/proc/self/smaps_rollup').read().split('AnonHugePages:')[1].split()[0])"
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(
    not THP.exists() or "[never]" in THP.read_text(), reason="no transparent huge pages here"
)
def test_a_large_tensor_gets_huge_pages():
    """In a fresh process, as the CLI runs it: a 64 MiB tensor lands on 2 MiB pages (where the
    kernel gives huge pages to a region that asks for them at all, checked first)."""
    asked = (  # private anonymous memory that asks, touched page by page
        "import mmap\n"
        "m = mmap.mmap(-1, 64 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n"
        "m.madvise(mmap.MADV_HUGEPAGE)\n"
        "for i in range(0, 64 << 20, 4096): m[i] = 1"
    )
    if _huge_kb(asked) == 0:
        pytest.skip("the kernel gives no huge pages to this process now")
    code = (
        "from gpt_study.runtime.memory import use_huge_pages; use_huge_pages()\n"
        "import torch; x = torch.ones(64 << 20, dtype=torch.uint8)"
    )
    assert _huge_kb(code) >= 32 << 10  # kB: most of the tensor
