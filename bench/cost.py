"""Cost per step attempt, counted and timed, and how it grows with the workflow and its history.

Each execution is driven by calling ``runner.advance`` in this thread, exactly what a worker does
for one message (lock, load, decide, claim, handler, outcome, and on to the next step while the
message's run lasts, release, send), until it has finished, one execution at a time (the store
then holds only the execution being driven, so the embedded store's scan of every document does
not blur the picture). A configuration runs either with the default ``DETFLOW_INLINE_STEPS`` (steps
back to back under one message) or with ``1`` (a message per step, the costliest way). The
messages the engine sends go to the real broker and are dropped afterwards. Every call is timed
and split into the time spent in the store, in the engine's own Redis commands, in sending
messages, and the rest (the engine's Python, the handler, the watchdog thread); the per-attempt
figures are a call's totals divided by the step attempts it ran.
"""
from __future__ import annotations

import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import bson

from bench import handlers, meters, stats

#: Steps driven per configuration and repetition (executions = this // steps, at least 1).
STEP_BUDGET = 200


@dataclass(frozen=True)
class Config:
    """A workflow shape: ``steps`` measured no-op steps after ``flaky`` steps failing ``fail`` times."""

    label: str
    steps: int
    flaky: int = 0
    fail: int = 0
    executions: int = 0
    #: ``DETFLOW_INLINE_STEPS`` while the measured steps run; ``None``: the default.
    inline: int | None = None

    def count(self) -> int:
        return self.executions or max(STEP_BUDGET // self.steps, 1)


@dataclass
class Drive:
    """What one configuration's attempts cost in one repetition."""

    config: Config
    attempts: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    store_s: float = 0.0
    redis_s: float = 0.0
    send_s: float = 0.0
    mongo: Counter[str] = field(default_factory=Counter)
    mongo_bytes: int = 0
    redis: Counter[str] = field(default_factory=Counter)
    messages: Counter[str] = field(default_factory=Counter)
    max_mongo: float = 0.0
    max_redis: float = 0.0
    #: Per attempt, the most reads and writes one call sent (a call of a message per step: one step).
    max_reads: float = 0.0
    max_writes: float = 0.0
    #: Reads that followed a write of the same call, over every call.
    reads_after_write: int = 0
    redis_kinds: Counter[str] = field(default_factory=Counter)
    reads_by_collection: Counter[str] = field(default_factory=Counter)
    #: Per attempt, the most ``lock set`` + ``lock release`` commands one call sent.
    max_lock_release: float = 0.0
    calls: int = 0
    start_mongo: Counter[str] = field(default_factory=Counter)
    start_bytes: int = 0
    doc_bytes_before: list[int] = field(default_factory=list)
    doc_bytes_after: list[int] = field(default_factory=list)
    events_before: list[int] = field(default_factory=list)

    def per_attempt(self, total: float) -> float:
        return total / self.attempts if self.attempts else float("nan")


@contextlib.contextmanager
def inline_steps(value: int | None) -> Iterator[None]:
    """Run the block with ``DETFLOW_INLINE_STEPS=value`` (``None``: as configured)."""
    from django.conf import settings

    if value is None:
        yield
        return
    saved = getattr(settings, "DETFLOW", {})
    settings.DETFLOW = {**saved, "INLINE_STEPS": value}
    try:
        yield
    finally:
        settings.DETFLOW = saved


def _succeeded(execution_id: str) -> tuple[int, bool]:
    """Return how many steps have succeeded, and whether the execution has finished."""
    from executions import store

    doc = store.load_working(execution_id)
    assert doc is not None
    done = sum(1 for s in doc["steps"] if s["status"] == "SUCCEEDED")
    return done, doc["status"] in ("SUCCEEDED", "FAILED", "CANCELLED")


def _doc(execution_id: str) -> dict[str, Any]:
    from executions import store

    doc = store.load(execution_id)
    assert doc is not None
    return doc


#: The collection of the workflow pauses, whose view a worker refreshes once a second.
PAUSE_VIEW = "workflow_controls"


def timed_steps(execution_id: str, config: Config,
                meter: tuple[meters.StoreMeter, meters.RedisMeter, meters.MessageMeter],
                result: Drive) -> None:
    """Advance the execution until it has finished, as a worker would, timing and counting each
    call into ``result``; its first ``config.flaky`` steps have succeeded already."""
    from executions import runner

    for m in meter:
        m.tally.take()
    settled, finished = config.flaky, False
    with inline_steps(config.inline):
        for _ in range(config.steps + 1):
            wall, cpu = time.perf_counter(), time.thread_time()
            runner.advance(execution_id)
            result.wall_s += time.perf_counter() - wall
            result.cpu_s += time.thread_time() - cpu
            mongo, redis, sent = (m.tally.take() for m in meter)
            done, finished = _succeeded(execution_id)
            for m in meter:  # the check above is not part of the cost
                m.tally.take()
            ran, settled = done - settled, done
            result.calls += 1
            result.attempts += ran
            result.store_s += mongo.seconds
            result.redis_s += redis.seconds
            result.send_s += sent.seconds
            result.mongo += mongo.commands
            result.mongo_bytes += mongo.bytes
            result.redis += redis.commands
            result.messages += sent.commands
            result.redis_kinds += redis.kinds
            result.reads_after_write += meters.reads_after_write(mongo.sequence)
            result.reads_by_collection += meters.reads_by_collection(mongo.sequence)
            if ran:
                split = meters.mongo_split(mongo.commands)
                # The execution's own commands: the pause view's refresh (one read of
                # workflow_controls a second per process) is counted apart, by collection.
                own = sum(1 for _, collection in mongo.sequence if collection != PAUSE_VIEW)
                result.max_mongo = max(result.max_mongo, own / ran)
                result.max_redis = max(result.max_redis, redis.total / ran)
                result.max_reads = max(result.max_reads, split["reads"] / ran)
                result.max_writes = max(result.max_writes, split["writes"] / ran)
                result.max_lock_release = max(
                    result.max_lock_release,
                    (redis.kinds["lock set"] + redis.kinds["lock release"]) / ran)
            if finished:
                break
    if not finished:
        raise RuntimeError(f"{config.label}: execution {execution_id} did not finish")


def drive(config: Config, meter: tuple[meters.StoreMeter, meters.RedisMeter, meters.MessageMeter]
          ) -> Drive:
    """Run the configuration's executions one by one; count and time their measured attempts."""
    from detflow_site import services
    from executions import operations, runner, store

    store_meter = meter[0]
    name = handlers.noop_workflow(config.steps, config.flaky)
    result = Drive(config)
    run = secrets.token_hex(6)
    for _ in range(config.count()):
        for m in meter:
            m.tally.take()
        execution_id = operations.start(name, {"run": run, "fail": config.fail})[0]["_id"]
        start = store_meter.tally.take()
        result.start_mongo += start.commands
        result.start_bytes += start.bytes
        with inline_steps(1):  # the history, an attempt a call: not measured
            for _ in range(config.flaky * (config.fail + 1)):
                runner.advance(execution_id)
        doc = _doc(execution_id)
        if config.flaky:
            flaky = doc["steps"][config.flaky - 1]
            assert flaky["status"] == "SUCCEEDED" and flaky["attempt"] == config.fail + 1, flaky
        result.doc_bytes_before.append(len(bson.encode(doc)))
        result.events_before.append(len(doc["events"]))
        timed_steps(execution_id, config, meter, result)
        doc = _doc(execution_id)
        if doc["status"] != "SUCCEEDED":
            raise RuntimeError(f"{config.label}: execution {execution_id} is {doc['status']}")
        result.doc_bytes_after.append(len(bson.encode(doc)))
        store.collection().delete_many({})
        services.redis_client().flushdb()
        for m in meter:
            m.tally.take()
    return result


def measure(
    configs: Sequence[Config], repetitions: int, progress: Callable[[str], None]
) -> dict[str, Any]:
    """Drive every configuration once per repetition, interleaved; summarize each."""
    from bench.throughput import reset

    reset()
    drives: dict[str, list[Drive]] = {c.label: [] for c in configs}
    with meters.all_meters() as meter:
        for rep in range(repetitions):
            line = []
            for config in configs:
                d = drive(config, meter)
                drives[config.label].append(d)
                line.append(f"{config.label} {d.per_attempt(d.wall_s) * 1000:.2f}")
            progress(f"cost rep {rep + 1}/{repetitions}, ms per step attempt: " + ", ".join(line))
    return {label: summarize(ds) for label, ds in drives.items()}


def summarize(ds: list[Drive]) -> dict[str, Any]:
    config = ds[0].config
    attempts = sum(d.attempts for d in ds)

    def per(values: Counter[str]) -> dict[str, float]:
        return {k: round(v / attempts, 3) for k, v in values.most_common()}

    def ms(get: Callable[[Drive], float]) -> float | None:
        return stats.rounded(stats.median([d.per_attempt(get(d)) * 1000 for d in ds]), 3)

    mongo = sum((d.mongo for d in ds), Counter())
    split = meters.mongo_split(mongo)
    redis = sum((d.redis for d in ds), Counter())
    kinds = sum((d.redis_kinds for d in ds), Counter())
    messages = sum((d.messages for d in ds), Counter())
    executions = sum(len(d.doc_bytes_after) for d in ds)
    before = sum(sum(d.doc_bytes_before) for d in ds) / executions
    after = sum(sum(d.doc_bytes_after) for d in ds) / executions
    return {
        "steps": config.steps, "flaky_steps": config.flaky, "retries_before": config.fail * config.flaky,
        "events_before": round(sum(sum(d.events_before) for d in ds) / executions),
        "inline_steps": config.inline or "default",
        "executions_per_repetition": config.count(), "attempts_measured": attempts,
        "advance_calls_per_execution": round(sum(d.calls for d in ds) / executions, 2),
        "wall_ms_per_attempt": ms(lambda d: d.wall_s),
        "wall_ms_per_attempt_runs": [stats.rounded(d.per_attempt(d.wall_s) * 1000) for d in ds],
        "cpu_ms_per_attempt": ms(lambda d: d.cpu_s),
        "store_ms_per_attempt": ms(lambda d: d.store_s),
        "engine_redis_ms_per_attempt": ms(lambda d: d.redis_s),
        "send_ms_per_attempt": ms(lambda d: d.send_s),
        "other_ms_per_attempt": ms(lambda d: d.wall_s - d.store_s - d.redis_s - d.send_s),
        "mongodb_commands_per_attempt": round(mongo.total() / attempts, 3),
        "mongodb_commands_max_per_attempt": round(max(d.max_mongo for d in ds), 2),
        "mongodb_commands": per(mongo),
        "mongodb_reads_per_attempt": round(split["reads"] / attempts, 3),
        "mongodb_writes_per_attempt": round(split["writes"] / attempts, 3),
        "mongodb_reads_max_per_attempt": round(max(d.max_reads for d in ds), 2),
        "mongodb_writes_max_per_attempt": round(max(d.max_writes for d in ds), 2),
        "mongodb_reads_by_collection": per(sum((d.reads_by_collection for d in ds), Counter())),
        "mongodb_reads_after_write": sum(d.reads_after_write for d in ds),
        "mongodb_bytes_written_per_attempt": round(sum(d.mongo_bytes for d in ds) / attempts),
        "redis_commands_per_attempt": round(redis.total() / attempts, 3),
        "redis_commands_max_per_attempt": round(max(d.max_redis for d in ds), 2),
        "redis_commands": per(redis),
        "redis_kinds": per(kinds),
        "redis_lock_release_max_per_attempt": round(max(d.max_lock_release for d in ds), 2),
        "messages_per_attempt": round(messages.total() / attempts, 3),
        "messages": per(messages),
        "start": {"mongodb_commands": {k: round(v / executions, 2) for k, v in
                                       sum((d.start_mongo for d in ds), Counter()).items()},
                  "mongodb_bytes_written": round(sum(d.start_bytes for d in ds) / executions)},
        "document_bytes_before": round(before),
        "document_bytes_after": round(after),
        "document_bytes_per_attempt": round((after - before) / config.steps),
    }
