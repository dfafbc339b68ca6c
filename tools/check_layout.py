"""The project's layout rule, checked from the code itself: module and function sizes, no import
cycles, and which packages may import which.

    python tools/check_layout.py            # one line per finding, a summary; exit 1 on any

Limits: modules of at most 400 lines and functions of at most 80, so that each reads on its own;
no cycle among the package's modules (an import inside a function counts too: a cycle hidden in a
function is still a cycle; importing ``a.b.c`` from outside ``a.b`` runs ``a/b/__init__.py``
first, so that counts as an import of ``a.b`` too); and each package imports only what
:data:`ALLOWED` lists for it, so the layers stay layers: the model knows nothing of training,
serving, devices or the CLI, and nothing but the CLI imports the CLI. ``tests/test_layout.py``
runs it in CI; ``tools/draw_imports.py`` draws the same graph.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "gpt_study"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 80

ALLOWED: dict[str, tuple[str, ...]] = {
    "runtime": (),
    "config": ("runtime.errors", "runtime.files", "runtime.choices"),
    "model": ("config.model", "config.fields", "config.data", "runtime.errors"),
    "data": ("config", "runtime"),
    "checkpoint": ("config", "data", "model", "runtime"),
    "runs": ("checkpoint", "runtime"),
    "outputs": ("checkpoint", "runs", "data", "runtime"),
    "generate": ("config", "data", "model", "runtime"),
    "evaluate": ("config", "data", "model", "generate", "runtime"),
    "train": (
        *("config", "data", "model", "generate", "evaluate"),
        *("checkpoint", "runs", "outputs", "runtime"),
    ),
    "export": ("config", "data", "model", "generate", "checkpoint", "runtime"),
    "compare": ("config", "evaluate", "checkpoint", "runs", "outputs", "runtime"),
    "serve": ("config", "generate", "evaluate", "checkpoint", "runs", "runtime"),
    "cli": ("*",),
    "__main__": ("cli",),
}
"""What each part of the package may import besides itself and the package's ``__version__``,
from the bottom layer up; ``*`` is anything. Only the CLI and ``python -m gpt_study`` import the
CLI."""


@dataclass
class Module:
    name: str
    path: Path
    tree: ast.Module
    imports: set[str] = field(default_factory=set)  # the package's modules it imports
    runs: set[str] = field(default_factory=set)  # those, and the packages whose __init__ they run


def _name(path: Path, root: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def load(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Module]:
    """Every module of the package, parsed, with the package modules each one imports."""
    mods = {}
    for path in sorted((root / package).rglob("*.py")):
        name = _name(path, root)
        mods[name] = Module(name, path, ast.parse(path.read_text(), str(path)))
    for mod in mods.values():
        for node in ast.walk(mod.tree):
            for target in _targets(mod, node):
                # "from a.b import c" names a.b.c if c is a module, else the module a.b
                while target and target not in mods:
                    target = target.rpartition(".")[0]
                if target and target != mod.name:
                    mod.imports.add(target)
                    mod.runs.add(target)
                    mod.runs.update(_inits_run(mod.name, target, package))
    return mods


def _inits_run(importer: str, target: str, package: str) -> list[str]:
    """The packages above ``target`` whose ``__init__`` an import of it runs: all but the root and
    those above the importer itself (already running when it runs)."""
    parts = target.split(".")
    above = [".".join(parts[:i]) for i in range(2, len(parts))]
    return [p for p in above if p != package and not _within(importer, (p,))]


def _targets(mod: Module, node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level:
        base = mod.name.split(".")
        if mod.path.name != "__init__.py":
            base = base[:-1]
        base = base[: len(base) - node.level + 1]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" for a in node.names]


def sizes(mods: dict[str, Module]) -> list[str]:
    """Modules over the line limit and functions over theirs."""
    out = []
    for mod in mods.values():
        lines = len(mod.path.read_text().splitlines())
        if lines > MAX_MODULE_LINES:
            out.append(f"{mod.path}: {lines} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(mod.tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1  # type: ignore[operator]
                if n > MAX_FUNCTION_LINES:
                    where = f"{mod.path}:{node.lineno}"
                    out.append(f"{where}: {node.name} has {n} lines (limit {MAX_FUNCTION_LINES})")
    return out


def cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(mods[v].runs):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(1000, 10 * len(mods)))
    for v in sorted(mods):
        if v not in index:
            visit(v)
    return found


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _part(name: str, package: str) -> str:
    """The layer a module belongs to: ``gpt_study.train.loop`` -> ``train``."""
    rest = name[len(package) + 1 :] if name.startswith(package + ".") else ""
    return rest.split(".")[0]


def boundaries(mods: dict[str, Module], package: str = PACKAGE) -> list[str]:
    """Imports that cross a boundary of the layout."""
    out = []
    for mod in mods.values():
        part = _part(mod.name, package)
        if not part:
            continue  # the package's own __init__: its version
        if part not in ALLOWED:
            out.append(f"{mod.name}: {part} is not in the layout's ALLOWED table: add it")
            continue
        allowed = tuple(f"{package}.{a}" for a in (part, *ALLOWED[part]))
        for target in sorted(mod.imports):
            if target == package or "*" in ALLOWED[part]:
                continue
            if not _within(target, allowed):
                out.append(f"{mod.name} imports {target}: {part} imports only {ALLOWED[part]}")
    return out


def check(root: Path = ROOT, package: str = PACKAGE) -> tuple[list[str], str]:
    """All findings, and the summary line."""
    mods = load(root, package)
    found = sizes(mods) + [f"import cycle: {' -> '.join(c)}" for c in cycles(mods)]
    found += boundaries(mods, package)
    summary = f"{len(mods)} modules; {len(found)} findings"
    return found, summary


def main() -> int:
    found, summary = check()
    for line in found:
        print(line)
    print(summary)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
