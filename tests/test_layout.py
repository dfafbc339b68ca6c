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
            "model/__init__.py": "",
            "model/gpt.py": "from gpt_study.train import loop\n",
            "train/__init__.py": "",
            "train/loop.py": "import gpt_study.model.gpt\n" + long_function,
            "serve/__init__.py": "def g():\n    from gpt_study.cli import main\n",
            "cli/__init__.py": "from . import serve\n",
            "cli/serve.py": "x = 1\n" * 401,
            "data/__init__.py": "from gpt_study.train.loop import f\n",
            "shelf.py": "",
        },
    )
    found, _ = layout.check(root, "gpt_study")
    text = "\n".join(found)
    assert "has 86 lines (limit 80)" in text
    assert "401 lines (limit 400)" in text
    assert "import cycle: gpt_study.model.gpt -> gpt_study.train.loop" in text
    assert "gpt_study.model.gpt imports gpt_study.train.loop: model imports only" in text
    assert "gpt_study.serve imports gpt_study.cli: serve imports only" in text
    assert "gpt_study.data imports gpt_study.train.loop: data imports only" in text
    assert "gpt_study.shelf: shelf is not in the layout's ALLOWED table" in text
    assert not any(line.startswith("gpt_study.cli") for line in found)  # the CLI may import itself


def test_a_cycle_through_a_package_init_is_a_cycle(tmp_path):
    """evaluate.heldout importing train.loss runs train/__init__.py; if that imports the trainer,
    which imports evaluate.heldout, Python fails at import time, so the check must say so."""
    files = {
        "__init__.py": "",
        "evaluate/__init__.py": "",
        "evaluate/heldout.py": "from gpt_study.train.loss import terms\n",
        "train/__init__.py": "from gpt_study.train.fit import fit\n",
        "train/fit.py": "from gpt_study.evaluate.heldout import score\n",
        "train/loss.py": "terms = 1\n",
    }
    found, _ = layout.check(_package(tmp_path, files), "gpt_study")
    assert any(line.startswith("import cycle:") and "gpt_study.train" in line for line in found)
    (tmp_path / "gpt_study" / "train" / "__init__.py").write_text("")
    found, _ = layout.check(tmp_path, "gpt_study")
    assert not any(line.startswith("import cycle:") for line in found)
