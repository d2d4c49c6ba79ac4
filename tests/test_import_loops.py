"""Import loops in nt_robust, function-local imports included (the README's "data flows one
way"), between modules and between packages (a package: the first two dotted parts of a
module's name, ``nt_robust.train``, ``nt_robust.evaluate``), and imports that climb: attacks
never import the training or export code, models none of training, attacks or studies.
There must be none."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nt_robust"

# package -> the packages it must never import (a lower layer reaching up).
NEVER_IMPORTS = {
    "nt_robust.accelerators": {"*"},   # data about chips: no project imports at all
    "nt_robust.attacks": {"nt_robust.train", "nt_robust.export", "nt_robust.evaluate", "nt_robust.studies"},
    "nt_robust.models": {"nt_robust.train", "nt_robust.attacks", "nt_robust.studies", "nt_robust.export",
                         "nt_robust.evaluate", "nt_robust.environment"},
    "nt_robust.environment": {"nt_robust.models"},
    "nt_robust.train": {"nt_robust.evaluate", "nt_robust.export", "nt_robust.studies"},
}


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__"): p
            for p in PACKAGE.rglob("*.py")}


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Every nt_robust module each module imports, anywhere in it (a package's face included)."""
    imports: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("nt_robust"):
                targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                           for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("nt_robust")]
            imports[name] |= {t for t in targets if t in modules and t != name}
    return imports


def _edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module to module; a package's ``__init__`` is not a target (it only names its modules)."""
    return {m: {t for t in targets if modules[t].name != "__init__.py"}
            for m, targets in _imports(modules).items()}


def _package(module: str) -> str:
    return ".".join(module.split(".")[:2])


def _package_edges(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Package to package: ``from nt_robust.models import create_model`` is train → models."""
    edges: dict[str, set[str]] = {}
    for module, targets in _imports(modules).items():
        edges.setdefault(_package(module), set())
        edges[_package(module)] |= {_package(t) for t in targets if _package(t) != _package(module)}
    return edges


def _loops(edges: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: set[frozenset[str]] = set()

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                found.add(frozenset(group))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_the_scan_finds_a_loop_it_is_shown():
    assert _loops({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset({"a", "b", "c"})}
    assert _loops({"a": {"b"}, "b": set()}) == set()


def test_no_import_loop():
    loops = [sorted(loop) for loop in _loops(_edges(_modules()))]
    assert not loops, f"import loops: {loops} (move the shared piece down, or import one way only)"


def test_the_package_scan_counts_faces_and_function_local_imports(tmp_path):
    root = tmp_path / "nt_robust"
    for name, text in {"__init__.py": "", "a/__init__.py": "from nt_robust.a.x import f\n",
                       "a/x.py": "def f():\n    from nt_robust.b import g\n", "b/__init__.py": "",
                       "b/y.py": "from nt_robust.a import f\n"}.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    modules = {".".join(p.relative_to(tmp_path).with_suffix("").parts).removesuffix(".__init__"): p
               for p in root.rglob("*.py")}
    assert _package_edges(modules)["nt_robust.a"] == {"nt_robust.b"}
    assert _loops(_package_edges(modules)) == {frozenset({"nt_robust.a", "nt_robust.b"})}
    assert _loops(_edges(modules)) == set()   # the same code has no module loop: a face is not a target


def test_no_package_import_loop():
    loops = [sorted(loop) for loop in _loops(_package_edges(_modules()))]
    assert not loops, f"package import loops: {loops} (move the shared piece down, or import one way only)"


def test_no_upward_import():
    edges = _package_edges(_modules())
    climbs = [f"{low} -> {high}" for low, banned in NEVER_IMPORTS.items() for high in sorted(edges.get(low, ()))
              if "*" in banned or high in banned]
    assert not climbs, f"imports that climb: {climbs} (pass the value down, or move the code up)"
