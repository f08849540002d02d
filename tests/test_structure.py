"""The shape of the code: imports run one way, and comments name real files.

Imports are read with `ast` (module-level and function-level alike: a deferred
import is still a dependency), so no package is imported to check it.
"""
from __future__ import annotations

import ast
import io
import pathlib
import re
import tokenize

import networkx as nx

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGES = ("bt", "scanner", "patcher", "runtime")
COMMENTED = PACKAGES + ("benchmarks", "tests")
# Stages the scanner and the patcher must not reach (data flows image -> scan ->
# patch -> run -> report; docs/architecture.md).
LATER_STAGES = ("runtime", "bt.cli", "bt.api", "bt.measure")


# -- imports ------------------------------------------------------------------------
def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, pathlib.Path]:
    return {_module_name(p): p for top in PACKAGES for p in sorted((ROOT / top).rglob("*.py"))}


def imported_names(source: str, module: str, is_package: bool) -> set[str]:
    """Every dotted name `module` imports, wherever the import statement stands.
    `from a import b` yields a.b (b may be a module or a name in a; the import
    graph resolves it to the longest module name it starts with).  The parent
    package a Python import initialises on the way is not a dependency here."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                here = here[:len(here) - node.level + 1]
                base = ".".join(here + ([base] if base else []))
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def import_graph(modules: dict[str, pathlib.Path]) -> nx.DiGraph:
    """module -> the project modules it imports (a name resolves to the longest
    module it starts with, so `from scanner import native` reaches scanner.native)."""
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        for imp in imported_names(path.read_text(), name, path.name == "__init__.py"):
            parts = imp.split(".")
            for n in range(len(parts), 0, -1):
                target = ".".join(parts[:n])
                if target in modules:
                    if target != name:
                        g.add_edge(name, target)
                    break
    return g


def test_import_graph_sees_function_level_imports():
    src = "def f():\n    from scanner.scan import FLOW\n    from . import cfg\n"
    assert imported_names(src, "scanner.native", False) == {"scanner.scan.FLOW", "scanner.cfg"}


def test_no_import_circles_among_the_packages():
    g = import_graph(package_modules())
    circles = [sorted(c) for c in nx.strongly_connected_components(g) if len(c) > 1]
    assert not circles, f"import circles: {circles}"


def test_a_circle_is_found():
    g = nx.DiGraph([("scanner.cfg", "scanner.serialize"), ("scanner.serialize", "scanner.cfg")])
    assert [c for c in nx.strongly_connected_components(g) if len(c) > 1]


def _later_stage(target: str) -> bool:
    return any(target == s or target.startswith(s + ".") for s in LATER_STAGES)


def test_scanner_and_patcher_do_not_reach_later_stages():
    g = import_graph(package_modules())
    bad = []
    for name in g:
        if name.split(".")[0] not in ("scanner", "patcher"):
            continue
        # Transitively: the scanner importing a bt module that imports runtime
        # would break the boundary just as well.
        bad += [f"{name} -> {t}" for t in nx.descendants(g, name) if _later_stage(t)]
    assert not bad, bad


# -- paths named in comments and docstrings --------------------------------------------
# A path-like word ending in a file extension, with or without directories.
_PATH = re.compile(r"(?<![\w/.-])((?:\.\./|/)?(?:[\w.-]+/)*[\w-]+\.(?:py|md|c|json|ipynb|toml))(?![\w/])")
# A file outside the repository may be named only where the text says so.
_OUTSIDE = re.compile(r"(?:outside the repository|Unicorn's|QEMU's)[^.;]{0,40}$", re.S)
_PLACEHOLDERS = {"FILE", "DIR", "PATH"}          # usage text: `--json FILE.json`


def comments_and_docstrings(source: str):
    """(line, text) of every comment (a run of comment lines is one text) and
    every module/class/function docstring."""
    run: list[str] = []
    first = last = 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type != tokenize.COMMENT:
            continue
        line = tok.start[0]
        if run and line != last + 1:
            yield first, "\n".join(run)
            run = []
        if not run:
            first = line
        run.append(tok.string.lstrip("#").strip())
        last = line
    if run:
        yield first, "\n".join(run)
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                yield node.body[0].lineno, doc


def false_paths(text: str, here: pathlib.Path, names: set[str]) -> list[str]:
    """Paths in `text` that name no file: a path with a directory must exist from
    the repository root; a bare file name must exist somewhere in it."""
    bad = []
    for m in _PATH.finditer(text):
        path = m.group(1)
        if _PLACEHOLDERS & set(re.split(r"[/.]", path)):
            continue
        if _OUTSIDE.search(text[max(0, m.start() - 120):m.start()]):
            continue
        if path.startswith(("/", "../")):
            bad.append(path)                  # outside the repository, and not said so
        elif "/" in path:
            if not (ROOT / path).exists():
                bad.append(path)
        elif not (here.parent / path).exists() and path not in names:
            bad.append(path)
    return bad


def test_comments_name_files_that_exist():
    files = [p for top in COMMENTED for p in sorted((ROOT / top).rglob("*.py"))]
    names = {p.name for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts}
    bad = []
    for p in files:
        for line, text in comments_and_docstrings(p.read_text()):
            bad += [f"{p.relative_to(ROOT)}:{line}: {x}" for x in false_paths(text, p, names)]
    assert not bad, "comments naming files that do not exist:\n" + "\n".join(bad)


def test_a_false_path_is_caught():
    here = ROOT / "runtime" / "hyper.py"
    names = {"vm.py"}
    assert false_paths("re-applying the fixups (patcher/fixups.py)", here, names) == ["patcher/fixups.py"]
    assert false_paths("see architecture-sketch.md", here, names) == ["architecture-sketch.md"]
    assert false_paths("a note (../shared/notes/style.md)", here, names) == ["../shared/notes/style.md"]
    assert false_paths("a note outside the repository (../shared/notes/style.md)", here, names) == []
    assert false_paths("runtime/vm.py, docs/architecture.md and vm.py", here, names) == []
