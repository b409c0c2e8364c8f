"""Chaos with operators' pauses: executions and their workflows paused and resumed at seeded
moments, among crashes, duplicate messages and failures; nothing starts while held, every hold is
lifted, every execution finishes."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from detflow_site.chaos.run import Options, run
from detflow_site.processes import manage_command
from executions import engine, faults, runner

#: How a chaos execution may end: a failure for good either stops it or rolls it back.
ENDINGS = {"SUCCEEDED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED"}


def test_chaos__pauses_among_crashes_and_duplicates_start_nothing_while_held(redis_client: Any) -> None:
    report = run(Options(executions=40, steps=3, threads=4, seed=19, pauses=0.3, work_s=0.1, drain_timeout=90,
                         faults=("pause_execution", "pause_workflow", "crash", "duplicate", "retryable",
                                 "late")))
    summary = report.as_dict()
    print("\n" + "\n".join(report.lines()))

    assert summary["violations"] == []
    assert sum(summary["statuses"].values()) == 40
    assert set(summary["statuses"]) <= ENDINGS
    pauses = summary["pauses"]
    # A third of the executions paused by an operator (half of them at the start: none has ended
    # yet), each resumed or ended while paused.
    assert pauses["planned"] >= 8 and pauses["paused"] >= 6, pauses
    assert pauses["paused"] + pauses["refused"] == pauses["planned"]
    assert pauses["resumed"] + pauses["ended_while_paused"] == pauses["paused"]
    assert pauses["execution_holds"] == pauses["paused"]
    # Every chaos workflow paused once and resumed; its workers held executions at their next step.
    assert pauses["workflows_paused"] == pauses["workflows_resumed"] == 3
    assert pauses["workflow_holds"] >= 1
    assert summary["faults"]["pause_execution"]["injected"] == pauses["paused"]
    assert summary["faults"]["pause_workflow"] == {"planned": 1, "injected": 1}
    for kind in ("crash", "duplicate"):
        assert summary["faults"][kind]["injected"] >= 1, f"{kind} was never injected"
    assert any(line.startswith(f"pauses: {pauses['paused']} executions paused") for line in report.lines())


def test_chaos__checker_reports_starts_while_held_when_the_runner_ignores_pauses(
    redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A build whose runner decides without the pause rule (the engine's decision before its holds
    # are applied): steps are claimed, sleeps start and rollbacks begin while a pause holds them.
    faults.install_seam()  # first: the seam wraps the real decide, and this patch is undone after
    monkeypatch.setattr(runner, "decide", engine._decide)
    report = run(Options(executions=20, steps=3, threads=4, seed=19, pauses=0.5, work_s=0.1,
                         drain_timeout=60, faults=("pause_execution", "pause_workflow")))

    held = [v for v in report.findings.violations if v.check == "no start while held"]
    assert held, report.findings.violations
    assert all(" while paused by its " in v.detail for v in held)
    assert any(v.detail.startswith("step_claimed of ") for v in held)


def test_chaos_command__runs_the_pause_kinds_in_its_own_process(tmp_path: Path) -> None:
    # As a user runs it: settings from a bare environment, the embedded store and Redis.
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("DJANGO_", "DETFLOW_", "OPENAI_"))
               and k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
    environ.update(DJANGO_SETTINGS_MODULE="detflow_site.settings",
                   DJANGO_SQLITE_PATH=str(tmp_path / "db.sqlite3"), PYTHONUNBUFFERED="1")
    result = subprocess.run(
        manage_command("chaos", "--executions", "20", "--steps", "2", "--threads", "4", "--seed", "4",
                       "--faults", "pause_execution,pause_workflow,duplicate", "--json"),
        cwd=tmp_path, env=environ, capture_output=True, text=True, timeout=170)
    assert result.returncode == 0, (result.stderr[-3000:], result.stdout[-3000:])
    report = json.loads(result.stdout)

    assert report["ok"] is True and report["violations"] == []
    assert sum(report["statuses"].values()) == 20
    assert set(report["faults"]) == {"pause_execution", "pause_workflow", "duplicate"}
    assert report["faults"]["pause_workflow"] == {"planned": 1, "injected": 1}
    pauses = report["pauses"]
    assert pauses["workflows_paused"] == pauses["workflows_resumed"] == 3, pauses
    assert pauses["paused"] + pauses["refused"] == pauses["planned"] >= 1, pauses
