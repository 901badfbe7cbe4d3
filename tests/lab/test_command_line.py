"""``python -m lab`` (``make lab``): it lists the scenarios anywhere, without root, and the
lab's modules import one another in one direction only (the command line on top)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import lab
from lab import scenarios

pytestmark = pytest.mark.timeout(60)


def test_list_names_every_scenario_with_its_summary() -> None:
    done = subprocess.run([sys.executable, "-m", "lab", "list"], capture_output=True,
                          text=True, timeout=30, check=False)

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines] == sorted(scenarios.SCENARIOS)
    assert all(scenario.summary in done.stdout for scenario in scenarios.SCENARIOS.values())


def test_an_unknown_scenario_is_refused_naming_the_choices() -> None:
    done = subprocess.run([sys.executable, "-m", "lab", "scenario", "meteor-strike"],
                          capture_output=True, text=True, timeout=30, check=False)

    assert done.returncode == 2
    assert "invalid choice: 'meteor-strike'" in done.stderr and "leader-crash" in done.stderr


def lab_imports() -> dict[str, set[str]]:
    """Module -> the lab modules it imports, wherever the import statement sits."""
    graph: dict[str, set[str]] = {}
    for path in Path(lab.__file__).parent.glob("*.py"):
        found = graph.setdefault(path.stem, set())
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                if module == "lab":
                    found |= {alias.name for alias in node.names}
                elif module.startswith("lab."):
                    found.add(module.split(".")[1])
            elif isinstance(node, ast.Import):
                found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("lab.")}
    return graph


def test_the_lab_modules_import_one_another_without_a_circle() -> None:
    graph = lab_imports()
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import circle: {' -> '.join((*path, module))}"
        if module not in done:
            for imported in sorted(graph.get(module, ())):
                visit(imported, (*path, module))
            done.add(module)

    for module in sorted(graph):
        visit(module, ())
    assert "scenarios" in graph["__main__"] and "scenarios" not in graph["lab"]
