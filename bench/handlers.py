"""The bench's step handlers and workflows: a no-op step, and a step that fails a given number of times.

Every contender's step body is the same: note when it started and ended (for the latency), and do
nothing else (or sleep, for the latency after a step that takes a while). The notes are appended to
a list, which is safe across threads in CPython.
"""
from __future__ import annotations

import threading
import time

from workflows import definitions, registry
from workflows.context import StepContext
from workflows.errors import RetryableError

#: ``(run, chain, index, started, ended)`` per step body run, in ``time.perf_counter()`` seconds.
MARKS: list[tuple[str, str, int, float, float]] = []


class Finish:
    """Counts finished chains of one run and wakes the waiter when all are done."""

    def __init__(self) -> None:
        self.run = ""
        self.expected = 0
        self.done = 0
        self.event = threading.Event()
        self._guard = threading.Lock()

    def arm(self, run: str, expected: int) -> None:
        with self._guard:
            self.run, self.expected, self.done = run, expected, 0
            self.event.clear()

    def one(self, run: str) -> None:
        with self._guard:
            if run != self.run:
                return
            self.done += 1
            if self.done >= self.expected:
                self.event.set()

    def wait(self, timeout_s: float) -> bool:
        return self.event.wait(timeout_s)


FINISH = Finish()


def body(run: str, chain: str, index: int, sleep_s: float = 0.0) -> None:
    """The work of one step in every contender: note the time (and sleep ``sleep_s``), nothing else."""
    started = time.perf_counter()
    if sleep_s:
        time.sleep(sleep_s)
    MARKS.append((run, chain, index, started, time.perf_counter()))


@registry.step("bench.noop")
def noop(ctx: StepContext) -> None:
    """Do nothing, or sleep ``input["sleep"]`` seconds (the bench's step).

    With ``input["count_last"]`` (the index of the last step), the last step counts its chain in
    Redis (``bench:last-step:<run>``): the worker runs in another process than the bench's, which
    reads the count there rather than polling the store (``bench/wire.py``)."""
    index = int(ctx.step[1:])
    body(ctx.input["run"], ctx.execution_id, index, float(ctx.input.get("sleep", 0)))
    if ctx.input.get("count_last") == index:
        from detflow_site import services

        services.redis_client().incr(f"bench:last-step:{ctx.input['run']}")


@registry.step("bench.flaky")
def flaky(ctx: StepContext) -> None:
    """Fail until attempt ``input["fail"] + 1`` of the step, then do nothing (builds long histories)."""
    if ctx.attempt <= int(ctx.input.get("fail", 0)):
        raise RetryableError(f"planned failure {ctx.attempt}")
    body(ctx.input["run"], ctx.execution_id, int(ctx.step[1:]))


def noop_workflow(steps: int, flaky_steps: int = 0) -> str:
    """Register (once) a workflow of ``flaky_steps`` flaky steps then ``steps`` no-op steps."""
    name = f"bench-{flaky_steps}f{steps}" if flaky_steps else f"bench-{steps}"
    retry = {"max_attempts": 100, "initial_delay_s": 0, "max_delay_s": 1, "jitter": 0}
    spec = [{"name": f"s{i}", "handler": "bench.flaky", "retry": retry} for i in range(flaky_steps)]
    spec += [{"name": f"s{flaky_steps + i}", "handler": "bench.noop"} for i in range(steps)]
    definitions.register({"name": name, "description": "bench", "steps": spec})
    return name


def marks_of(run: str) -> list[tuple[str, int, float, float]]:
    """Return the marks of one run, as ``(chain, index, started, ended)``."""
    return [(c, i, s, e) for r, c, i, s, e in MARKS if r == run]
