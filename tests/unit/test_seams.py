"""The engine carries no test hook: crash points and fault switches sit at seams (issue 16).

The runner, the transitions and the engine neither import ``executions.faults`` nor
``executions.seams``, nor call a hook of either; the seam wraps the runner's own names, and fails
loudly when one of them is gone, so that a rename cannot switch the crash points off unseen.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from executions import faults, runner, seams

ROOT = Path(__file__).resolve().parents[2]
#: The modules a step's life passes through that must carry no test call.
CLEAN = ("executions/runner.py", "executions/transitions.py", "executions/engine.py")
HOOKS = ("faults", "seams")


@pytest.mark.parametrize("path", CLEAN)
def test_engine_module__imports_and_calls_no_fault_or_crash_hook(path: str) -> None:
    source = (ROOT / path).read_text()
    tree = ast.parse(source)
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [f"{node.module}.{alias.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) for alias in node.names]
    assert [name for name in imported if any(hook in name.split(".") for hook in HOOKS)] == []
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert names.isdisjoint({*HOOKS, "SimulatedCrash"})
    # What the check greps for: no call of a crash point or a fault switch, in any form.
    assert re.findall(r"\b(?:faults|seams)\.\w+|\bSimulatedCrash\b|\bhit\(", source) == []


def test_seam__wraps_names_the_runner_has() -> None:
    missing = [name for name in seams.WRAPPED if not hasattr(runner, name)]
    assert missing == []


def test_seam__every_point_is_passed_by_it() -> None:
    """Every crash point is one the seam's module names (the rest of the engine has none)."""
    text = (ROOT / "executions/seams.py").read_text()
    passed = set(re.findall(r'_pass\("(\w+)"', text))
    assert passed == set(faults.POINTS)
