"""The runner's test seam: the boundaries of a step's life, watched only when a test or chaos asks.

The runner makes no test call. Each boundary of a step's life (``executions.faults.POINTS``) is a
call the runner already makes to one of its collaborators, and :func:`install` wraps those names in
``executions.runner`` (as ``detflow_site.chaos.storefaults`` wraps the store's collections), so that a
watcher is called exactly where the runner's code reaches each boundary:

========== ==========================================================================
received   the execution's lock is made (``ExecutionLock(...)``), the message's first act
locked     ``ExecutionLock.acquire`` returned ``True``
loaded     the engine is about to ``decide`` on a snapshot (read, or returned by a write)
claimed    the ``Attempt`` is made, right after the claim's write
handled    ``Attempt.record`` is called: the handler returned or raised, nothing recorded
recorded   ``Attempt.record`` returned
released   ``_hand_on`` is called, right after the lock's release
sent       ``_hand_on`` returned: the next message, if any, is sent
========== ==========================================================================

A watcher that raises kills the worker there: the exception escapes the worker, and the lock is
*not* released on its way out (a dead worker releases nothing), so the lock and the lease are left
behind and the message is gone. ``executions.faults`` installs the seam when a test or chaos arms
a crash; production never installs it, and then the runner runs its own names, untouched.
"""
from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from executions import runner
from executions.attempt import Attempt, Then
from executions.locks import ExecutionLock
from executions.store import Snapshot

#: ``watch(point, execution_id)``: called at each boundary; raises to crash the worker there.
Watch = Callable[[str, "str | None"], None]

#: The names the seam wraps in ``executions.runner``; a rename there fails :func:`install` loudly.
WRAPPED = ("ExecutionLock", "decide", "Attempt", "_hand_on")

_watch: Watch | None = None
_guard = threading.Lock()
#: Per worker thread: whether the watcher crashed it in the life it is in (its lock stays held).
_life = threading.local()


def install(watch: Watch) -> None:
    """Route the runner's boundaries through ``watch`` from now on (idempotent: the last one wins)."""
    global _watch
    with _guard:
        first = _watch is None
        _watch = watch
        if not first:
            return
        missing = [name for name in WRAPPED if not hasattr(runner, name)]
        if missing:
            raise RuntimeError(f"executions.runner no longer has {missing}: move the seam with it")
        decide = runner.decide
        hand_on = runner._hand_on

        def watched_decide(state: Any, now: int) -> Any:
            _pass("loaded", state.id)
            return decide(state, now)

        def watched_hand_on(execution_id: str, end: Any, poked: bool) -> None:
            _pass("released", execution_id)
            hand_on(execution_id, end, poked)
            _pass("sent", execution_id)

        setattr(runner, "ExecutionLock", _WatchedLock)  # noqa: B010 (mypy: a class is not assignable)
        setattr(runner, "Attempt", _WatchedAttempt)  # noqa: B010
        runner.decide = watched_decide
        runner._hand_on = watched_hand_on


def _pass(point: str, execution_id: str | None) -> None:
    watch = _watch
    if watch is None:
        return
    try:
        watch(point, execution_id)
    except BaseException:
        _life.dead = True
        raise


class _WatchedLock(ExecutionLock):
    def __init__(self, client: Any, execution_id: str, ttl_ms: int) -> None:
        _life.dead = False  # a new message: a new life
        self.execution_id = execution_id
        super().__init__(client, execution_id, ttl_ms)
        _pass("received", execution_id)

    def acquire(self) -> bool:
        taken = super().acquire()
        if taken:
            _pass("locked", self.execution_id)
        return taken

    def release(self) -> bool:
        if getattr(_life, "dead", False):
            return False  # the worker died holding the lock: it stays until it expires
        return super().release()


class _WatchedAttempt(Attempt):
    def __init__(self, snap: Snapshot, index: int, worker: str) -> None:
        _pass("claimed", snap.state.id)
        super().__init__(snap, index, worker)

    def record(self, then: Then | None = None) -> Snapshot | None:
        _pass("handled", self.snap.state.id)
        recorded = super().record(then)
        _pass("recorded", self.snap.state.id)
        return recorded
