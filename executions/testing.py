"""A test kit for handler authors: run a workflow to its end in the test's own process, with the
real engine, no Redis, no worker threads and a clock the test controls.

Usage, in a pytest-django test with detflow's settings (the embedded store, or the MongoDB the
settings name)::

    from executions.testing import TestKit

    def test_billing_charges_once():
        with TestKit() as kit:
            run = kit.run("billing", {"order_id": 42})           # a registered name, or a definition
            assert run.status == "SUCCEEDED"
            assert run.steps == {"validate": "SUCCEEDED", "charge": "SUCCEEDED", "notify": "SUCCEEDED"}
            assert run.output("charge") == {"receipt": "r-42"}

What runs is detflow's own code: ``definitions.register`` and ``operations.start``; the runner's
loop (``runner._run``: ``decide``, the claim, the ``Attempt`` with the real handler registry and
``StepContext``, the fenced outcome write of ``transitions.commit``) and its hand-on
(``runner._hand_on``: the next message, the end announced); the sweeper's recovery of a lost
attempt (``sweeper._recover``); ``operations.signal``. Nothing of it is copied here. What the
kit replaces while it is open (a ``with`` block), and puts back when it closes:

- the clock: every ``now_ms`` the engine's modules read is the kit's clock (``kit.now``). It stands
  still while a handler runs; when the engine's next decision is to wait (a retry's backoff, a
  sleep, a lease, a wait's timeout when asked), the kit moves it to the due time at once instead of
  sleeping. ``kit.advance(seconds)`` moves it by hand. (A handler's own ``time.time()`` is real.)
- Redis: the execution's lock is an in-process object (the kit runs one attempt at a time, in the
  test's thread); a step's ``max_concurrency`` never holds it back; the messages the engine sends
  (``dispatch.send``) are recorded in ``kit.sent``, not sent; the ``execution_finished`` signal goes
  to ``kit.execution_finished`` (recorded in ``kit.finished``), not to the project's receivers (the
  post-mortem's would queue a message). No Redis connection is made.
- workers: none. Every attempt runs in the test's thread; the only other threads are the ticker and
  renewal pool of the attempt's watchdog (its lease renewals, its ``timeout_s``), as in a worker.

``kit.run`` drives the execution until it ends, or until it waits for a signal (``run.waiting``
names the step; ``kit.signal(run.id, name, payload)`` sends it and drives on, ``kit.advance`` lets
its timeout pass, ``timeouts=True`` lets every timeout pass at once), or an operator's pause holds
it. After an operator action of your own (``operations.retry``, ``skip``, ...), ``kit.drive(id)``
goes on.

A crash between a handler and its outcome: ``kit.run(..., crash_after="charge")`` runs the first
attempt of step ``charge`` and then "kills the worker" before the outcome is recorded (the crash
point ``handled`` of ``executions.faults``): the step stays RUNNING under its lease. The kit's clock
then passes the lease, the sweeper records the attempt lost, and the step's next attempt runs the
handler again, as after a real crash: the test checks that the handler is idempotent (it ran twice,
its effect happened once, the step SUCCEEDED once). A lost attempt counts against the retry policy:
with ``max_attempts: 1`` the step fails.

After every drive the kit replays the execution's history through ``audit.verify``: a history that
does not replay raises :class:`HistoryDoesNotReplay` (an ``AssertionError``).

The kit does not empty the store: the test's fixtures do (detflow's own tests empty it before each
test). Not covered: several executions racing for a concurrency slot, lease renewals by a handler's
heartbeat over time (a heartbeat renews at the kit's time), a handler's ``timeout_s`` (real time).
"""
from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from django.dispatch import Signal

from detflow_site import conf, times
from executions import audit, dispatch, faults, operations, runner, signals, store, sweeper
from executions.engine import Claim, Decision, Idle, RecoverLost, Wait, decide
from executions.locks import ExecutionLock
from executions.store import Snapshot
from workflows import definitions

#: The packages whose modules read the wall clock through ``now_ms``: the kit's clock replaces it.
CLOCK_PACKAGES = ("executions", "workflows", "insights", "detflow_site")
#: The most decisions one drive carries out before it gives up (a workflow that never settles).
MAX_TURNS = 10_000
#: The worker name the kit's claims record.
WORKER = "testkit"


class HistoryDoesNotReplay(AssertionError):
    """The stored history of an execution the kit ran does not replay through the engine."""


class _Clock:
    """Integer milliseconds since the epoch, moved only by the kit."""

    def __init__(self, start_ms: int) -> None:
        self.ms = start_ms

    def __call__(self) -> int:
        return self.ms


class _InProcessLock(ExecutionLock):
    """The execution's lock when one thread runs everything: always taken, never contended.

    ``fresh`` says no, so that each run of the runner's loop claims one step (a message per step,
    as with ``DETFLOW_INLINE_STEPS=0``): the kit knows which attempt it is about to run."""

    def __init__(self, execution_id: str, ttl_ms: int) -> None:  # no Redis client
        self.key = f"detflow:lock:{execution_id}"
        self.ttl_ms = ttl_ms
        self.first_poke = False

    def acquire(self) -> bool:
        return True

    def renew(self) -> bool:
        return True

    def fresh(self) -> bool:
        return False

    def release(self) -> bool:
        return False

    def holder_ttl_ms(self) -> int:
        return -2


@dataclass(frozen=True)
class Sent:
    """A message the engine sent (recorded by the kit, not sent): advance ``execution_id`` after
    ``delay_ms``, at the kit's time ``at_ms``."""

    execution_id: str
    delay_ms: int
    at_ms: int


@dataclass
class Run:
    """An execution as the kit left it: its stored document (whole history) and why it stopped."""

    doc: dict[str, Any]
    #: The engine's last decision: ``Idle`` (ended, paused, ...) or ``Wait`` (for a signal).
    decision: Decision
    #: Steps whose first attempt the kit crashed between the handler and its outcome.
    crashed: list[str] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.doc["_id"])

    @property
    def status(self) -> str:
        """The execution's status: ``SUCCEEDED``, ``FAILED``, ``COMPENSATED``, ``RUNNING``, ..."""
        return str(self.doc["status"])

    @property
    def steps(self) -> dict[str, str]:
        """Each step's status, by name, in the definition's order."""
        return {s["name"]: s["status"] for s in self.doc["steps"]}

    @property
    def compensations(self) -> dict[str, str]:
        """Each compensation's status, by the name of the step it undoes, in the order they run."""
        return {c["name"]: c["status"] for c in self.doc.get("compensations") or []}

    @property
    def events(self) -> list[str]:
        """The types of the execution's events, oldest first (``history`` has the events)."""
        return [e["type"] for e in self.history]

    @property
    def history(self) -> list[dict[str, Any]]:
        return list(self.doc.get("events") or [])

    @property
    def waiting(self) -> str | None:
        """The step that waits for a signal, when that is why the drive stopped."""
        if isinstance(self.decision, Wait) and self.decision.reason == "signal":
            return next((s["name"] for s in self.doc["steps"] if s["status"] == "WAITING"), None)
        return None

    def step(self, name: str) -> dict[str, Any]:
        """The stored step ``name`` (its status, attempt, attempt records, error, output)."""
        for stored in self.doc["steps"]:
            if stored["name"] == name:
                return dict(stored)
        raise KeyError(f"execution {self.id} has no step {name!r}; its steps: {', '.join(self.steps)}")

    def output(self, name: str) -> Any:
        """The output of step ``name``, parsed (``KeyError`` if it has none)."""
        stored = self.step(name)
        if "output_json" not in stored:
            raise KeyError(f"step {name!r} has no output: it is {stored['status']}")
        return json.loads(stored["output_json"])

    def error(self, name: str) -> dict[str, Any] | None:
        """The error step ``name`` failed with (``{"type", "message", ...}``), if it failed."""
        return self.step(name).get("error")

    def attempts(self, name: str) -> list[dict[str, Any]]:
        """The attempt records of step ``name`` (``outcome``: succeeded, failed, lost, ...)."""
        return list(self.step(name).get("attempts") or [])


class TestKit:
    """Runs executions in the test's process with the real engine and a clock of its own (see the
    module's docstring). Use it as a context manager; it puts back what it replaced on exit."""

    __test__ = False  # not a pytest test class, whatever its name

    def __init__(self, start: dt.datetime | None = None) -> None:
        started = start if start is not None else dt.datetime.now(dt.UTC)
        self.start_ms = store.to_ms(started) or 0
        self._clock = _Clock(self.start_ms)
        #: The messages the engine sent while the kit was open.
        self.sent: list[Sent] = []
        #: ``(execution id, status)`` of each ``execution_finished`` signal the engine sent.
        self.finished: list[tuple[str, str]] = []
        #: Receives ``execution_finished`` while the kit is open (connect a receiver to test it).
        self.execution_finished = Signal()
        self._saved: list[tuple[Any, str, Any]] = []
        self._started: list[str] = []
        #: Per execution: the steps whose first attempt is to crash, and those that did.
        self._crash: dict[str, set[str]] = {}
        self._crashed: dict[str, list[str]] = {}

    # The clock.

    @property
    def now_ms(self) -> int:
        return self._clock.ms

    @property
    def now(self) -> dt.datetime:
        """The kit's time (UTC)."""
        return dt.datetime.fromtimestamp(self._clock.ms / 1000, dt.UTC)

    @property
    def elapsed_s(self) -> float:
        """Seconds the kit's clock moved since it started."""
        return (self._clock.ms - self.start_ms) / 1000

    def advance(self, seconds: float) -> None:
        """Move the clock on by ``seconds``, then drive every execution the kit started that has
        not ended (what fell due meanwhile happens: a wait's timeout, a retry)."""
        if seconds < 0:
            raise ValueError("the kit's clock does not go back")
        self._clock.ms += round(seconds * 1000)
        for execution_id in self._started:
            self.drive(execution_id)

    # Running.

    def run(self, workflow: str | Mapping[str, Any], input: Any = None, *,
            crash_after: str | Iterable[str] = (), timeouts: bool = False,
            version: int | None = None, idempotency_key: str | None = None) -> Run:
        """Start an execution of ``workflow`` (a registered name, or a definition as ``POST
        workflows/`` takes it, registered first) with ``input``, and drive it (see :meth:`drive`).

        ``crash_after``: the step name(s) whose first attempt crashes between its handler and its
        outcome. ``timeouts``: let a wait's timeout pass at once instead of stopping at the wait."""
        self._require_open()
        if isinstance(workflow, str):
            stored = definitions.get(workflow, version)
        else:
            stored, _ = definitions.register(dict(workflow))
        doc, _ = operations.start(stored.name, input, idempotency_key=idempotency_key,
                                  definition=stored)
        self._started.append(doc["_id"])
        return self.drive(doc["_id"], crash_after=crash_after, timeouts=timeouts)

    def signal(self, execution_id: str, name: str, payload: Any = None, *, key: str | None = None,
               by: str = "test", reason: str = "", timeouts: bool = False) -> Run:
        """Send the signal ``name`` (``operations.signal``), then drive the execution on."""
        self._require_open()
        operations.signal(execution_id, name, payload, by=by, reason=reason, idempotency_key=key)
        return self.drive(execution_id, timeouts=timeouts)

    def drive(self, execution_id: str, *, crash_after: str | Iterable[str] = (),
              timeouts: bool = False) -> Run:
        """Carry out the engine's decisions for one execution until it ends or waits for what only
        the test can give (a signal, an operator), moving the clock to each due time; then check
        that its history replays."""
        self._require_open()
        crash = self._crash.setdefault(execution_id, set())
        crash.update({crash_after} if isinstance(crash_after, str) else crash_after)
        crashed = self._crashed.setdefault(execution_id, [])
        lease_ms = round(conf.get().LEASE_S * 1000)
        lock = _InProcessLock(execution_id, lease_ms)
        for _ in range(MAX_TURNS):
            doc = store.load_working(execution_id)
            if doc is None:
                raise LookupError(f"execution {execution_id} is not stored")
            snap = Snapshot.of(doc)
            now = self._clock.ms
            decision = decide(snap.state, now)
            if isinstance(decision, Idle):
                break
            if isinstance(decision, Wait):
                if (decision.reason == "signal" and not timeouts) or decision.reason == "deadline":
                    break  # for the test to signal, or to advance the clock (a paused execution)
                self._clock.ms = max(self._clock.ms, decision.until)
                continue
            if isinstance(decision, RecoverLost):
                # What the sweeper does with an execution whose attempt outlived its lease.
                sweeper._recover(doc, now, 0, sweeper.SweepReport(), set(), True)
                continue
            target = None
            if isinstance(decision, Claim) and not snap.state.is_compensation(decision.step):
                name = snap.state.steps[decision.step].name
                if name in crash and name not in crashed:
                    target = name
                    faults.arm("handled", execution_id=execution_id)
            try:
                end = runner._run(snap, WORKER, lock, lease_ms)
                runner._hand_on(execution_id, end, False)  # the messages it sends are recorded
            except faults.SimulatedCrash:
                if target is None:
                    raise
                crashed.append(target)
            finally:
                if target is not None and target not in crashed:
                    _disarm_handled(execution_id)
        else:
            raise RuntimeError(f"execution {execution_id} did not settle in {MAX_TURNS} decisions")
        full = store.load(execution_id)
        assert full is not None
        problems = [str(d) for d in audit.verify(full)]
        if problems:
            raise HistoryDoesNotReplay(f"the history of execution {execution_id} does not replay:\n"
                                       + "\n".join(problems))
        return Run(full, decision, list(crashed))

    # Opening and closing.

    def __enter__(self) -> TestKit:
        if self._saved:
            raise RuntimeError("this TestKit is already open")
        # The crash points' seam, before the kit wraps the runner's ``Attempt`` (it stays).
        faults.install_seam()
        real = times.now_ms
        for module in list(sys.modules.values()):
            name = getattr(module, "__name__", "")
            if name.split(".")[0] in CLOCK_PACKAGES and getattr(module, "now_ms", None) is real:
                self._replace(module, "now_ms", self._clock)
        self._replace(dispatch, "send", self._send)
        self._replace(signals, "execution_finished", self.execution_finished)
        self.execution_finished.connect(self._on_finished, weak=False)
        self._replace(runner, "step_slot", _no_slot)
        self._replace(runner, "Attempt", _timed_attempt(runner.Attempt, self._clock))
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Put back everything the kit replaced."""
        while self._saved:
            target, name, value = self._saved.pop()
            setattr(target, name, value)
        for module in list(sys.modules.values()):  # imported while the kit was open
            if getattr(module, "now_ms", None) is self._clock:
                setattr(module, "now_ms", times.now_ms)  # noqa: B010 (any module)

    def _replace(self, target: Any, name: str, value: Any) -> None:
        self._saved.append((target, name, getattr(target, name)))
        setattr(target, name, value)

    def _require_open(self) -> None:
        if not self._saved:
            raise RuntimeError("open the TestKit first: `with TestKit() as kit:`")

    def _send(self, execution_id: str, delay_ms: int = 0) -> bool:
        self.sent.append(Sent(execution_id, delay_ms, self._clock.ms))
        return True

    def _on_finished(self, sender: Any, execution_id: str, status: str, **_: Any) -> None:
        self.finished.append((execution_id, status))


def _no_slot(snap: Snapshot, index: int, lease_ms: int) -> None:
    """No concurrency slot: the kit runs one attempt at a time."""
    return None


def _timed_attempt(base: type[runner.Attempt], clock: _Clock) -> type[runner.Attempt]:
    """Return ``base`` (the runner's ``Attempt``) whose start is read from the kit's clock (the
    dataclass's default took the wall clock's function when it was defined)."""

    class KitAttempt(base):  # type: ignore[valid-type,misc]
        def __init__(self, snap: Snapshot, index: int, worker: str) -> None:
            super().__init__(snap, index, worker)
            self.started_ms = clock()

    return KitAttempt


def _disarm_handled(execution_id: str) -> None:
    """Take back a crash armed for an attempt that did not reach its outcome's write."""
    with faults._guard:
        faults._armed.pop(("handled", execution_id), None)
