"""Per-step cost with a long history: an execution whose history holds 10,000 events against a fresh one.

The long history is made once per bench run through the real engine: a flaky step that fails every
attempt, its budget of 100 attempts spent again and again under operator retries
(``operations.retry``, then ``runner.advance`` an attempt a call), until the history holds the
events asked for; a last retry gives the step an input with which it succeeds, so that the no-op
steps after it are next. The fresh one is the same workflow started anew, its first step succeeding
at once. Both are kept in memory as templates (the document, and the chunks of history the engine
moved to ``execution_history``) and the store is emptied; each measured execution is a copy of
its template under a new id (the id appears nowhere else in either), so the store holds only the
execution being driven, and building 10,000 events is paid once, not per execution. The measured
no-op steps are driven as ``bench/cost.py`` drives them, timed and counted per call; enough of them
(the events of 100 steps and more) that the engine moves one chunk of the long history out while
they run, as it does every ``HISTORY_CHUNK`` events: the per-step figure carries that cost, spread.
Copies of the two templates are driven in turn (fresh, long, fresh, long ...), so that both see the
same load; the ratios are the medians of the per-repetition ratios, of the wall time per attempt
and of the driving thread's CPU time per attempt (which the other processes of a busy machine do not
blur).
"""
from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import bson

from bench import cost, handlers, meters, report, stats

#: No-op steps measured per execution, after the one that holds the history.
STEPS = 100
#: Copies of each template driven per repetition and way of running (a message per step or not).
COPIES = 4


@dataclass(frozen=True)
class Template:
    """A stored execution to copy: its document and the chunks of its history moved out of it."""

    doc: dict[str, Any]
    chunks: list[dict[str, Any]]

    def copy(self) -> str:
        """Store a copy of the execution under a new id; return the id."""
        from executions import store, transitions

        execution_id = transitions.new_id()
        # The store copies what it is given (nothing it holds is shared with the template).
        store.collection().insert_one({**self.doc, "_id": execution_id})
        if self.chunks:
            store.history().insert_many([{**chunk, "_id": f"{execution_id}:{chunk['first_seq']}",
                                          "execution_id": execution_id} for chunk in self.chunks])
        return execution_id


def capture(execution_id: str) -> Template:
    """Keep the stored execution (and its history) as a template; remove it from the store."""
    from detflow_site import services
    from executions import store

    doc = store.collection().find_one({"_id": execution_id})
    assert doc is not None
    chunks = list(store.history().find({"execution_id": execution_id}))
    rest = {k: v for k, v in doc.items() if k != "_id"}
    elsewhere = [c for c in chunks
                 if execution_id in json.dumps({**c, "_id": "", "execution_id": ""}, default=str)]
    if execution_id in json.dumps(rest, default=str) or elsewhere:
        raise RuntimeError(f"execution {execution_id} names its id beyond _id: a copy would not be "
                           "a new execution")
    store.collection().delete_one({"_id": execution_id})
    store.history().delete_many({"execution_id": execution_id})
    services.redis_client().flushdb()
    return Template(doc, chunks)


def fresh(name: str, run: str) -> Template:
    """Start the workflow and run its first step, which succeeds at once."""
    from executions import operations, runner

    execution_id = operations.start(name, {"run": run, "fail": 0})[0]["_id"]
    with cost.inline_steps(1):
        runner.advance(execution_id)
    return capture(execution_id)


def long(name: str, run: str, events: int) -> tuple[Template, dict[str, Any]]:
    """Run the workflow's first step through failures and operator retries until the history holds
    ``events`` events, then let it succeed; return the template and how it was made."""
    from executions import operations, runner, store

    started = time.monotonic()
    execution_id = operations.start(name, {"run": run, "fail": 10**9})[0]["_id"]
    retries = 0
    with cost.inline_steps(1):
        while True:
            doc = store.load_working(execution_id)
            assert doc is not None
            if doc["status"] == "FAILED":
                # The last retry adds three events: itself, the claim and the success.
                last = doc["event_seq"] + 3 >= events
                retries += 1
                if last:  # with an input that lets it succeed
                    operations.retry(execution_id, by="bench", reason="a long history",
                                     input={"run": run, "fail": 0})
                    runner.advance(execution_id)
                    break
                operations.retry(execution_id, by="bench", reason="a long history")
            runner.advance(execution_id)
    doc = store.load_working(execution_id)
    assert doc is not None
    assert doc["steps"][0]["status"] == "SUCCEEDED", doc["steps"][0]
    made = {"operator_retries": retries, "attempts": doc["steps"][0]["attempt"],
            "events": doc["event_seq"], "seconds": round(time.monotonic() - started, 1)}
    return capture(execution_id), made


def drive(result: cost.Drive, template: Template,
          meter: tuple[meters.StoreMeter, meters.RedisMeter, meters.MessageMeter]) -> None:
    """Copy the template and drive the copy's measured steps to the end, counted into ``result``."""
    from detflow_site import services
    from executions import store

    config = result.config
    execution_id = template.copy()
    working = store.collection().find_one({"_id": execution_id})
    assert working is not None
    result.doc_bytes_before.append(len(bson.encode(working)))
    result.events_before.append(working["event_seq"])
    cost.timed_steps(execution_id, config, meter, result)
    working = store.collection().find_one({"_id": execution_id})
    assert working is not None
    if working["status"] != "SUCCEEDED":
        raise RuntimeError(f"{config.label}: execution {execution_id} is {working['status']}")
    result.doc_bytes_after.append(len(bson.encode(working)))
    store.collection().delete_many({})
    store.history().delete_many({})
    services.redis_client().flushdb()
    for m in meter:
        m.tally.take()


def measure(repetitions: int, events: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """Make both templates, then drive copies of each, alternating (fresh, long, fresh, long ...)."""
    from bench.throughput import reset
    from executions import store

    reset()
    store.history().delete_many({})
    name = handlers.noop_workflow(STEPS, 1)
    run = secrets.token_hex(6)
    progress(f"history: making an execution of {events:,} events by operator retries")
    templates = {"fresh": fresh(name, run)}
    templates["long"], made = long(name, run, events)
    progress(f"history: {made['events']:,} events in {made['seconds']:g} s "
             f"({made['operator_retries']} operator retries, {made['attempts']:,} attempts)")
    pairs = []
    for mode, inline in (("", None), (", a message each", 1)):
        pairs.append(tuple(cost.Config(label, STEPS, flaky=1, executions=COPIES, inline=inline)
                           for label in (f"fresh{mode}", f"{events:,} events{mode}")))
    drives: dict[str, list[cost.Drive]] = {c.label: [] for pair in pairs for c in pair}
    with meters.all_meters() as meter:
        for rep in range(repetitions):
            line = []
            for pair in pairs:
                now = [cost.Drive(c) for c in pair]
                for _ in range(COPIES):  # one of each in turn: both see the same load
                    for d, template in zip(now, (templates["fresh"], templates["long"]), strict=True):
                        drive(d, template, meter)
                for d in now:
                    drives[d.config.label].append(d)
                    line.append(f"{d.config.label} {d.per_attempt(d.wall_s) * 1000:.2f}")
            progress(f"history rep {rep + 1}/{repetitions}, ms per step attempt: " + ", ".join(line))
    out = {}
    for label, ds in drives.items():
        summary = cost.summarize(ds)
        del summary["retries_before"]  # the history was made by operator retries, not by a count
        out[label] = summary
    growth = {}
    for (a, b), key in zip(pairs, ("long / fresh", "long / fresh, a message each"), strict=True):
        growth[key] = report.growth_ratios(out, b.label, a.label)
        # CPU time of the driving thread: what other processes on the machine do not blur
        growth[key]["cpu"] = stats.rounded(stats.paired_ratio(
            [d.per_attempt(d.cpu_s) for d in drives[b.label]],
            [d.per_attempt(d.cpu_s) for d in drives[a.label]]))
    return {
        "events": events, "steps": STEPS, "repetitions": repetitions, "copies": COPIES,
        "made": made, "configs": out, "growth": growth,
        "method": " ".join(f"{__doc__} {cost.__doc__}".split()),
        "document_bytes": "the BSON size of the stored document alone (the history moved out of it "
                          "not counted); events_before counts the whole history",
    }
