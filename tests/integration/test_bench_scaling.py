"""The bench's process-scaling section (``--only scaling``: ``bench/wire.py``'s process sets, the
``runstore`` server's CPU beside, and the sentence saying what limits them), run small as ``make
bench`` runs it, in a process of its own: a real ``runstore``, real ``runworker`` and ``dramatiq``
worker process sets of 1 and 2 processes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import report
from bench.environment import ROOT
from tests.integration.test_bench_wire import running_below_me

LIMITS = ("Both the test store server", "The test store server is the limit",
          "This machine's", "Neither the test store server nor the cores")


@pytest.mark.slow
def test_scaling_section__runs_1_and_2_worker_processes_over_the_server_and_says_what_limits(
    tmp_path: Path,
) -> None:
    output = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
    done = subprocess.run(
        [sys.executable, "-m", "bench.run", "--only", "scaling", "--quick", "--steps", "3",
         "--output", str(output)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    results = json.loads(output.read_text())
    scaling = results["scaling"]
    assert scaling["store"].startswith("runstore over the MongoDB wire protocol")
    assert scaling["processes"] == [1, 2] and scaling["threads"] == 4
    assert scaling["cores"] == os.cpu_count()
    for count in ("1", "2"):
        entry = scaling["by_processes"][count]
        ours, raw = entry["detflow"], entry["dramatiq"]
        assert ours["steps_per_s"] > 0 and raw["steps_per_s"] > 0
        assert ours["server_cpu_share"] > 0 and ours["workers_cpu_share"] > 0
        assert ours["workers_cpu_ms_per_step"] > 0 and raw["workers_cpu_ms_per_step"] > 0
        # Every party's CPU is in the total (one repetition: the median of one sum).
        parts = (ours["workers_cpu_share"] + ours["server_cpu_share"] + ours["redis_cpu_share"]
                 + ours["launcher_cpu_share"])
        assert abs(ours["total_cpu_share"] - parts) <= 0.01, ours
        assert entry["cpu_ratios"]["detflow/dramatiq"] > 0
        # The Redis server's commands per step: raw Dramatiq's every step is a message of its own.
        assert raw["redis_commands_per_step"] > ours["redis_commands"].get("set", 0) > 0, entry
    assert scaling["limit"] == report.scaling_limit(scaling)
    assert scaling["limit"].startswith(LIMITS)
    assert f"{scaling['by_processes']['2']['detflow']['server_cpu_share']:.2f} of a core" in scaling["limit"]
    assert "process scaling" in done.stdout and scaling["limit"] in done.stdout
    assert "Redis server commands per step, 2 process(es)" in done.stdout
    assert running_below_me() == []


def _procs(server: float, total: float, rates: tuple[float, float]) -> dict[str, Any]:
    def entry(rate: float) -> dict[str, Any]:
        return {"detflow": {"steps_per_s": rate, "server_cpu_share": server, "total_cpu_share": total,
                            "workers_cpu_share": total - server, "redis_cpu_share": 0.0,
                            "launcher_cpu_share": 0.0, "workers_cpu_ms_per_step": 1.0,
                            "server_cpu_ms_per_step": 0.5},
                "dramatiq": {"steps_per_s": rate * 2}}

    return {"cores": 2, "threads": 4, "by_processes": {"1": entry(rates[0]), "4": entry(rates[1])}}


def test_scaling_limit__is_read_from_the_server_and_machine_cpu() -> None:
    server = report.scaling_limit(_procs(0.95, 1.2, (400, 500)))
    assert server.startswith("The test store server is the limit")
    assert "busy 0.95 of a core" in server and "x1.25 from 1 to 4" in server
    cores = report.scaling_limit(_procs(0.5, 1.9, (400, 600)))
    assert cores.startswith("This machine's 2 cores are the limit") and "1.90 of" in cores
    both = report.scaling_limit(_procs(0.9, 1.8, (400, 400)))
    assert both.startswith("Both the test store server")
    neither = report.scaling_limit(_procs(0.3, 0.8, (400, 800)))
    assert neither.startswith("Neither the test store server nor the cores")
    # 16 threads at 800 steps/s: 20 ms per step each, 1.5 ms of it CPU.
    assert "each of the 16 worker threads spends 20.0 ms per step, of which 1.50 ms of CPU" in neither
