"""The bench's over-the-wire section (``bench/wire.py``), run small as ``make bench`` runs it: a real
``runstore``, a child bench process over it, real ``runworker`` and ``dramatiq`` worker process sets.

Celery is a bench requirement, not a test one: the in-process part runs here without it (the
bench's ``--quick`` run, with it, is the smoke run of the whole command)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench import report, wire

#: What the section leaves behind: nothing of these may still run after it returns.
LEFT_BEHIND = ("runstore", "runworker", "bench.raw_worker", "bench.wire", "executions.worker_boot")


def running_below_me() -> list[str]:
    found = []
    for pid in wire.tree(os.getpid())[1:]:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if any(name in command for name in LEFT_BEHIND):
            found.append(f"{pid}: {command}")
    return found


@pytest.mark.slow
def test_wire_section__measures_every_contender_over_the_server_and_stops_every_process() -> None:
    result = wire.measure(threads=2, executions=4, steps=3, repetitions=1, processes=[1],
                          process_threads=2, process_executions=4,
                          contenders=("detflow", "detflow-msg", "dramatiq"))

    assert result["store"].startswith("runstore over the MongoDB wire protocol (mongodb://127.0.0.1:")
    part = result["in_process"]
    ours, per_message, raw = (part["contenders"][n] for n in ("detflow", "detflow-msg", "dramatiq"))
    # detflow paid round trips to the server, and the server's CPU; raw Dramatiq stores nothing.
    # A fenced write per step at least: its outcome, with the next step's claim.
    assert ours["mongodb_round_trips_per_step"] >= 1, ours
    assert ours["mongodb_round_trips"]["update"] > 1, ours  # and the first step's claim
    assert per_message["mongodb_round_trips_per_step"] > ours["mongodb_round_trips_per_step"]
    assert ours["server_cpu_ms_per_step"] > 0
    assert raw["mongodb_round_trips_per_step"] == 0
    # (the server still answers the child's pymongo heartbeats while raw Dramatiq runs)
    assert raw["server_cpu_ms_per_step"] < ours["server_cpu_ms_per_step"] / 10, (raw, ours)
    assert all(c["steps_per_s"] > 0 for c in part["contenders"].values())
    assert set(part["ratios"]) == {"detflow/dramatiq", "detflow-msg/dramatiq"}

    one = result["processes"]["by_processes"]["1"]
    assert one["detflow"]["steps_per_s"] > 0 and one["dramatiq"]["steps_per_s"] > 0
    assert one["detflow"]["workers_cpu_ms_per_step"] > 0 and one["detflow"]["server_cpu_ms_per_step"] > 0
    assert one["dramatiq"]["workers_cpu_ms_per_step"] > 0
    assert one["ratios"]["detflow/dramatiq"] > 0

    row = next(r for r in report.evaluate({"wire": result}) if r["goal"].startswith("over the wire"))
    assert row["measured"] == part["ratios"]["detflow/dramatiq"]
    assert "round trips/step" in row["note"] and "runworker processes" in row["note"]
    assert "over the wire" in report.details({"wire": result})
    assert running_below_me() == []
