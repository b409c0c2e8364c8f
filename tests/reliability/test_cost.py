"""Cost per step attempt on the happy path, counted (not timed): the budget is 3 MongoDB commands
and 6 Redis commands of the engine's own client when every step is a message of its own; steps run
back to back under one message share the read and the lock. The broker's commands are not counted
(its messages are counted apart, as messages).

MongoDB commands are counted at mongomock's collection methods when the store is embedded, or by a
``pymongo.monitoring.CommandListener`` on a client reconnected with it when ``DETFLOW_MONGODB_URL``
is set. Redis commands are counted at ``execute_command`` of the client ``services.redis_client()``
returns, which the lock and the heartbeat use; the Dramatiq broker has a client of its own.

Commands on the executions collection are counted by their method (``find_one``); those on another
collection are named with it (``workflow_controls.find``: the workflow pauses, which a process
reads at most once a ``controls.REFRESH_S``, not once a step).
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.meters import HOUSEKEEPING, MONGOMOCK_COMMANDS
from detflow_site import services
from executions import controls, dispatch, operations, runner, store
from executions.locks import ExecutionLock
from tests.conftest import mongo_commands_heard
from tests.handlers import LEDGER
from tests.reliability.invariants import assert_each_attempt_ran_once, assert_invariants

pytestmark = pytest.mark.usefixtures("audited")

MONGO_PER_ATTEMPT = 3
REDIS_PER_ATTEMPT = 6
EXECUTIONS = 5
STEPS = 4


class Tally:
    """Commands counted while enabled, from any thread, and the order they were sent in."""

    def __init__(self) -> None:
        self.names: Counter[str] = Counter()
        self.order: list[str] = []
        self._guard = threading.Lock()

    def add(self, name: str) -> None:
        with self._guard:
            self.names[name] += 1
            self.order.append(name)

    def take(self) -> Counter[str]:
        """Return the commands counted since the last call, and start over."""
        return self.take_order()[0]

    def take_order(self) -> tuple[Counter[str], list[str]]:
        """Return the commands counted since the last call and their order, and start over."""
        with self._guard:
            names, self.names = self.names, Counter()
            order, self.order = self.order, []
        return names, order


def own(commands: Counter[str]) -> Counter[str]:
    """Return the commands on the executions collection (a step's own cost)."""
    return Counter({name: n for name, n in commands.items() if "." not in name})


def named(collection: str, method: str) -> str:
    """Name a command: its method on the executions collection, ``collection.method`` elsewhere."""
    return method if collection == "executions" else f"{collection}.{method}"


def _mongomock_counting(monkeypatch: pytest.MonkeyPatch, tally: Tally) -> None:
    from mongomock.collection import Collection

    depth = threading.local()

    def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            outer = not getattr(depth, "level", 0)
            if outer:
                tally.add(named(self.name, name))
            depth.level = getattr(depth, "level", 0) + 1
            try:
                return method(self, *args, **kwargs)
            finally:
                depth.level -= 1

        return call

    for name in MONGOMOCK_COMMANDS:  # the find behind find_one counts once
        monkeypatch.setattr(Collection, name, counting(name, getattr(Collection, name)))


def method_of(command_name: str, command: Any) -> str:
    """Return the collection method that sends ``command`` (a find with ``limit`` 1 and a single
    batch is a find_one; a one-statement update is an update_one), so that the counts over a
    server's wire read as the ones counted at mongomock's methods."""
    if command_name == "find" and command.get("singleBatch") and command.get("limit") == 1:
        return "find_one"
    if command_name in ("update", "delete"):
        statements: list[Any] = command.get("updates" if command_name == "update" else "deletes") or []
        if len(statements) == 1:
            one = statements[0].get("multi") is not True if command_name == "update" \
                else statements[0].get("limit") == 1
            return f"{command_name}_{'one' if one else 'many'}"
    if command_name == "insert" and len(command.get("documents") or ()) == 1:
        return "insert_one"
    return str(command_name)


@contextlib.contextmanager
def _listener_counting(tally: Tally) -> Iterator[None]:
    def started(event: Any) -> None:
        if event.command_name not in HOUSEKEEPING:
            tally.add(named(str(event.command.get(event.command_name)),
                            method_of(event.command_name, event.command)))

    with mongo_commands_heard(started):
        store.collection()
        tally.take()
        yield


@pytest.fixture
def mongo_commands(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tally]:
    """Count the MongoDB commands sent while the test runs."""
    tally = Tally()
    store.collection()  # indexes are ensured on first use: not part of any step
    if services.is_embedded_store():
        _mongomock_counting(monkeypatch, tally)
        yield tally
    else:
        with _listener_counting(tally):
            yield tally


@pytest.fixture
def redis_commands(redis_client: Any, monkeypatch: pytest.MonkeyPatch) -> Tally:
    """Count the commands of the engine's own Redis client (locks, pokes, heartbeats)."""
    tally = Tally()
    client = services.redis_client()
    real_execute = client.execute_command

    def counting(*args: Any, **options: Any) -> Any:
        tally.add(str(args[0]).upper())
        return real_execute(*args, **options)

    monkeypatch.setattr(client, "execute_command", counting)
    return tally


@pytest.fixture
def messages(monkeypatch: pytest.MonkeyPatch) -> Tally:
    """Count the advance messages sent (through the broker, whose Redis commands are not counted)."""
    tally = Tally()
    real_send = dispatch.send

    def counting(execution_id: str, delay_ms: int = 0) -> bool:
        tally.add("delayed" if delay_ms > 0 else "now")
        return real_send(execution_id, delay_ms)

    monkeypatch.setattr(dispatch, "send", counting)
    return tally


def knows_scripts() -> None:
    """Have the Redis server learn the lock's scripts, as it does at a worker's first message (a
    server that does not know one is sent its text once: ``locks.run_script``)."""
    lock = ExecutionLock(services.redis_client(), "cost-warm-up", 1000)
    assert lock.acquire()
    lock.release()


def drive(define: Any, tallies: tuple[Tally, Tally, Tally], calls: int
          ) -> tuple[list[tuple[Counter[str], ...]], list[Any]]:
    """Start ``EXECUTIONS`` executions of ``STEPS`` echo steps, advance each ``calls`` times; return
    what each call counted (MongoDB, Redis, messages) and the documents after."""
    define("cheap", [{"handler": "test.echo"}] * STEPS)
    ids = [operations.start("cheap", {"n": n})[0]["_id"] for n in range(EXECUTIONS)]
    knows_scripts()
    for tally in tallies:
        tally.take()
    per_call = []
    for eid in ids:
        for _ in range(calls):
            runner.advance(eid)
            per_call.append(tuple(tally.take() for tally in tallies))
    return per_call, [store.load(eid) for eid in ids]


def test_cost__happy_path_attempt__stays_within_3_mongodb_and_6_redis_commands(
    broker: Any, define: Any, mongo_commands: Tally, redis_commands: Tally, messages: Tally,
    settings: Any,
) -> None:
    """The costliest way to run: every step a message of its own (``INLINE_STEPS=1``)."""
    settings.DETFLOW = {**settings.DETFLOW, "INLINE_STEPS": "1"}

    per_attempt, docs = drive(define, (mongo_commands, redis_commands, messages), calls=STEPS)

    assert [d["status"] for d in docs] == ["SUCCEEDED"] * EXECUTIONS
    assert len(LEDGER) == EXECUTIONS * STEPS
    attempts = len(per_attempt)
    mongo = sum((m for m, _, _ in per_attempt), Counter())
    redis = sum((r for _, r, _ in per_attempt), Counter())
    sent = sum((s for _, _, s in per_attempt), Counter())
    costliest = max(per_attempt, key=lambda c: (c[0].total(), c[1].total()))
    summary = (f"per attempt: {mongo.total() / attempts:.2f} MongoDB commands {dict(mongo)}, "
               f"{redis.total() / attempts:.2f} Redis commands {dict(redis)}, "
               f"{sent.total() / attempts:.2f} messages; costliest attempt: {costliest}")
    assert mongo.total() > 0 and redis.total() > 0, f"nothing was counted: {summary}"
    assert max(own(m).total() for m, _, _ in per_attempt) <= MONGO_PER_ATTEMPT, summary
    assert set(mongo - own(mongo)) <= {"workflow_controls.find"}, summary  # the pauses, cached
    assert max(r.total() for _, r, _ in per_attempt) <= REDIS_PER_ATTEMPT, summary
    # One message per step that has a successor; none after the last step.
    assert sent == Counter(now=EXECUTIONS * (STEPS - 1)), summary
    assert_invariants(*docs)
    assert_each_attempt_ran_once(*docs)


def test_cost__steps_run_back_to_back__share_one_read_one_lock_and_no_message(
    broker: Any, define: Any, mongo_commands: Tally, redis_commands: Tally, messages: Tally,
) -> None:
    """The default: one message runs the steps that follow each other at once under one lock, from
    the snapshot each write returns: one read, the first step's claim, then one write per step, its
    outcome with the next step's claim (the last one's with the execution's end)."""
    per_message, docs = drive(define, (mongo_commands, redis_commands, messages), calls=1)

    assert [d["status"] for d in docs] == ["SUCCEEDED"] * EXECUTIONS
    assert len(LEDGER) == EXECUTIONS * STEPS
    for mongo, redis, sent in per_message:
        assert own(mongo) == Counter(find_one=1, update_one=1 + STEPS)
        assert redis == Counter(SET=1, EVALSHA=1)
        assert sent == Counter()
    assert_invariants(*docs)
    assert_each_attempt_ran_once(*docs)


def test_cost__counting__sees_every_mongodb_command_once(
    redis_client: Any, mongo_commands: Tally
) -> None:
    """The counter itself: each call is one command, named by its method on mongomock (counted at
    its methods) and on a server (heard by the command listener, where find_one is a find)."""
    store.collection().find_one({"_id": "nothing"})
    list(store.collection().find({"_id": "nothing"}))
    store.collection().update_one({"_id": "nothing"}, {"$set": {"x": 1}})

    assert mongo_commands.take() == Counter(find_one=1, find=1, update_one=1)


def test_cost__a_message_step__reads_once_writes_twice_and_locks_in_two_redis_commands(
    broker: Any, define: Any, mongo_commands: Tally, redis_commands: Tally, messages: Tally,
    settings: Any,
) -> None:
    """The floor of a step that pays a message of its own (after a retry wait, a sleep, a signal,
    ``INLINE_STEPS=1``): one read of the execution, then the claim's and the outcome's fenced
    writes, nothing read after a write; in Redis the lock taken and released, one command each."""
    settings.DETFLOW = {**settings.DETFLOW, "INLINE_STEPS": "1"}
    define("cheap", [{"handler": "test.echo"}] * STEPS)
    ids = [operations.start("cheap", {"n": n})[0]["_id"] for n in range(EXECUTIONS)]
    knows_scripts()
    mongo_commands.take(), redis_commands.take(), messages.take()
    started = time.monotonic()

    per_step = []
    for eid in ids:
        for _ in range(STEPS):
            runner.advance(eid)
            per_step.append((mongo_commands.take_order()[1], redis_commands.take_order()[1],
                             messages.take()))
    elapsed = time.monotonic() - started

    docs = [store.load(eid) for eid in ids]
    assert [d["status"] for d in docs] == ["SUCCEEDED"] * EXECUTIONS
    pauses_read = 0
    for mongo, redis, sent in per_step:
        assert [name for name in mongo if "." not in name] == ["find_one", "update_one", "update_one"]
        assert redis == ["SET", "EVALSHA"]
        assert sent.total() <= 1
        # The only other read: the process's view of the paused workflows, once a REFRESH_S.
        assert {name for name in mongo if "." in name} <= {"workflow_controls.find"}
        pauses_read += mongo.count("workflow_controls.find")
    assert pauses_read <= 1 + elapsed / controls.REFRESH_S
    assert_invariants(*docs)
    assert_each_attempt_ran_once(*docs)


def test_cost__a_redis_that_forgot_the_lock_scripts__is_sent_their_text_once(
    redis_client: Any, redis_commands: Tally
) -> None:
    """A restarted or flushed server does not know the scripts the lock runs by their SHA1: the
    release then sends the script's text (which the server keeps), and the next one its SHA1 only."""
    services.redis_client().script_flush()
    redis_commands.take()

    for _ in range(2):
        lock = ExecutionLock(services.redis_client(), "forgetful", 10_000)
        assert lock.acquire()
        assert lock.release() is False
        assert not services.redis_client().exists(lock.key)

    lock_commands = [name for name in redis_commands.take_order()[1] if name != "EXISTS"]
    assert lock_commands == ["SET", "EVALSHA", "EVAL", "SET", "EVALSHA"]
