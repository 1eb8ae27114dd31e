"""The package's shape, as a test: imports point one way between the stages (with no exception for any module),
no import cycles, no private name used outside its module, and the read-only side never imports torch.

Every import counts, module-level or inside a function (a lazy import still ties two modules together);
only imports under `if TYPE_CHECKING:` are left out.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "audit"

# What each part may import besides itself. The base modules are shared by every stage.
BASE = {"audit.errors", "audit.words", "audit.formats", "audit.version"}
ALLOWED = {
    "base": {"base"},
    "store": {"base"},
    "sources": {"base", "store"},
    "scanner": {"base", "store", "sources"},
    "analysis": {"base", "store"},
    "policy": {"base", "store", "analysis"},
    # outputs draw images as the model saw them, with the torch-free decoder of the sources.
    "outputs": {"base", "store", "sources", "analysis", "policy"},
    "top": {"base", "store", "sources", "scanner", "analysis", "policy", "outputs", "top", "demo"},
    "demo": {"base", "store", "sources", "scanner", "analysis", "policy", "outputs", "top", "demo"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def part(module: str) -> str:
    if module in BASE:
        return "base"
    pieces = module.split(".")
    if len(pieces) > 1 and pieces[1] in ("store", "sources", "scanner", "analysis", "policy", "outputs", "demo"):
        return pieces[1]
    return "top"  # audit, audit.api, audit.cli, audit.__main__


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    skip = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip.update(id(n) for child in node.body for n in ast.walk(child))
    return skip


def imports(name: str, path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """(imported audit module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _type_checking_nodes(tree)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.split(".")[0] == "audit"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "audit":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                if sub in known:  # `from audit.scanner import rng` imports the module audit.scanner.rng
                    found.append((sub, [], node.lineno))
                else:
                    found.append((target, [alias.name], node.lineno))
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {target for target, _, _ in imports(name, path, known) if target in known and target != name}
            for name, path in known.items()}


def test_no_import_cycles():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_imports_point_one_way():
    bad = []
    for name, targets in graph().items():
        mine = part(name)
        for target in targets:
            theirs = part(target)
            if theirs == mine or theirs in ALLOWED[mine]:
                continue
            bad.append(f"{name} ({mine}) imports {target} ({theirs})")
    assert not bad, "\n".join(bad)


def test_no_private_names_across_modules():
    """`from audit.x import _y` and `module._y` are private reach-ins, in the package and its benchmarks."""
    known = modules()
    files = list(known.items()) + [(f"bench.{p.stem}", p) for p in sorted((ROOT / "bench").glob("*.py"))]
    bad = []
    for name, path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        module_aliases = {}
        for target, names, line in imports(name, path, known):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}.{n}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("audit"):
                for a in node.names:
                    if f"{node.module}.{a.name}" in known:
                        module_aliases[a.asname or a.name] = f"{node.module}.{a.name}"
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("audit"):
                        module_aliases[(a.asname or a.name).split(".")[0]] = a.name
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                root = node.value
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in module_aliases:
                    bad.append(f"{path.relative_to(ROOT)}:{node.lineno} uses {ast.unparse(node)}")
    assert not bad, "\n".join(bad)


def test_the_cycle_test_sees_a_cycle(tmp_path, monkeypatch):
    """The walker finds lazy imports and relative ones: a planted cycle between two modules is reported."""
    import tests.test_architecture as arch

    pkg = tmp_path / "audit"
    (pkg / "store").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "store" / "__init__.py").write_text("")
    (pkg / "store" / "a.py").write_text("from audit.store import b\n")
    (pkg / "store" / "b.py").write_text("def f():\n    from .a import g\n")
    monkeypatch.setattr(arch, "ROOT", tmp_path)
    monkeypatch.setattr(arch, "PACKAGE", pkg)
    assert arch.graph()["audit.store.a"] == {"audit.store.b"}
    assert arch.graph()["audit.store.b"] == {"audit.store.a"}
    try:
        arch.test_no_import_cycles()
    except AssertionError as e:
        assert "audit.store.a -> audit.store.b -> audit.store.a" in str(e)
    else:
        raise AssertionError("the planted cycle was not found")


def test_read_only_side_never_imports_torch():
    """Importing every module of the store, analysis, policy and outputs stages, and the CLI, loads no torch."""
    names = [n for n in modules() if part(n) in ("base", "store", "sources", "analysis", "policy", "outputs")]
    code = (f"import sys, audit, audit.cli, audit.api; import {', '.join(names)};"
            "print(sorted(m for m in ('torch', 'open_clip', 'kornia') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
