"""The layout rule (tools/check_layout.py) holds for the package, and it catches what it names."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[1] / "tools" / "check_layout.py"
spec = importlib.util.spec_from_file_location("check_layout", TOOL)
layout = importlib.util.module_from_spec(spec)
sys.modules["check_layout"] = layout
spec.loader.exec_module(layout)


def test_the_package_keeps_its_layout():
    found, summary = layout.check()
    assert found == [], "\n".join(found)
    assert summary.endswith("0 findings")


def _package(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "gpt_study" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


def test_it_finds_sizes_cycles_and_crossed_boundaries(tmp_path):
    long_function = "def f():\n" + "    x = 1\n" * 85
    root = _package(
        tmp_path,
        {
            "__init__.py": "",
            "model.py": "from gpt_study.train import loop\n",
            "train/__init__.py": "",
            "train/loop.py": "import gpt_study.model\n" + long_function,
            "serve.py": "def g():\n    from gpt_study.cli import main\n",
            "cli/__init__.py": "from . import serve\n",
            "cli/serve.py": "x = 1\n" * 401,
        },
    )
    found, _ = layout.check(root, "gpt_study")
    text = "\n".join(found)
    assert "has 86 lines (limit 80)" in text
    assert "401 lines (limit 400)" in text
    assert "import cycle: gpt_study.model -> gpt_study.train.loop" in text
    assert "gpt_study.model imports gpt_study.train.loop: the model imports only" in text
    assert "gpt_study.serve imports gpt_study.cli: nothing but the CLI imports the CLI" in text
    assert not any(line.startswith("gpt_study.cli") for line in found)  # the CLI may import itself
