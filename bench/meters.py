"""What a step costs, counted: MongoDB commands and the bytes they write, the engine's own Redis
commands, messages, every Redis command the server ran, and the time spent in each.

MongoDB is counted at mongomock's collection methods when the store is embedded (a call inside
another call counts once: ``find_one`` runs ``find``), or by a ``pymongo`` command listener on a
client reconnected with it when ``DETFLOW_MONGODB_URL`` is set (as ``tests/reliability/test_cost.py``
does). Bytes written are the BSON size of each write command's statements (the filter and the
update, or the inserted document). The engine's Redis commands are counted at ``execute_command``
of ``services.redis_client()`` (locks, pokes, heartbeats); the broker has a client of its own and
is counted apart, as messages, and server-side by ``INFO commandstats``.
"""
from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bson

#: mongomock collection methods that each send one command to a real MongoDB.
MONGOMOCK_COMMANDS = (
    "find", "find_one", "insert_one", "insert_many", "update_one", "update_many", "replace_one",
    "delete_one", "delete_many", "find_one_and_update", "find_one_and_replace",
    "find_one_and_delete", "bulk_write", "count_documents", "estimated_document_count", "distinct",
    "aggregate",
)
#: Commands a real client sends on its own (handshakes, sessions), not for the engine.
HOUSEKEEPING = frozenset({"hello", "ismaster", "isMaster", "ping", "endSessions", "saslStart",
                          "saslContinue", "buildInfo", "getMore"})
#: Server-side commands that the bench itself sends to read the counters.
BENCH_REDIS_COMMANDS = frozenset({"info", "config|resetstat", "config", "flushdb", "ping"})


@dataclass
class Tally:
    """Counts, bytes and seconds, added from any thread; and ``(name, kind)`` in the order they came
    (for a read after a write, meaningful when one thread sends them), and the kinds counted (the
    store's meter gives the collection as the kind, the engine Redis meter what the command is for)."""

    commands: Counter[str] = field(default_factory=Counter)
    bytes: int = 0
    seconds: float = 0.0
    sequence: list[tuple[str, str | None]] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._guard = threading.Lock()

    def add(self, name: str, size: int = 0, seconds: float = 0.0, kind: str | None = None) -> None:
        with self._guard:
            self.commands[name] += 1
            self.bytes += size
            self.seconds += seconds
            self.sequence.append((name, kind))
            if kind is not None:
                self.kinds[kind] += 1

    def take(self) -> Tally:
        """Return what was counted since the last call, and start over."""
        with self._guard:
            taken = Tally(self.commands, self.bytes, self.seconds, self.sequence, self.kinds)
            self.commands, self.bytes, self.seconds = Counter(), 0, 0.0
            self.sequence, self.kinds = [], Counter()
        return taken

    @property
    def total(self) -> int:
        return self.commands.total()


#: MongoDB commands that read (mongomock's method names and the wire's command names).
READS = frozenset({"find", "find_one", "count_documents", "estimated_document_count", "distinct",
                   "aggregate", "count"})
#: MongoDB commands that write (``find_one_and_*`` / ``findAndModify`` read too, in the same trip).
WRITES = frozenset({"insert_one", "insert_many", "update_one", "update_many", "replace_one",
                    "delete_one", "delete_many", "find_one_and_update", "find_one_and_replace",
                    "find_one_and_delete", "bulk_write", "insert", "update", "delete",
                    "findAndModify"})
#: The engine's Redis keys, by the kind of command that touches them (``executions/locks.py``,
#: ``executions/slots.py``).
LOCK_PREFIX, POKE_PREFIX, SLOT_PREFIX = "detflow:lock:", "detflow:poke:", "detflow:slots:"


def mongo_split(commands: Counter[str]) -> dict[str, int]:
    """Return the reads, the writes and the other commands among ``commands``."""
    reads = sum(n for name, n in commands.items() if name in READS)
    writes = sum(n for name, n in commands.items() if name in WRITES)
    return {"reads": reads, "writes": writes, "other": commands.total() - reads - writes}


def reads_after_write(sequence: list[tuple[str, str | None]]) -> int:
    """Return how many reads in ``sequence`` (one thread's ``(command, collection)``, in order)
    follow a write to the same collection (a collection of ``None``: any)."""
    written: set[str | None] = set()
    found = 0
    for name, collection in sequence:
        if name in WRITES:
            written.add(collection)
        elif name in READS and (collection in written or None in written
                                or (collection is None and written)):
            found += 1
    return found


def reads_by_collection(sequence: list[tuple[str, str | None]]) -> Counter[str]:
    """Return the reads in ``sequence`` by collection."""
    return Counter(str(collection) for name, collection in sequence if name in READS)


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def redis_kind(args: tuple[Any, ...]) -> str:
    """Name what one engine Redis command is for: ``lock set``, ``lock release``, ``lock renew``,
    ``lock ttl``, ``poke``, ``slot``, or ``other <COMMAND>``. Read from the keys it touches (a
    script's keys follow its text or digest and their count)."""
    command = _text(args[0]).upper() if args else "?"
    if command in ("EVAL", "EVALSHA", "FCALL") and len(args) > 2:
        try:
            keys = [_text(k) for k in args[3:3 + int(args[2])]]
        except (TypeError, ValueError):
            keys = []
    else:
        keys = [_text(args[1])] if len(args) > 1 else []
    if any(k.startswith(SLOT_PREFIX) for k in keys):
        return "slot"
    if keys and keys[0].startswith(LOCK_PREFIX):
        if command in ("EVAL", "EVALSHA", "FCALL"):
            return "lock release" if any(k.startswith(POKE_PREFIX) for k in keys) else "lock renew"
        if command == "DEL":
            return "lock release"
        return {"SET": "lock set", "PTTL": "lock ttl", "PEXPIRE": "lock renew"}.get(
            command, f"lock {command}")
    if keys and keys[0].startswith(POKE_PREFIX):
        return "poke"
    return f"other {command}"


def write_size(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> int:
    """Return the BSON size of what a mongomock write call sends."""
    if name in ("insert_one", "insert_many"):
        docs = args[0] if args else kwargs.get("document", kwargs.get("documents"))
        docs = docs if isinstance(docs, list) else [docs]
        return sum(len(bson.encode(d)) for d in docs)
    if name in ("update_one", "update_many", "replace_one", "find_one_and_update",
                "find_one_and_replace"):
        query = args[0] if args else kwargs.get("filter", {})
        update = args[1] if len(args) > 1 else kwargs.get("update", kwargs.get("replacement", {}))
        return len(bson.encode({"q": query, "u": update}))
    if name in ("delete_one", "delete_many", "find_one_and_delete"):
        query = args[0] if args else kwargs.get("filter", {})
        return len(bson.encode({"q": query}))
    return 0


class StoreMeter:
    """Counts the MongoDB commands of this process, the bytes they write and the time they take."""

    def __init__(self) -> None:
        self.tally = Tally()
        self._undo: list[Callable[[], None]] = []

    @contextlib.contextmanager
    def installed(self) -> Iterator[StoreMeter]:
        from detflow_site import services
        from executions import store

        store.collection()  # indexes are ensured on first use: not part of any step
        try:
            if services.is_embedded_store():
                self._patch_mongomock()
            else:
                self._listen()
            self.tally.take()
            yield self
        finally:
            for undo in reversed(self._undo):
                undo()
            self._undo.clear()

    def _patch_mongomock(self) -> None:
        from mongomock.collection import Collection

        depth = threading.local()
        tally = self.tally

        def counting(name: str, method: Callable[..., Any]) -> Callable[..., Any]:
            @functools.wraps(method)
            def call(*args: Any, **kwargs: Any) -> Any:
                outer = not getattr(depth, "level", 0)
                depth.level = getattr(depth, "level", 0) + 1
                started = time.perf_counter()
                try:
                    return method(*args, **kwargs)
                finally:
                    depth.level -= 1
                    if outer:
                        tally.add(name, write_size(name, args[1:], kwargs),
                                  time.perf_counter() - started, getattr(args[0], "name", None))

            return call

        for name in MONGOMOCK_COMMANDS:
            original = Collection.__dict__.get(name)
            if original is None:
                continue
            setattr(Collection, name, counting(name, original))
            self._undo.append(functools.partial(setattr, Collection, name, original))

    def _listen(self) -> None:
        import mongoengine
        from pymongo import monitoring

        from detflow_site import services
        from executions import store

        tally = self.tally
        pending: dict[int, tuple[str, int, str | None]] = {}
        guard = threading.Lock()

        class Listener(monitoring.CommandListener):
            def started(self, event: monitoring.CommandStartedEvent) -> None:
                if event.command_name in HOUSEKEEPING:
                    return
                size = 0
                if event.command_name in ("insert", "update", "delete", "findAndModify"):
                    size = len(bson.encode(event.command))
                target = event.command.get(event.command_name)
                with guard:
                    pending[event.request_id] = (event.command_name, size,
                                                 target if isinstance(target, str) else None)

            def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
                self._done(event.request_id, event.duration_micros)

            def failed(self, event: monitoring.CommandFailedEvent) -> None:
                self._done(event.request_id, event.duration_micros)

            def _done(self, request_id: int, micros: int) -> None:
                with guard:
                    found = pending.pop(request_id, None)
                if found is not None:
                    tally.add(found[0], found[1], micros / 1e6, found[2])

        # A listener is only heard by clients created after it: reconnect with it, then back without.
        real_connect = mongoengine.connect
        mongoengine.connect = lambda *a, **kw: real_connect(*a, event_listeners=[Listener()], **kw)
        try:
            services.connect_mongo()
        finally:
            mongoengine.connect = real_connect
        store.collection()
        self._undo.append(services.connect_mongo)


class RedisMeter:
    """Counts the commands of the engine's own Redis client (not the broker's) and their time."""

    def __init__(self) -> None:
        self.tally = Tally()

    @contextlib.contextmanager
    def installed(self) -> Iterator[RedisMeter]:
        from detflow_site import services

        client = services.redis_client()
        real = client.execute_command
        tally = self.tally

        def counting(*args: Any, **options: Any) -> Any:
            started = time.perf_counter()
            try:
                return real(*args, **options)
            finally:
                tally.add(str(args[0]).upper(), 0, time.perf_counter() - started, redis_kind(args))

        client.execute_command = counting  # type: ignore[method-assign]
        try:
            yield self
        finally:
            del client.execute_command


class MessageMeter:
    """Counts the advance messages the engine sends (now or delayed) and the time sending takes."""

    def __init__(self) -> None:
        self.tally = Tally()

    @contextlib.contextmanager
    def installed(self) -> Iterator[MessageMeter]:
        from executions import dispatch

        real = dispatch.send
        tally = self.tally

        def counting(execution_id: str, delay_ms: int = 0) -> bool:
            started = time.perf_counter()
            try:
                return real(execution_id, delay_ms)
            finally:
                tally.add("delayed" if delay_ms > 0 else "now", 0, time.perf_counter() - started)

        dispatch.send = counting  # type: ignore[assignment]
        try:
            yield self
        finally:
            dispatch.send = real  # type: ignore[assignment]


def server_commands(client: Any) -> Counter[str]:
    """Return the Redis server's command counts since it started (``INFO commandstats``)."""
    stats = client.info("commandstats")
    counts: Counter[str] = Counter()
    for key, value in stats.items():
        name = key.removeprefix("cmdstat_")
        if name not in BENCH_REDIS_COMMANDS:
            counts[name] = int(value["calls"])
    return counts


@contextlib.contextmanager
def all_meters() -> Iterator[tuple[StoreMeter, RedisMeter, MessageMeter]]:
    """Install the store, engine-Redis and message meters together."""
    with StoreMeter().installed() as store_meter, RedisMeter().installed() as redis_meter, \
            MessageMeter().installed() as message_meter:
        yield store_meter, redis_meter, message_meter


def redis_cpu_seconds(client: Any) -> float:
    """Return the CPU time the Redis server has used since it started (``INFO cpu``, user + sys)."""
    cpu = client.info("cpu")
    return float(cpu.get("used_cpu_user", 0.0)) + float(cpu.get("used_cpu_sys", 0.0))
