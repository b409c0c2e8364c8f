"""Fault-injection fixtures: the recovery sweeper, a spy on crash points, the handlers' gates, and
an audit of every execution each test leaves behind."""
from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.reliability import handlers  # registers the handlers these tests steer


@pytest.fixture
def audited() -> Iterator[None]:
    """After the test (set up before its worker, so checked after the worker stopped), every stored
    execution keeps the invariants and replays through the engine without divergence."""
    yield
    from executions import store
    from tests.reliability.invariants import assert_invariants

    assert_invariants(*map(store.with_history, store.collection().find({})))


class SweeperRecord:
    """The reports of every sweep a running :class:`executions.sweeper.Sweeper` made."""

    def __init__(self) -> None:
        self.reports: list[Any] = []
        self._guard = threading.Lock()

    def add(self, report: Any) -> None:
        with self._guard:
            self.reports.append(report)

    def resent(self) -> list[str]:
        """Executions the sweeper sent a message for (re-sends and lost attempts alike)."""
        with self._guard:
            return [i for report in self.reports for i in report.resent]

    def lost(self) -> list[str]:
        """Executions whose running attempt the sweeper recorded lost."""
        with self._guard:
            return [i for report in self.reports for i in report.lost]


@pytest.fixture
def sweeper(worker: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[SweeperRecord]:
    """Run the real recovery sweeper beside the worker (every SWEEP_INTERVAL_S), recording its sweeps."""
    from executions import sweeper as module

    record = SweeperRecord()
    real_sweep = module.sweep

    def recorded_sweep(*args: Any, **kwargs: Any) -> Any:
        report = real_sweep(*args, **kwargs)
        record.add(report)
        return report

    monkeypatch.setattr(module, "sweep", recorded_sweep)
    thread = module.Sweeper()
    thread.start()
    yield record
    thread.stop()


@pytest.fixture
def crashes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Return the list of points where a simulated crash was raised, as it grows."""
    from executions import faults

    raised: list[str] = []
    real_hit = faults.hit

    def spied_hit(point: str, execution_id: str | None = None) -> None:
        try:
            real_hit(point, execution_id)
        except faults.SimulatedCrash:
            raised.append(point)
            raise

    monkeypatch.setattr(faults, "hit", spied_hit)
    return raised


@pytest.fixture
def gates() -> Iterator[handlers.Gates]:
    """The gates ``test.gate`` waits at; all opened after the test so that no thread is left blocked."""
    handlers.GATES.reset()
    yield handlers.GATES
    handlers.GATES.reset()
