"""The import map docs/architecture.md draws, checked on the code: what runs without a model imports no
torch, and no package's modules import each other in a circle."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]
# what validating a sweep, plan, status, query and report import: no module of these imports torch
TORCH_FREE_PACKAGES = [d for d in ("orchestrator", "storage", "reports", "search_spaces") if (ROOT / d).is_dir()]
# the workers' modules those import: names and contracts as plain data
TORCH_FREE_WORKERS = ("workers.errors", "workers.names", "workers.asha", "workers.k90", "workers.unit", "workers.results",
                      "workers.stored_trial",
                      "workers.tasks", "workers.tasks.base", "workers.tasks.builtin", "workers.tasks.example",
                      "workers.tasks.roles")
HEAVY = ("torch", "transformers")


def _module(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(package: str) -> list[str]:
    return sorted(_module(p) for p in (ROOT / package).rglob("*.py"))


def _heavy_imports(statement: str) -> list[str]:
    """The heavy libraries loaded by `statement`, run in a fresh interpreter."""
    code = f"import sys; {statement}; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, f"{statement}: {done.stderr[-2000:]}"
    return [m for m in done.stdout.strip().split(",") if m]


def test_the_entry_points_import_no_torch():
    """The command line, sweep validation and the Python API (the fast check; the next test checks every module)."""
    assert _heavy_imports("import orchestrator.cli, search_spaces.config, storage.api") == []
    assert _heavy_imports("import workers.interventions") == ["torch"], "the check sees torch where it is"


@pytest.mark.slow
def test_no_module_that_runs_without_a_model_imports_torch():
    """Each module in a fresh interpreter: a module-level import of torch anywhere it leads is found."""
    statements = [f"import {m}" for p in TORCH_FREE_PACKAGES for m in _modules(p)]
    statements += [f"import {m}" for m in TORCH_FREE_WORKERS]
    with ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2)) as pool:
        loaded = dict(zip(statements, pool.map(_heavy_imports, statements)))
    heavy = {statement: found for statement, found in loaded.items() if found}
    assert not heavy, heavy


def _imports(path: Path, modules: set[str]) -> set[str]:
    """The modules of `modules` that a module imports: every import statement anywhere in it (inside
    functions and `if TYPE_CHECKING:` too). `from package import name` counts package.name where it
    is a module; the parent packages Python runs on the way are not counted."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        found |= {name for name in names if name in modules}
    return found - {_module(path)}


def _circles(package: str) -> list[list[str]]:
    """Every circle of imports among the modules of `package` (and its subpackages), as module paths."""
    paths = {_module(p): p for p in (ROOT / package).rglob("*.py")}
    graph = {name: sorted(_imports(path, set(paths))) for name, path in paths.items()}
    circles: list[list[str]] = []
    state: dict[str, str] = {}  # "open" while on the path, "done" after

    def visit(name: str, path: list[str]) -> None:
        state[name] = "open"
        for other in graph[name]:
            if state.get(other) == "open":
                circles.append(path[path.index(other):] + [name, other])
            elif other not in state:
                visit(other, path + [name])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [])
    return circles


CIRCLE_FREE = ["workers", "workers/tasks", "search_spaces", "storage", "reports", "orchestrator"]


@pytest.mark.parametrize("package", CIRCLE_FREE)
def test_no_package_imports_itself_in_a_circle(package):
    circles = _circles(package)
    assert not circles, [" -> ".join(c) for c in circles]


def test_a_circle_is_found_wherever_its_imports_are(tmp_path, monkeypatch):
    """The check sees function-level and TYPE_CHECKING imports, and `from package import module`."""
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from pkg.b import g\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from pkg import a\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert _circles("pkg") == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]


@given(st.dictionaries(st.integers(0, 64), st.floats(0, 1)), st.integers(1, 64), st.sampled_from([0.5, 0.9, 1.0]))
def test_the_reports_k90_is_the_workers_k90(flips, n_cells, fraction):
    """storage/k90.py (what the page reads) and workers/k90.py (what the analysis bisects and the controls train at)
    are one rule in two layers."""
    import storage.k90
    import workers.k90
    assert storage.k90.K90_FRACTION == workers.k90.K90_FRACTION
    assert storage.k90.k90_of(flips, n_cells, fraction) == workers.k90.k90_of(flips, n_cells, fraction)
    assert storage.k90.k90_target(flips.get(n_cells), fraction) == workers.k90.k90_target(flips.get(n_cells), fraction)
