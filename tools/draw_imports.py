"""Draw the package's dependency graph from its imports, so the picture stays true.

    python tools/draw_imports.py [--out docs/architecture.png]

Imports come from ``tools/check_layout.py``'s :func:`load`, the graph the layout check judges;
each module-level import between two parts (``cli``, ``train``, ``checkpoint`` ...) counts once
for the arrow between them. A part's layer is computed: the longest chain of imports below it. An
import closing a cycle between parts (none today: the layout check refuses them at module level,
but two parts can still import each other) cannot point down: the lightest edge of each cycle is
drawn dashed, pointing up, so the picture shows it rather than hiding it.
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import math
import os
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType, SimpleNamespace

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "check_layout.py"
SKIP = ("", "__main__")  # the package's own __init__ (its version) and `python -m gpt_study`

COLUMN, ROW, HALF = 1.55, 1.25, 0.27  # inches between columns and rows; half a box's height
LEGEND = """arrow: importer -> imported, its width and number the module-level imports; a part \
alone in its layer is a bar\narrows into a bar drop straight down (coloured per bar; the CLI's \
grey); dashed red: an import that closes a cycle, pointing up"""

Edges = dict[tuple[str, str], int]


def layout_tool() -> ModuleType:
    """``tools/check_layout.py``, imported by path (as ``tests/test_layout.py`` does)."""
    if "check_layout" not in sys.modules:
        spec = importlib.util.spec_from_file_location("check_layout", TOOL)
        sys.modules["check_layout"] = module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return sys.modules["check_layout"]


def package_graph(mods: dict | None = None) -> tuple[Counter, Edges]:
    """Modules per part, and ``{(importer, imported): module-level import count}`` between parts."""
    tool = layout_tool()
    mods = tool.load() if mods is None else mods
    sizes, edges = Counter(), Counter()
    for mod in mods.values():
        part = tool._part(mod.name, tool.PACKAGE)
        if part in SKIP:
            continue
        sizes[part] += 1
        for target in mod.imports:
            other = tool._part(target, tool.PACKAGE)
            if other not in SKIP and other != part:
                edges[(part, other)] += 1
    return sizes, dict(edges)


def upward_edges(edges: Edges) -> set[tuple[str, str]]:
    """The edges left out of the layering: the lightest in a cycle (check_layout's), till none."""
    kept, up = set(edges), set()
    nodes = {v for e in edges for v in e}
    while groups := layout_tool().cycles(
        {v: SimpleNamespace(runs={b for a, b in kept if a == v}) for v in nodes}
    ):
        inside = [(a, b) for a, b in kept if any(a in g and b in g for g in groups)]
        lightest = min(inside, key=lambda e: (edges[e], e))
        kept.discard(lightest)
        up.add(lightest)
    return up


def layers(nodes: set[str], edges: Edges) -> dict[str, int]:
    """Each part's layer: 0 if it imports nothing, else one above the highest part it imports."""
    down = [e for e in edges if e not in upward_edges(edges)]
    layer: dict[str, int] = {}

    def depth(v: str) -> int:
        if v not in layer:
            layer[v] = 1 + max((depth(b) for a, b in down if a == v), default=-1)
        return layer[v]

    return {v: depth(v) for v in sorted(nodes)}


def _spread(columns: list[str], edges: Edges) -> int:
    """How far the arrows between boxes reach sideways, in columns."""
    x = {v: i for i, v in enumerate(columns)}
    return sum(abs(x[a] - x[b]) for a, b in edges if a in x and b in x)


def place(layer: dict[str, int], edges: Edges) -> tuple[dict[str, tuple[float, float]], list[str]]:
    """Where each part goes, and the parts drawn as bars across the picture (those alone in their
    layer: the bottom ones everything uses, the CLI above all). The others get a column each,
    so that an arrow into a bar drops straight down without crossing a box."""
    bars = [v for v in layer if sum(w == layer[v] for w in layer.values()) == 1]
    columns, better = sorted(v for v in layer if v not in bars), True
    while better:  # swap two columns while that shortens the arrows between boxes
        better = False
        for i, j in itertools.combinations(range(len(columns)), 2):
            swapped = columns[:]
            swapped[i], swapped[j] = columns[j], columns[i]
            if _spread(swapped, edges) < _spread(columns, edges):
                columns, better = swapped, True
    pos = {v: (COLUMN * i, ROW * layer[v]) for i, v in enumerate(columns)}
    pos.update({v: (COLUMN * (len(columns) - 1) / 2, ROW * layer[v]) for v in bars})
    return pos, sorted(bars, key=lambda v: layer[v])


def _ends(a: str, b: str, pos: dict, bars: list[str], right: float) -> tuple[tuple, tuple]:
    """An arrow's ends: straight down into or out of a bar, at the margin between two bars."""
    (xa, ya), (xb, yb) = pos[a], pos[b]
    if a in bars and b in bars:
        xa = xb = right - 0.35 * bars.index(b) - 0.2 * bars.index(a)
    elif a in bars:
        xa = xb = xb - 0.2
    elif b in bars:
        xa = xb = xa + 0.15 + 0.2 * bars.index(b)
    s = 1 if yb < ya else -1  # 1: pointing down
    return (xa, ya - s * HALF), (xb, yb + s * HALF)


def _arrows(ax, pos: dict, bars: list[str], edges: Edges, right: float) -> None:
    from matplotlib.patches import FancyArrowPatch

    up = upward_edges(edges)
    palette = dict(zip(bars, ("tab:green", "tab:orange", "tab:purple", "tab:brown"), strict=False))
    palette[bars[-1]] = "0.6"  # the top bar's arrows (the CLI's): grey
    for (a, b), n in sorted(edges.items()):
        start, end = _ends(a, b, pos, bars, right)
        boxes = a not in bars and b not in bars
        colour = "tab:red" if (a, b) in up else palette.get(b if b in bars else a, "tab:blue")
        style = {"arrowstyle": "-|>", "mutation_scale": 11, "color": colour, "alpha": 0.85}
        style["connectionstyle"] = "arc3,rad=0.08" if boxes else "arc3"
        style["linestyle"] = "--" if (a, b) in up else "-"
        ax.add_patch(FancyArrowPatch(start, end, lw=0.6 + 0.8 * math.log2(1 + n), **style))
        t = 0.5 if boxes else (0.85 if b not in bars else 0.12)  # the count: near a box
        x, y = (start[i] + t * (end[i] - start[i]) for i in (0, 1))
        halo = {"boxstyle": "round,pad=0.05", "fc": "white", "ec": "none", "alpha": 0.8}
        ax.text(x + 0.06, y, str(n), fontsize=7, color=colour, va="center", bbox=halo, zorder=2)


def draw(out: Path, sizes: Counter, edges: Edges) -> None:
    """The layered picture, written to ``out`` through a temporary file and a rename."""
    from matplotlib.figure import Figure
    from matplotlib.patches import FancyBboxPatch

    layer = layers(set(sizes), edges)
    pos, bars = place(layer, edges)
    left, right = -0.55 * COLUMN, max(x for x, _ in pos.values()) + 1.1 * COLUMN
    top = ROW * max(layer.values())
    fig = Figure(figsize=(right - left + 0.5, top + 2.0), dpi=110)
    ax = fig.add_axes((0, 0, 1, (top + 1.2) / (top + 2.0)), xlim=(left - 0.2, right + 0.3))
    ax.set_ylim(-0.6, top + 0.6)
    ax.axis("off")
    _arrows(ax, pos, bars, edges, right)
    for v, (x, y) in pos.items():
        label = f"{v}\n{sizes[v]} module{'s' if sizes[v] > 1 else ''}"
        box = {"boxstyle": "round,pad=0.3", "fc": "white", "ec": "0.2"}
        if v in bars:
            label, box = label.replace("\n", " (") + ")", None
            shape = {"boxstyle": "round,pad=0.02", "fc": "0.95", "ec": "0.2", "zorder": 3}
            ax.add_patch(FancyBboxPatch((left, y - HALF), right + 0.15 - left, 2 * HALF, **shape))
        ax.text(x, y, label, ha="center", va="center", fontsize=9.5, bbox=box, zorder=4)
    fig.suptitle("gpt_study: which part imports which, layered from the imports", fontsize=12)
    fig.text(0.5, 1 - 0.55 / (top + 2.0), LEGEND, ha="center", va="top", fontsize=8.5)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    fig.savefig(tmp, format="png")
    os.replace(tmp, out)


def describe(sizes: Counter, edges: Edges) -> list[str]:
    """The edges as text, from the top layer down, and the layers."""
    layer, up = layers(set(sizes), edges), upward_edges(edges)
    order = sorted(edges, key=lambda e: (-layer[e[0]], e[0], -layer[e[1]], e[1]))
    lines = [f"{a} -> {b}: {edges[(a, b)]}{'  (upward)' if (a, b) in up else ''}" for a, b in order]
    for row in range(max(layer.values()), -1, -1):
        lines.append(f"layer {row}: {', '.join(v for v in sorted(layer) if layer[v] == row)}")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "architecture.png")
    args = parser.parse_args(argv)
    sizes, edges = package_graph()
    print("\n".join(describe(sizes, edges)))
    draw(args.out, sizes, edges)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
