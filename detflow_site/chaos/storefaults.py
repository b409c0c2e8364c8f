"""Store faults at the one seam where detflow meets MongoDB: the executions collection and the
history its events move out to (``execution_history``).

Installed by the tests and by ``manage.py chaos --faults store`` only (the production path carries
no test call): :func:`installed` puts a :class:`FaultyCollection` in the place mongoengine caches the
executions collection and another where ``store.history`` looks for a stand-in, and every reader and
writer then goes through them. A rule strikes one collection (the executions by default) or, like
an election, both. It fails like a replica
set: an error before a write is applied (nothing changed), an error after it was applied (an
ambiguous write: the client cannot tell), a burst of ``NotWritablePrimary`` while an election
lasts, and latency (fixed, or a spike now and then). Errors are pymongo's own types and codes.
"""
from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pymongo.errors import AutoReconnect, NotPrimaryError, WriteError

from executions import store
from executions.models import Execution

#: Collection methods that write, and those that read.
WRITES = frozenset({"update_one", "update_many", "insert_one", "insert_many", "replace_one",
                    "find_one_and_update", "find_one_and_replace", "delete_one", "delete_many",
                    "bulk_write"})
READS = frozenset({"find_one", "find", "count_documents", "aggregate", "distinct"})
#: The collections behind the seam, by name.
EXECUTIONS = "executions"
HISTORY = store.HISTORY
#: What a server answers a write it refuses for good (``refuse``): the document would be too large.
REFUSED_MESSAGE = "Resulting document after update is larger than 16777216 (injected)"
REFUSED: dict[str, Any] = {"ok": 0, "errmsg": REFUSED_MESSAGE, "code": 17419}
#: What a primary that stepped down answers (pymongo raises ``NotPrimaryError`` for it).
NOT_PRIMARY = {"ok": 0, "errmsg": "not primary", "code": 10107, "codeName": "NotWritablePrimary"}


@dataclass
class Rule:
    """One fault: which calls it strikes and how.

    ``mode``: ``before`` (raise, nothing applied), ``after`` (apply, then raise), ``refuse`` (a
    ``WriteError`` no retry mends, code 17419), ``not_primary``
    (every matching call raises until ``until``), ``latency`` (sleep ``delay_s``, or ``spike_s``
    once in ``spike_every`` calls; ``spiked`` counts the spikes). ``skip``: matching calls let
    through first; ``times``: calls it strikes at most after those (``None``: no limit);
    ``until``: a ``time.monotonic()`` past which it strikes no more (required by ``not_primary``,
    ``0`` for the other modes: no end).
    ``collection``: strike only calls on that collection (``EXECUTIONS`` or ``HISTORY``), ``None``
    both. ``execution_id``: strike only calls whose filter (or inserted document) names that
    execution: its ``_id`` in the executions, its ``execution_id`` in the history; ``fenced``:
    ``True`` only version-matched writes (the engine's state changes), ``False`` only the others
    (lease renewals, the history's inserts), ``None`` both.
    """

    mode: str
    ops: frozenset[str] = WRITES
    times: int | None = 1
    skip: int = 0
    collection: str | None = EXECUTIONS
    execution_id: str | None = None
    fenced: bool | None = None
    until: float = 0.0
    delay_s: float = 0.0
    spike_s: float = 0.0
    spike_every: int = 0
    struck: int = 0
    spiked: int = 0

    def matches(self, collection: str, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        if op not in self.ops or (self.times is not None and self.struck >= self.times):
            return False
        if self.collection is not None and self.collection != collection:
            return False
        if (self.until or self.mode == "not_primary") and time.monotonic() >= self.until:
            return False
        query = args[0] if args else kwargs.get("filter", kwargs.get("document"))
        if self.execution_id is not None and (
            not isinstance(query, dict)
            or query.get("execution_id" if collection == HISTORY else "_id") != self.execution_id
        ):
            return False
        return self.fenced is None or self.fenced == (isinstance(query, dict) and "version" in query)


@dataclass
class StoreFaults:
    """The faults in force, and what they did (``injected`` counts by mode)."""

    rules: list[Rule] = field(default_factory=list)
    injected: dict[str, int] = field(default_factory=dict)
    seed: int = 0
    _guard: threading.Lock = field(default_factory=threading.Lock)

    def add(self, rule: Rule) -> Rule:
        with self._guard:
            self.rules.append(rule)
        return rule

    def election(self, seconds: float, ops: frozenset[str] = WRITES | READS) -> Rule:
        """Answer ``NotWritablePrimary`` to every call on either collection for ``seconds`` (a
        replica set electing)."""
        return self.add(Rule("not_primary", ops=ops, times=None, collection=None,
                             until=time.monotonic() + seconds))

    def spike(self, rule: Rule) -> None:
        """Count a spike of a latency rule."""
        with self._guard:
            rule.spiked += 1
            self.injected["spike"] = self.injected.get("spike", 0) + 1

    def clear(self) -> None:
        with self._guard:
            self.rules.clear()

    def strike(self, collection: str, op: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[Rule]:
        with self._guard:
            hits = []
            for rule in self.rules:
                if not rule.matches(collection, op, args, kwargs):
                    continue
                if rule.skip > 0:
                    rule.skip -= 1
                    continue
                rule.struck += 1
                self.injected[rule.mode] = self.injected.get(rule.mode, 0) + 1
                hits.append(rule)
        return hits


class FaultyCollection:
    """A pymongo (or mongomock) collection that fails as :class:`StoreFaults` says (``name``: which
    collection it stands for, as the rules name it)."""

    def __init__(self, real: Any, faults: StoreFaults, name: str = EXECUTIONS) -> None:
        self._real = real
        self._faults = faults
        self._name = name
        self._random = random.Random(faults.seed)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name not in WRITES | READS or not callable(attribute):
            return attribute
        return self._wrapped(name, attribute)

    def _wrapped(self, op: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            hits = self._faults.strike(self._name, op, args, kwargs)
            after = False
            for rule in hits:
                if rule.mode == "latency":
                    spike = rule.spike_every and self._random.randrange(rule.spike_every) == 0
                    if spike:
                        self._faults.spike(rule)
                    time.sleep(rule.spike_s if spike else rule.delay_s)
                elif rule.mode == "before":
                    raise AutoReconnect(f"connection closed before {op} was sent (injected)")
                elif rule.mode == "not_primary":
                    raise NotPrimaryError("not primary (injected election)", NOT_PRIMARY)
                elif rule.mode == "refuse":
                    raise WriteError(REFUSED_MESSAGE, 17419, REFUSED)
                elif rule.mode == "after":
                    after = True
            result = method(*args, **kwargs)
            if after:
                raise AutoReconnect(f"connection closed after {op} was applied (injected)")
            return result

        return call


@contextlib.contextmanager
def installed(faults: StoreFaults | None = None) -> Iterator[StoreFaults]:
    """Route every use of the executions and the history collections through the faults while the
    block runs."""
    faults = faults or StoreFaults()
    real = Execution._get_collection()
    Execution._collection = FaultyCollection(real, faults)  # type: ignore[attr-defined]
    before = store.history_stand_in
    store.history_stand_in = FaultyCollection(store.history(), faults, HISTORY)
    try:
        yield faults
    finally:
        Execution._collection = real  # type: ignore[attr-defined]
        store.history_stand_in = before
