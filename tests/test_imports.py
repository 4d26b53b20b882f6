"""The package's shape: no import cycle between its modules (imports inside functions
included), no module over 600 lines, a CLI under 500, and ``import proxytasks`` /
``proxytasks --help`` without torch or faiss."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "proxytasks"
MAX_LINES = 600
CLI_MAX_LINES = 500


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def runtime_imports(tree: ast.AST):
    """Every import statement that can run: at module level or inside any function or
    class (lazy imports count), but not under ``if TYPE_CHECKING:`` (annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child
            todo.append(child)


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the modules of the package ``root`` it imports (resolved to files)."""
    modules = {module_name(p, root): p for p in root.rglob("*.py")}
    packages = {module_name(p, root) for p in root.rglob("__init__.py")}
    graph: dict[str, set[str]] = {m: set() for m in modules}

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in modules.items():
        here = mod if mod in packages else mod.rpartition(".")[0]
        for node in runtime_imports(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = here
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                if node.level == 0:
                    base = node.module or ""
                elif node.module:
                    base = f"{base}.{node.module}"
                # "from . import x" / "from .pkg import mod": a submodule when there is one
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                found = known(target)
                if found is not None and found != mod and found.split(".")[0] == root.name:
                    graph[mod].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_sees_lazy_imports(tmp_path: Path) -> None:
    """A cycle closed by an import inside a function is found; one under TYPE_CHECKING is not."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("def f():\n    from .sub import c\n    return c\n")
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import b\n"
                                      "def g():\n    from ..a import f\n")
    assert cycles(import_graph(pkg)) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    (pkg / "sub" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import f\n")
    assert cycles(import_graph(pkg)) == []


def test_no_import_cycle_between_modules() -> None:
    graph = import_graph(PACKAGE)
    assert "proxytasks.cli" in graph and "proxytasks.pipeline" in graph["proxytasks.benchmark"]
    found = cycles(graph)
    assert not found, "import cycles (lazy imports included): " + "; ".join(" <-> ".join(c) for c in found)


def test_no_module_over_600_lines_and_a_short_cli() -> None:
    sizes = {p.relative_to(PACKAGE.parent).as_posix(): len(p.read_text(encoding="utf-8").splitlines())
             for p in PACKAGE.rglob("*.py")}
    over = {p: n for p, n in sizes.items() if n > MAX_LINES}
    assert not over, f"modules over {MAX_LINES} lines: {over}"
    assert sizes["proxytasks/cli.py"] < CLI_MAX_LINES


@pytest.mark.parametrize("code", [
    "import proxytasks",
    "import proxytasks.cli as c; from click.testing import CliRunner; "
    "r = CliRunner().invoke(c.cli, ['--help']); assert r.exit_code == 0 and 'ingest' in r.output, r.output; "
    "r = CliRunner().invoke(c.cli, ['train', '--help']); assert r.exit_code == 0, r.output",
])
def test_import_and_help_stay_light(code: str) -> None:
    """Neither torch nor faiss is imported by ``import proxytasks`` or the CLI's help."""
    check = code + "; import sys; heavy = sorted({'torch', 'faiss', 'timm'} & set(sys.modules)); " \
                   "assert not heavy, heavy"
    done = subprocess.run([sys.executable, "-c", check], cwd=PACKAGE.parent, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
