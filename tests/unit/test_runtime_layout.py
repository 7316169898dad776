"""The runtime package stands alone: it imports nothing of gpulane's domain, and only one
of its modules touches pykka's private API (docs/architecture.md section 1)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import actors.runtime

RUNTIME_DIR = Path(actors.runtime.__file__).parent
RUNTIME_MODULES = sorted(RUNTIME_DIR.glob("*.py"))


def imported_modules(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports (``from a.b import c`` gives ``a.b``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_the_runtime_has_modules_to_check() -> None:
    assert len(RUNTIME_MODULES) >= 10


@pytest.mark.parametrize("path", RUNTIME_MODULES, ids=lambda p: p.name)
def test_a_runtime_module_imports_nothing_of_the_domain(path: Path) -> None:
    domain = {
        name
        for name in imported_modules(path)
        if name.split(".")[0] == "protocol"
        or (name.split(".")[0] == "actors" and not name.startswith("actors.runtime"))
    }
    assert domain == set()


@pytest.mark.parametrize("path", RUNTIME_MODULES, ids=lambda p: p.name)
def test_only_the_pykka_module_touches_pykka_private_names(path: Path) -> None:
    private = {name for name in imported_modules(path) if name.startswith("pykka._")}
    if path.name == "_pykka.py":
        assert private, "the contact module is where pykka's private names are imported"
    else:
        assert private == set()


def test_no_module_outside_the_runtime_touches_pykka_private_names() -> None:
    package = RUNTIME_DIR.parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if RUNTIME_DIR not in path.parents
        and any(name.startswith("pykka._") for name in imported_modules(path))
    ]
    assert offenders == []


def test_the_domain_reaches_the_runtime_only_through_its_public_names() -> None:
    package = RUNTIME_DIR.parent
    offenders = [
        str(path.relative_to(package))
        for path in package.rglob("*.py")
        if RUNTIME_DIR not in path.parents
        and any(name.startswith("actors.runtime._") for name in imported_modules(path))
    ]
    assert offenders == []
