"""Module boundaries of the config package: no cycle with training, no leftover recipe module in
training, and the recipes command runnable as a module."""

from __future__ import annotations

import ast
import runpy
from pathlib import Path

import pytest

import effv2.config as config
import effv2.training.schedule as schedule


def _imports(path: Path, package: str) -> set[str]:
    """Absolute names of every module ``path`` imports (at any level, lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            mod = ".".join(p for p in (base, node.module) if p)
            names |= {mod} | {f"{mod}.{a.name}" for a in node.names}
    return names


def test_config_imports_nothing_from_training_and_schedule_not_the_recipe_module():
    # Static, so that no subprocess (and no second torch import) is needed on a small machine.
    for path in Path(config.__file__).parent.glob("*.py"):
        assert not [m for m in _imports(path, "effv2.config") if m.startswith("effv2.training")], path.name
    schedule_imports = _imports(Path(schedule.__file__), "effv2.training")
    assert "effv2.config.schema" in schedule_imports  # the type it computes from, without a cycle
    assert not [m for m in schedule_imports if "recipe" in m]


def test_the_recipe_schema_lives_only_in_config():
    assert not (Path(schedule.__file__).parent / "recipe.py").exists()
    assert config.Recipe.__module__ == "effv2.config.schema"


# This process has imported the module already; a real `python -m` starts without it.
@pytest.mark.filterwarnings("ignore:'effv2.cli.recipes' found in sys.modules:RuntimeWarning")
def test_recipes_command_runs_as_a_module(monkeypatch, capsys):
    monkeypatch.setattr("sys.argv", ["effv2.cli.recipes", "--set", "epoch=3"])
    with pytest.raises(SystemExit) as e:
        runpy.run_module("effv2.cli.recipes", run_name="__main__")
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith("error: --set epoch=3: unknown recipe key 'epoch'")
