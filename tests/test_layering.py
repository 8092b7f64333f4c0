"""The house has floors: a package imports only packages on floors below it.

    {pit, corruptions} → common → {classification, detection, robustness} → demo → eval.py

``detection`` and ``robustness`` never import each other; the one sideways arrow on the suites' floor
is ``robustness`` → ``classification`` (robustness reads its ImageFolder sets through the classification
data layer, never the other way round). ``pit`` imports no other package of the
project, and nothing imports ``eval.py``. Imports are read with ``ast`` (top-level and function-local
alike), so a lazy import inside a function cannot hide an arrow running up.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FLOOR = {"pit": 0, "common": 1, "corruptions": 0, "classification": 2, "detection": 2, "robustness": 2, "demo": 3, "eval": 4}
NEVER = {("detection", "robustness"), ("robustness", "detection"), ("classification", "robustness"),
         ("classification", "detection"), ("detection", "classification")}
SIDEWAYS = {("robustness", "classification")}


def _imports(path: Path, package: str) -> set[str]:
    """Top-level project packages imported anywhere in ``path`` (relative imports resolve to ``package``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.add(package if node.level else (node.module or "").split(".")[0])
    return found & set(FLOOR)


def _modules() -> list[tuple[str, Path]]:
    pairs = [("eval", ROOT / "eval.py")]
    for package in FLOOR:
        if package != "eval":
            pairs += [(package, p) for p in sorted((ROOT / package).rglob("*.py"))]
    return pairs


def test_every_package_on_a_floor_exists() -> None:
    for package in FLOOR:
        if package != "eval":
            assert (ROOT / package / "__init__.py").is_file(), package


@pytest.mark.parametrize("package,path", _modules(), ids=lambda v: str(v.relative_to(ROOT)) if isinstance(v, Path) else v)
def test_no_import_runs_up_a_floor(package: str, path: Path) -> None:
    for imported in _imports(path, package) - {package}:
        assert imported != "eval", f"{path}: nothing may import eval.py"
        assert (package, imported) not in NEVER, f"{path}: {package} must never import {imported}"
        if (package, imported) in SIDEWAYS:
            continue
        assert FLOOR[imported] < FLOOR[package], (
            f"{path}: {package} (floor {FLOOR[package]}) imports {imported} (floor {FLOOR[imported]})")


def test_pit_imports_no_other_project_package() -> None:
    for path in (ROOT / "pit").rglob("*.py"):
        assert _imports(path, "pit") <= {"pit"}, path
