"""``manage.py chaos --processes``, run as a user runs it: its own process in a fresh temp
directory, settings from the environment, no store configured (so it starts runstore and a
redis-server itself), real ``runworker`` processes SIGKILLed; checked from its ``--json`` report."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from detflow_site.processes import gone, manage_command

ROOT = Path(__file__).resolve().parents[2]


def chaos(tmp_path: Path, *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess[str]:
    fresh_tmp = tmp_path / "tmp"
    fresh_tmp.mkdir(exist_ok=True)
    environ = {k: v for k, v in os.environ.items()
               if not k.startswith(("DJANGO_", "DETFLOW_", "OPENAI_"))
               and k not in ("PROMETHEUS_MULTIPROC_DIR", "dramatiq_prom_db")}
    environ.update(TMPDIR=str(fresh_tmp), DJANGO_SETTINGS_MODULE="detflow_site.settings",
                   DJANGO_SQLITE_PATH=str(tmp_path / "db.sqlite3"), PYTHONUNBUFFERED="1")
    return subprocess.run(manage_command("chaos", *args), cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.slow
@pytest.mark.timeout(660)
def test_chaos_processes__sigkilled_workers_lose_nothing_and_repeat_no_side_effect(tmp_path: Path) -> None:
    result = chaos(tmp_path, "--processes", "2", "--executions", "60", "--kills", "3", "--json")
    assert result.returncode == 0, (result.stderr[-3000:], result.stdout[-6000:])
    assert "DETFLOW_MONGODB_URL is unset: started runstore" in result.stderr.splitlines()[0]
    report = json.loads(result.stdout)

    kills = report["kills"]
    assert kills["done"] >= 3, kills
    pids = [pid for kill in kills["list"] for pid in kill["pids"]]
    assert len(pids) == len(set(pids)), f"a pid was killed twice: {kills['list']}"
    alive = [pid for pid in pids if not gone(pid)]
    assert alive == [], f"killed processes still run: {alive}"
    assert kills["worker_starts"] == 2 + kills["done"], kills
    assert report["unexpected_exits"] == []

    assert report["violations"] == [], report["violations"]
    assert sum(report["statuses"].values()) == 60
    assert set(report["statuses"]) <= {"SUCCEEDED", "FAILED", "COMPENSATED", "COMPENSATION_FAILED"}, \
        report["statuses"]
    # A quarter of the executions roll back on the same workers, killed as they are.
    rollbacks = report["rollbacks"]
    assert rollbacks["planned"] >= 1 and rollbacks["started"] >= 1, rollbacks
    assert report["statuses"].get("COMPENSATED", 0) >= 1, report["statuses"]
    effects = report["side_effects"]
    # One side effect for each succeeded step and each succeeded compensation, none repeated.
    assert effects["committed"] == effects["succeeded_steps"] + effects["succeeded_compensations"], effects
    assert effects["succeeded_steps"] > 0 and effects["succeeded_compensations"] > 0, effects
    recovery = report["recovery_ms"]
    assert recovery["max"] is None or recovery["max"] <= recovery["bound"], recovery
    assert report["ok"] is True
    # The services and workers it started are gone with their temp directories.
    assert list((tmp_path / "tmp").iterdir()) == []
    print(f"\nchaos --processes 2: {kills['done']} SIGKILLs with "
          f"{sum(k['running'] for k in kills['list'])} attempts RUNNING, recovered in at most "
          f"{recovery['max']} ms (bound {recovery['bound']}), {report['duration_s']} s; "
          f"rollbacks {rollbacks}; statuses {report['statuses']}")


@pytest.mark.parametrize(("args", "message"), [
    (("--processes", "2", "--faults", "crash"), "act inside one process"),
    (("--processes", "-1"), "--processes must be at least 1"),
    (("--processes", "2", "--lease", "0"), "--lease must be between"),
    (("--kills", "3",), "--kills needs --processes"),
])
def test_chaos_processes__bad_arguments_exit_non_zero_in_one_line(
        tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    result = chaos(tmp_path, *args, timeout_s=120)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert result.stdout == ""
