"""Rules of the codebase that a reader relies on (docs/architecture.md), checked on the source."""
from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "workers", "storage", "search_spaces", "reports")


def _sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level packages of this project that a module imports (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 else []
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in PACKAGES}
    return found


def test_layer_rules():
    allowed = {"workers": {"workers"}, "storage": {"storage"},
               "search_spaces": {"search_spaces", "workers", "storage"}, "reports": {"reports", "storage", "search_spaces"},
               "orchestrator": set(PACKAGES)}
    # RunDir's typed read of the stored sweep validates it with search_spaces.config (inside the method)
    exceptions = {ROOT / "storage" / "run_dir.py": {"search_spaces"}}
    broken = [f"{p.relative_to(ROOT)} imports {sorted(extra)}" for package in PACKAGES for p in _sources(package)
              if (extra := _imports(p) - allowed[package] - exceptions.get(p, set()))]
    assert not broken, broken


def _module_imports(path: Path) -> set[str]:
    """The modules of this project that a module imports, by dotted name (anywhere in it)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in found if n.split(".")[0] in PACKAGES}


def test_storage_and_reports_import_no_module_in_a_circle():
    """reports/ draws what storage/ reads: no module of either imports another that imports it back."""
    modules = {".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p
               for p in _sources("storage", "reports")}
    graph = {m: {n for n in _module_imports(p) if n in modules and n != m} for m, p in modules.items()}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            m = todo.pop()
            if m == goal:
                return True
            if m not in seen:
                seen.add(m)
                todo += graph[m]
        return False
    circles = sorted(f"{a} <-> {b}" for a in graph for b in graph[a] if reaches(b, a))
    assert not circles, circles


def test_the_table_layer_draws_nothing():
    """storage/ reads and writes tables; figures are reports/'s: no storage module imports matplotlib."""
    drawing = [str(p.relative_to(ROOT)) for p in _sources("storage")
               if any(n == "matplotlib" or n.startswith("matplotlib.")
                      for node in ast.walk(ast.parse(p.read_text()))
                      for n in ([a.name for a in node.names] if isinstance(node, ast.Import) else
                                [node.module or ""] if isinstance(node, ast.ImportFrom) else []))]
    assert not drawing, drawing


def test_no_function_in_the_orchestrator_is_over_50_lines():
    long = []
    for path in _sources("orchestrator"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 50:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)")
    assert not long, long


def test_no_class_in_the_orchestrator_has_over_20_methods():
    big = []
    for path in _sources("orchestrator"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                methods = [n for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
                if len(methods) > 20:
                    big.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(methods)} methods)")
    assert not big, big


def _strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string constant in a module's code (docstrings left out)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body
                  and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_run_directory_files_are_named_only_by_run_dir():
    """Every file of a run directory is spelled in storage/run_dir.py; code elsewhere asks a RunDir for it."""
    names = re.compile(r"(?<![\w-])(run\.json|sweep\.yaml)|optuna\.journal|coordinator\.lock|actscale\.log|model_layers\.json"
                       r"|^artifacts$|artifacts/")
    exempt = {ROOT / "storage" / "run_dir.py"}
    found = [f"{p.relative_to(ROOT)}:{line}: {text!r}" for p in _sources(*PACKAGES) if p not in exempt
             for line, text in _strings(p) if names.search(text)]
    assert not found, found


def test_method_names_are_spelled_only_in_the_registry():
    """Behaviour per method belongs to the method's class; nothing else compares method names."""
    quoted = re.compile(r"""["'](activscalar|steervec|dynscalar)["']""")
    # the registry itself (its plain half and its classes), and the example SQL a user reads in docs/querying.md
    exempt = {ROOT / "workers" / "names.py", ROOT / "workers" / "interventions.py", ROOT / "storage" / "query_docs.py"}
    found = [f"{p.relative_to(ROOT)}:{i}" for p in _sources(*PACKAGES, "bench") if p not in exempt
             for i, line in enumerate(p.read_text().splitlines(), 1) if quoted.search(line)]
    assert not found, found


def test_table_columns_match_the_worker_contract():
    """The trials table's hyper-parameter and metric columns are the fields a worker reports."""
    from dataclasses import fields

    from storage.schema import HYPER_PARAMS, METRICS, TRIALS
    from workers.results import METRIC_NAMES, TrialResult
    from workers.unit import Hyper

    assert METRICS == METRIC_NAMES
    # resample_train, fold and pilot have their columns; prunable is False exactly for replicates and pilots
    # a retrained mask control's mask, mask_cells (its size) and control_of have theirs (orchestrator/records.py)
    controls = {"mask", "mask_cells", "control_of"}
    assert set(HYPER_PARAMS) | {"resample_train", "prunable", "fold", "pilot"} | controls == {f.name for f in
                                                                                             fields(Hyper)}
    assert controls <= set(TRIALS.names)
    assert {"resample_train", "pilot", "fold"} <= set(TRIALS.names)
    columns = set(TRIALS.names)
    assert {"resample_train", "fold", "replicate_kind", "n_test", "n_test_clusters"} <= columns
    assert {f"{split}_{m}" for split in ("val", "test") for m in METRIC_NAMES} <= columns
    measured = {"n_params", "sites_moved", "sites_total", "wall_s", "tokens_per_s", "n_test", "n_test_clusters"}
    assert measured <= columns and measured <= {f.name for f in fields(TrialResult)}
