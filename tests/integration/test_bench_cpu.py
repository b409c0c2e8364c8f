"""The bench's CPU rows and commands by kind (``bench/throughput.py``, ``bench/cost.py``,
``bench/meters.py``), run small: the contenders in this process on the real Redis, the CPU per step
of each and detflow's ratios read by the goal table; MongoDB reads and writes and the engine's Redis
commands by kind, counted through the real engine.

Celery is a bench requirement, not a test one: it is left out here (``make bench`` runs it)."""
from __future__ import annotations

import math
from typing import Any

from bench import contenders, cost, meters, report, throughput
from executions.locks import ExecutionLock

CPU_GOALS = {
    "CPU per step (the process's own CPU time over the run): detflow with a message per step / raw "
    "Dramatiq chain": "detflow-msg/dramatiq",
    "CPU per step: detflow by default (steps back to back) / raw Dramatiq chain": "detflow/dramatiq",
}


def test_throughput__reports_cpu_per_step_of_every_contender_its_ratios_and_commands_by_kind(
    broker: Any, redis_client: Any
) -> None:
    every: list[contenders.Contender] = [contenders.Detflow(), contenders.DetflowPerMessage(),
                                         contenders.RawDramatiq()]
    result = throughput.scaling(every, [2], executions=4, steps=3, repetitions=2,
                                progress=lambda _line: None, counted_threads=2)

    entry = result["by_threads"]["2"]
    for name in ("detflow", "detflow-msg", "dramatiq"):
        assert entry[name]["cpu_ms_per_step"] > 0 and entry[name]["steps_per_s"] > 0, entry[name]
    assert set(entry["cpu_ratios"]) == {"detflow/dramatiq", "detflow-msg/dramatiq"}
    assert all(v is not None and v > 0 and math.isfinite(v) for v in entry["cpu_ratios"].values())

    counted = result["commands"]["contenders"]
    per_message, raw = counted["detflow-msg"], counted["dramatiq"]
    # A message per step: each step loads the execution and writes it, under a lock it releases.
    assert per_message["mongodb_reads_per_step"] >= 1 and per_message["mongodb_writes_per_step"] >= 1
    assert per_message["engine_redis"]["lock set"] >= 1, per_message
    assert per_message["engine_redis"]["lock release"] >= 1, per_message
    assert (per_message["mongodb_reads_per_step"] + per_message["mongodb_writes_per_step"]
            <= per_message["mongodb_per_step"])
    # The idle CPU of the process with each contender's workers started, measured beside.
    assert all(c["idle_cpu_share"] >= 0 for c in counted.values()), counted
    # The raw chain stores nothing and has no Redis client beside its broker's.
    assert raw["mongodb_per_step"] == 0 and raw["engine_redis_per_step"] == 0

    results = {"throughput": {**result, "main_threads": 2}}
    rows = {r["goal"]: r for r in report.evaluate(results)}
    for goal, ratio in CPU_GOALS.items():
        row = rows[goal]
        assert row["measured"] == entry["cpu_ratios"][ratio]
        assert row["holds"] is (row["measured"] <= float(row["bound"].split()[-1]))
        assert "ms/step" in row["note"] and "steps/s" in row["note"]
    text = report.details(results)
    assert "CPU per step, ms" in text and "commands per step by kind" in text
    assert f"{entry['detflow-msg']['cpu_ms_per_step']:.3f}" in text
    assert "lock set" in text and "lock release" in text
    assert "idle CPU of this process" in text and "CPU per step net of it" in text


def test_cost__counts_reads_writes_read_after_write_and_redis_by_kind_per_message_step(
    broker: Any, redis_client: Any
) -> None:
    configs = [cost.Config("10 steps", 10, executions=1), cost.Config("100 steps", 100, executions=1),
               cost.Config("10 steps, a message each", 10, inline=1, executions=2)]
    out = cost.measure(configs, 1, lambda _line: None)

    msg = out["10 steps, a message each"]
    # Every command the engine sends to the store is a read or a write.
    assert math.isclose(msg["mongodb_reads_per_attempt"] + msg["mongodb_writes_per_attempt"],
                        msg["mongodb_commands_per_attempt"], abs_tol=0.002), msg
    assert msg["mongodb_reads_max_per_attempt"] >= 1 and msg["mongodb_writes_max_per_attempt"] >= 1
    assert isinstance(msg["mongodb_reads_after_write"], int) and msg["mongodb_reads_after_write"] >= 0
    assert msg["redis_kinds"]["lock set"] >= 1 and msg["redis_kinds"]["lock release"] >= 1, msg
    assert msg["redis_lock_release_max_per_attempt"] >= 2

    results = {"cost": {"configs": out, "growth": {
        "100 steps / 10 steps": report.growth_ratios(out, "100 steps", "10 steps")}}}
    rows = {r["goal"].split(" (")[0]: r for r in report.evaluate(results)}
    reads = rows["MongoDB reads per message-step"]
    assert reads["measured"] == round(msg["mongodb_reads_per_attempt"], 2)
    assert reads["holds"] is (reads["measured"] <= 1)
    # Each step loads its execution: the reads of the executions collection are counted by name.
    assert msg["mongodb_reads_by_collection"]["executions"] >= 1, msg
    assert rows["MongoDB writes per message-step"]["measured"] == msg["mongodb_writes_max_per_attempt"]
    after = rows["MongoDB reads after a write to the same collection in the same message"]
    assert after["measured"] == sum(c["mongodb_reads_after_write"] for c in out.values())
    assert after["holds"] is (after["measured"] == 0)
    redis_row = rows["engine Redis commands per message-step, uncontended"]
    assert redis_row["measured"] == msg["redis_commands_max_per_attempt"]
    assert redis_row["holds"] is (redis_row["measured"] <= 2) and "lock set" in redis_row["note"]
    assert "per message-step (a message per step)" in report.details(results)


def test_redis_meter__names_the_engine_lock_commands_by_kind(redis_client: Any) -> None:
    from detflow_site import services

    # Once before the count: a script the server has not cached yet may take a second command.
    warm = ExecutionLock(services.redis_client(), "bench-warm", 10_000)
    assert warm.acquire() and warm.renew()
    warm.release()
    with meters.RedisMeter().installed() as meter:
        holder = ExecutionLock(services.redis_client(), "bench-kinds", 10_000)
        other = ExecutionLock(services.redis_client(), "bench-kinds", 10_000)
        assert holder.acquire()
        assert not other.acquire()  # taken: pokes the holder and tries once more
        assert holder.renew()
        assert holder.release()  # the poke was waiting
        kinds = meter.tally.take().kinds

    assert kinds == {"lock set": 3, "poke": 1, "lock renew": 1, "lock release": 1}


def test_reads_after_write__counts_the_reads_that_follow_a_write_to_their_collection() -> None:
    def seq(*names: str, collection: str | None = "executions") -> list[tuple[str, str | None]]:
        return [(name, collection) for name in names]

    assert meters.reads_after_write(seq("find_one", "update_one", "update_one")) == 0
    assert meters.reads_after_write(seq("find_one", "update_one", "find_one", "find", "update_one")) == 2
    assert meters.reads_after_write(seq("find", "update", "aggregate")) == 1  # the wire's names
    # A read of another collection after the execution's write is not a read-after-write.
    assert meters.reads_after_write(seq("find_one", "update_one")
                                    + seq("find", collection="workflow_controls")) == 0
    assert meters.reads_by_collection(seq("find_one", "update_one")
                                      + seq("find", collection="workflow_controls")) == {
        "executions": 1, "workflow_controls": 1}
