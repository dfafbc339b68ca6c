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


def _draw_imports():
    path = TOOL.with_name("draw_imports.py")
    spec = importlib.util.spec_from_file_location("draw_imports", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_drawing_shows_the_real_imports_and_only_allowed_ones():
    """tools/draw_imports.py's edges are the package's cross-part imports, counted, each one
    allowed by ALLOWED; the CLI alone at the top, runtime alone at the bottom."""
    draw = _draw_imports()
    mods = layout.load()
    sizes, edges = draw.package_graph(mods)
    part = {m: layout._part(m, layout.PACKAGE) for m in mods}
    real: dict[tuple[str, str], int] = {}
    for mod in mods.values():
        for target in mod.imports:
            a, b = part[mod.name], part[target]
            if a != b and a not in ("", "__main__") and b not in ("", "__main__"):
                real[(a, b)] = real.get((a, b), 0) + 1
    assert edges == real
    assert set(sizes) == set(layout.ALLOWED) - {"__main__"}
    for a, b in edges:
        allowed = {name.split(".")[0] for name in layout.ALLOWED[a]}
        assert "*" in allowed or b in allowed, f"{a} -> {b} is not in the ALLOWED table"
    layer = draw.layers(set(sizes), edges)
    top = max(layer.values())
    assert [v for v in layer if layer[v] == top] == ["cli"]
    assert [v for v in layer if layer[v] == 0] == ["runtime"]
    assert all(layer[a] > layer[b] for a, b in edges if (a, b) not in draw.upward_edges(edges))
    text = "\n".join(draw.describe(sizes, edges))
    assert all(f"{a} -> {b}: {n}" in text for (a, b), n in edges.items())


def test_the_drawing_counts_imports_and_turns_a_cycle_upward(tmp_path):
    files = {
        "__init__.py": "",
        "runtime/__init__.py": "",
        "config/__init__.py": "from gpt_study.runtime import x\nimport gpt_study.runtime\n",
        "train/__init__.py": "from gpt_study.config import y\n",
        "train/loss.py": "from gpt_study import config\n",
        "evaluate/__init__.py": "from gpt_study.train.loss import z\n",
        "evaluate/report.py": "from gpt_study.config import c\n",
        "train/fit.py": "from gpt_study.evaluate import a\nfrom gpt_study.evaluate.report import b\n",
        "cli/__init__.py": "from gpt_study.train import fit\n",
    }
    draw = _draw_imports()
    sizes, edges = draw.package_graph(layout.load(_package(tmp_path, files), "gpt_study"))
    assert sizes == {"runtime": 1, "config": 1, "train": 3, "evaluate": 2, "cli": 1}
    assert edges == {
        ("config", "runtime"): 1,  # one module importing it twice: one import edge
        ("train", "config"): 2,
        ("evaluate", "train"): 1,  # the lighter side of the cycle: drawn upward
        ("evaluate", "config"): 1,
        ("train", "evaluate"): 2,
        ("cli", "train"): 1,
    }
    assert draw.upward_edges(edges) == {("evaluate", "train")}
    layer = draw.layers(set(sizes), edges)
    assert layer == {"runtime": 0, "config": 1, "evaluate": 2, "train": 3, "cli": 4}


def test_the_architecture_page_copies_the_allowed_table():
    """docs/architecture.md's "may import" column is ALLOWED, part for part."""
    page = (TOOL.parents[1] / "docs" / "architecture.md").read_text()
    rows = {}
    for line in page.splitlines():
        if line.startswith("| `"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            part = cells[0].strip("`").removesuffix("/").removesuffix(".py")
            names = tuple(n.strip("` ") for n in cells[-1].split(","))
            rows[part] = {"anything": ("*",), "nothing": ()}.get(cells[-1], names)
    expected = {k: v for k, v in layout.ALLOWED.items() if k != "__main__"}
    assert {k: set(v) for k, v in rows.items()} == {k: set(v) for k, v in expected.items()}
