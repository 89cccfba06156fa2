"""The layers read app -> core -> storage: app/ (and app.py) reach storage/ only through the Store
handle (storage.engine), core/ never imports gradio or app/, storage/ never imports core/ or app/,
and neither the layers nor core's wings import each other in a circle.

The oracle is the source itself, parsed with ``ast`` (every import, including those inside
functions), not the modules under test.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE_HANDLE = "storage.engine"


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """Every module a file imports, at module level or inside a function."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            # ``from storage import queue`` imports the module storage.queue
            package = root / node.module.replace(".", "/")
            names.update(f"{node.module}.{alias.name}" for alias in node.names
                         if (package / f"{alias.name}.py").exists() or (package / alias.name).is_dir())
    return names


def layer_violations(root: Path) -> list[str]:
    """One line per import that breaks the layering rule, in the tree under ``root``."""
    problems = []
    app_files = sorted((root / "app").rglob("*.py")) + ([root / "app.py"] if (root / "app.py").exists() else [])
    for path in app_files:
        for module in imported_modules(path, root):
            if (module == "storage" or module.startswith("storage.")) and module != STORE_HANDLE:
                problems.append(f"{path.relative_to(root)} imports {module} (app/ may use only {STORE_HANDLE}.Store)")
    for path in sorted((root / "core").rglob("*.py")):
        for module in imported_modules(path, root):
            top = module.split(".")[0]
            if top in ("gradio", "app"):
                problems.append(f"{path.relative_to(root)} imports {module} (core/ knows no UI)")
    for path in sorted((root / "storage").rglob("*.py")):
        for module in imported_modules(path, root):
            if module.split(".")[0] in ("core", "app", "gradio"):
                problems.append(f"{path.relative_to(root)} imports {module} (storage/ knows only tables)")
    return problems


def wing_graph(root: Path) -> dict[str, set[str]]:
    """Which of core's wings (subpackages) import which others."""
    graph: dict[str, set[str]] = {}
    for package in sorted(p for p in (root / "core").iterdir() if (p / "__init__.py").exists()):
        edges = graph.setdefault(package.name, set())
        for path in package.rglob("*.py"):
            for module in imported_modules(path, root):
                parts = module.split(".")
                if len(parts) > 1 and parts[0] == "core" and parts[1] != package.name and (root / "core" / parts[1]).is_dir():
                    edges.add(parts[1])
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> list[str] | None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*trail, node, nxt]
            if nxt not in state and (cycle := visit(nxt, [*trail, node])):
                return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node, [])):
            return cycle
    return None


def test_app_reaches_storage_only_through_the_store_handle_and_core_has_no_ui_imports():
    assert layer_violations(ROOT) == []


def test_core_wings_import_each_other_without_a_circle():
    graph = wing_graph(ROOT)
    assert {"labeling", "data", "training", "scoring"} <= set(graph)
    assert find_cycle(graph) is None, f"import circle between core's wings: {' -> '.join(find_cycle(graph))}"


def test_the_layer_check_reports_each_kind_of_violation(tmp_path):
    """The checker itself on a tree with one violation of each rule, so a green run means something."""
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "tab.py").write_text(
        "from storage.engine import Store\nfrom storage.queue import claim_next_comparison\n"
        "def f():\n    import storage.jobs\n")
    (tmp_path / "core" / "wing_a").mkdir(parents=True)
    (tmp_path / "core" / "wing_b").mkdir()
    for wing in ("wing_a", "wing_b"):
        (tmp_path / "core" / wing / "__init__.py").write_text("")
    (tmp_path / "core" / "wing_a" / "x.py").write_text("import gradio as gr\nfrom core.wing_b.y import g\n")
    (tmp_path / "core" / "wing_b" / "y.py").write_text("from core.wing_a.x import f\n")
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "t.py").write_text("from core.accounts import Actor\n")
    problems = layer_violations(tmp_path)
    assert any("app/tab.py imports storage.queue" in p for p in problems)
    assert any("app/tab.py imports storage.jobs" in p for p in problems)
    assert not any("storage.engine" in p.split(" imports ")[1].split(" ")[0] for p in problems)
    assert any("core/wing_a/x.py imports gradio" in p for p in problems)
    assert any("storage/t.py imports core.accounts" in p for p in problems)
    assert find_cycle(wing_graph(tmp_path)) is not None
