"""Every cap and bound lives in core/limits.py, or (in storage/, which cannot import core/) is named where it is
enforced and listed in ``core.limits.STORAGE_BOUNDS``; each says in ``core.limits.CAPS`` what a user sees.

The oracle is the source, parsed with ``ast``: a ``MAX_``/``MIN_`` constant defined anywhere else fails.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import core.limits as limits

ROOT = Path(__file__).resolve().parent.parent
CAP_PREFIXES = ("MAX_", "MIN_", "DEFAULT_MAX_")


def defined_caps(root: Path) -> dict[str, str]:
    """``module.NAME -> file`` for each module-level MAX_/MIN_ constant under core/, storage/, app/ and app.py."""
    found: dict[str, str] = {}
    files = [p for layer in ("core", "storage", "app") for p in sorted((root / layer).rglob("*.py"))]
    files += [root / "app.py"] if (root / "app.py").exists() else []
    for path in files:
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, (ast.Assign, ast.AnnAssign)):
                continue
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [t.id for target in targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])
                     if isinstance(t, ast.Name)]
            for name in names:
                if name.startswith(CAP_PREFIXES):
                    found[f"{module}.{name}"] = str(path.relative_to(root))
    return found


def misplaced_caps(root: Path) -> list[str]:
    return [f"{where} defines {qualified.rsplit('.', 1)[1]}: define it in core/limits.py (storage/: list it in "
            f"STORAGE_BOUNDS)" for qualified, where in sorted(defined_caps(root).items())
            if not qualified.startswith("core.limits.") and qualified not in limits.STORAGE_BOUNDS]


def test_no_cap_is_defined_outside_core_limits_unless_listed_there():
    assert misplaced_caps(ROOT) == []


def test_every_cap_says_what_a_user_sees_and_every_listed_bound_exists():
    in_limits = {name for name in vars(limits) if name.startswith(CAP_PREFIXES)}
    assert in_limits - set(limits.CAPS) == set(), "caps without the error a user sees in CAPS"
    for qualified in limits.STORAGE_BOUNDS:
        module, name = qualified.rsplit(".", 1)
        assert isinstance(getattr(importlib.import_module(module), name), int), qualified
        assert qualified in limits.CAPS, f"{qualified} has no entry in CAPS"
    assert set(limits.CAPS) <= in_limits | set(limits.STORAGE_BOUNDS), "CAPS names a cap that does not exist"
    assert all(message.strip() for message in limits.CAPS.values())


def test_the_cap_check_finds_a_cap_planted_in_a_wing_and_in_the_app(tmp_path):
    (tmp_path / "core" / "wing").mkdir(parents=True)
    (tmp_path / "core" / "wing" / "rules.py").write_text("MAX_THINGS = 3\nOTHER = 1\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "tab.py").write_text("MIN_WIDTH, MAX_WIDTH = 1, 9\n")
    (tmp_path / "storage").mkdir()
    (tmp_path / "storage" / "datasets.py").write_text("MAX_OVERLAP = 10\n")  # listed in STORAGE_BOUNDS
    problems = misplaced_caps(tmp_path)
    assert any("core/wing/rules.py defines MAX_THINGS" in p for p in problems)
    assert any("app/tab.py defines MIN_WIDTH" in p for p in problems)
    assert any("app/tab.py defines MAX_WIDTH" in p for p in problems)
    assert not any("OTHER" in p or "MAX_OVERLAP" in p for p in problems)
