"""The layers read app -> core -> storage: app/ (and app.py) reach storage/ only through the Store
handle (storage.engine), core/ never imports gradio or app/, storage/ never imports core/ or app/;
core's wings use each other only along the edges declared in ``WING_DEPENDENCIES`` (the one place
the rule is written; docs/design.md shows it), and no module imports itself back through others
(a circle of modules, function-level imports included, anywhere in core/ or storage/).

The oracle is the source itself, parsed with ``ast`` (every import, including those inside
functions), not the modules under test.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
STORE_HANDLE = "storage.engine"

# Which of core's wings each wing may import (core's top-level modules, such as core.accounts, core.limits
# and core.segments, are shared by all). Read top to bottom: a wing uses only wings above it.
WING_DEPENDENCIES: dict[str, set[str]] = {
    "preferences": set(),  # votes -> verdicts -> pairs: the rules every wing uses
    "data": {"preferences"},  # readers and writers of files
    "labeling": {"preferences"},  # the annotator's actions and the team's agreement
    "scoring": {"data", "preferences"},  # the Inspect engine, score, eval, diagnostics
    "training": {"data", "preferences", "scoring"},  # RewardTrainer runs
    "loop": {"preferences", "scoring", "training"},  # active learning: rescore, retrain, promote, evaluate
    "serving": {"data", "preferences", "scoring"},  # the reward server and its trainer-side client
    "process": {"preferences", "scoring", "training"},  # process reward models: step training and step scores
    "jobs": {"loop", "preferences", "process", "training"},  # background jobs: scheduler and worker process
}


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


def wing_edge_violations(graph: dict[str, set[str]]) -> list[str]:
    """One line per wing, or edge between wings, that ``WING_DEPENDENCIES`` does not declare."""
    problems = [f"core/{wing}/ is a wing WING_DEPENDENCIES does not list" for wing in graph if wing not in WING_DEPENDENCIES]
    for wing, used in sorted(graph.items()):
        for other in sorted(used - WING_DEPENDENCIES.get(wing, set())):
            problems.append(f"core/{wing}/ imports core/{other}/, an edge WING_DEPENDENCIES does not allow")
    return problems


def module_graph(root: Path, layer: str) -> dict[str, set[str]]:
    """Which modules of ``layer`` (core or storage) import which others of it, every import counted:
    module level and inside functions alike (a function-level import hides a circle, it does not break it)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((root / layer).rglob("*.py")):
        name = ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        graph[name] = set()
        for module in imported_modules(path, root):
            if module.split(".")[0] != layer or module == name:
                continue
            target = root / module.replace(".", "/")
            if target.with_suffix(".py").exists() or (target / "__init__.py").exists():
                graph[name].add(module)
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


def test_core_wings_import_each_other_only_along_the_declared_edges():
    graph = wing_graph(ROOT)
    assert {"preferences", "data", "labeling", "scoring", "training", "loop", "serving", "jobs"} <= set(graph)
    assert wing_edge_violations(graph) == []
    assert find_cycle(WING_DEPENDENCIES) is None, "the declared wing edges themselves form a circle"


def test_no_module_of_core_or_storage_imports_itself_back_through_others():
    for layer in ("core", "storage"):
        cycle = find_cycle(module_graph(ROOT, layer))
        assert cycle is None, f"import circle in {layer}/: {' -> '.join(cycle)}"


def test_the_reward_server_client_imports_without_torch_transformers_or_gradio():
    """A policy trainer imports ``make_remote_reward_fn`` and nothing of the reward model's stack: checked in a
    fresh interpreter, whose sys.modules is the oracle."""
    probe = ("import sys; import core.serving.client; "
             "print(sorted(m for m in ('torch', 'transformers', 'gradio', 'sqlalchemy') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


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
    assert any("core/wing_a/ is a wing WING_DEPENDENCIES does not list" in p for p in wing_edge_violations(wing_graph(tmp_path)))


def test_the_circle_check_finds_a_planted_circle_inside_a_wing_and_inside_storage(tmp_path):
    """Two modules of one wing that import each other, one of them only inside a function (the hidden kind),
    and the same inside storage/: each is reported; a one-way import is not."""
    (tmp_path / "core" / "wing").mkdir(parents=True)
    (tmp_path / "core" / "wing" / "__init__.py").write_text("")
    (tmp_path / "core" / "wing" / "rules.py").write_text("from core.wing.writer import write\n")
    (tmp_path / "core" / "wing" / "writer.py").write_text("def write():\n    from core.wing.rules import fold\n")
    (tmp_path / "core" / "wing" / "other.py").write_text("from core.wing import rules\n")
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "queue.py").write_text("from storage.datasets import ids\n")
    (tmp_path / "storage" / "datasets.py").write_text("def f():\n    from storage.queue import refresh\n")
    (tmp_path / "storage" / "models.py").write_text("")
    (tmp_path / "storage" / "labels.py").write_text("from storage.models import Label\n")
    core_cycle = find_cycle(module_graph(tmp_path, "core"))
    storage_cycle = find_cycle(module_graph(tmp_path, "storage"))
    assert core_cycle is not None and {"core.wing.rules", "core.wing.writer"} <= set(core_cycle)
    assert storage_cycle is not None and {"storage.queue", "storage.datasets"} <= set(storage_cycle)
    (tmp_path / "storage" / "datasets.py").write_text("")
    (tmp_path / "core" / "wing" / "writer.py").write_text("")
    assert find_cycle(module_graph(tmp_path, "core")) is None
    assert find_cycle(module_graph(tmp_path, "storage")) is None
