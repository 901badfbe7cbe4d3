"""The repository stands alone: it points at no file outside itself, every module names
real tests, and every library the shipped code imports is declared in setup.cfg."""

from __future__ import annotations

import ast
import configparser
import functools
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
# The packages setup.cfg ships (twisted/plugins holds only our drop-in).
SHIPPED = ("distpotify/", "proxy/", "twisted/plugins/")
# Spelled in pieces so that this file does not name what it looks for.
OUTSIDE = [b"../" + b"shared", b"DESIGN" + b".md", b"DESIGN" + b" section"]
TEST_CASE_NAME = re.compile(r"^\s*#\s*test-case-name:\s*(.+?)\s*$", re.MULTILINE)


def tracked_files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listing = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True,
                             check=True, timeout=30).stdout
    return [ROOT / name for name in listing.decode().split("\0") if name]


def test_no_file_refers_to_the_shared_design_notes() -> None:
    """docs/architecture.md is the repository's own account; nothing points outside it."""
    found = [
        f"{path.relative_to(ROOT)}:{line_number}"
        for path in tracked_files() if path.is_file()
        for line_number, line in enumerate(path.read_bytes().splitlines(), 1)
        if any(needle in line for needle in OUTSIDE)
    ]

    assert found == []


def test_every_test_case_name_line_names_an_existing_test_module() -> None:
    missing = []
    for path in tracked_files():
        if path.suffix != ".py" or not path.is_file():
            continue
        for names in TEST_CASE_NAME.findall(path.read_text(encoding="utf-8")):
            for name in filter(None, (part.strip() for part in names.split(","))):
                module = ROOT.joinpath(*name.split(".")).with_suffix(".py")
                if not name.startswith("tests.") or not module.is_file():
                    missing.append(f"{path.relative_to(ROOT)}: {name}")

    assert missing == []


def declared_distributions() -> set[str]:
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    lines = setup["options"]["install_requires"].splitlines()
    return {normalize(Requirement(line).name)
            for line in (raw.strip() for raw in lines) if line and not line.startswith("#")}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@functools.cache
def providers() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def imported_modules(path: Path) -> set[str]:
    modules = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
    return modules


@functools.cache
def distribution_of(module: str) -> str | None:
    """The installed distribution that provides ``module``; None for the standard library
    and for the project's own packages."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names or top in ("distpotify", "proxy"):
        return None
    candidates = [normalize(d) for d in providers().get(top, []) if normalize(d) != "distpotify"]
    if len(candidates) > 1:  # a namespace package such as zope: zope.interface, zope.event
        candidates = [d for d in candidates if module.replace(".", "-").startswith(d)]
    assert len(candidates) == 1, f"cannot tell which distribution provides {module}"
    return candidates[0]


def test_every_library_the_shipped_code_imports_is_declared() -> None:
    declared = declared_distributions()
    undeclared = sorted(
        f"{path.relative_to(ROOT)}: {module}"
        for path in tracked_files()
        if path.suffix == ".py" and str(path.relative_to(ROOT)).startswith(SHIPPED)
        for module in imported_modules(path)
        if (dist := distribution_of(module)) is not None and dist not in declared
    )

    assert undeclared == []
