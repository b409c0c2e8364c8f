"""The indexes of every collection detflow reads, and the one function that makes a store match them.

Documents declare theirs in ``meta["indexes"]`` with ``auto_create_index`` off; the collections the
code reads through pymongo alone are declared in :data:`RAW`. :func:`ensure` creates what is
missing, replaces an index whose keys or options changed, and drops the indexes of those
collections that are no longer declared. ``manage.py ensure_indexes`` runs it against a server;
the embedded store runs it when it connects (``detflow_site.services.connect_mongo``). No process
creates an index on its first access.

A partial filter serves a query only when the query implies it (MongoDB's planner ignores the
index otherwise): :func:`implies` is that rule, and the index test holds every query to it.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import mongoengine
from mongoengine.connection import DEFAULT_CONNECTION_NAME
from pymongo import IndexModel
from pymongo.collection import Collection


@dataclass(frozen=True)
class Index:
    """One declared index: its key pattern and the options that change what it holds."""

    keys: tuple[tuple[str, int], ...]
    unique: bool = False
    sparse: bool = False
    #: The documents it holds; ``None``: every document (less, when ``sparse``, those missing its keys).
    partial: Mapping[str, Any] | None = None

    @property
    def name(self) -> str:
        """MongoDB's default name for the key pattern (what mongoengine and earlier versions used)."""
        return str(IndexModel(list(self.keys)).document["name"])

    def options(self) -> dict[str, Any]:
        """Return the keyword options of ``create_index``."""
        found: dict[str, Any] = {"name": self.name}
        if self.unique:
            found["unique"] = True
        if self.sparse:
            found["sparse"] = True
        if self.partial is not None:
            found["partialFilterExpression"] = _plain(self.partial)
        return found

    def required_filter(self) -> dict[str, Any]:
        """Return the filter a query must imply to be served by this index (``{}``: none).

        A sparse index is held to ``$exists: true`` on each of its fields: stricter than MongoDB
        for a compound key, which it indexes when any one of them exists.
        """
        if self.partial is not None:
            return _plain(self.partial)
        if self.sparse:
            return {name: {"$exists": True} for name, _ in self.keys}
        return {}

    def describe(self) -> str:
        extra = [word for word, on in (("unique", self.unique), ("sparse", self.sparse)) if on]
        if self.partial is not None:
            extra.append(f"partial {_plain(self.partial)}")
        return self.name + (f" ({', '.join(extra)})" if extra else "")


#: Collections read through pymongo alone (no document class): the events moved out of executions,
#: read by execution in seq order (``executions.store.history``); the chaos workflow's ledger and
#: effects, read by run (``detflow_site.chaos.run``). ``chaos_runs`` is read by ``_id`` only.
RAW: dict[str, tuple[Index, ...]] = {
    "execution_history": (Index((("execution_id", 1), ("first_seq", 1))),),
    "chaos_ledger": (Index((("run", 1), ("execution_id", 1))),),
    "chaos_effects": (Index((("run", 1), ("execution_id", 1))),),
    # The schedules due to fire (executions.schedules.fire_due): not paused, next_fire_at passed.
    "schedules": (Index((("paused", 1), ("next_fire_at", 1))),),
    # The open bulk operations whose runner's lease ran out (executions.bulk.resend_expired); the
    # console's list of them, newest first (detflow_site.console.bulk).
    "bulk_operations": (Index((("status", 1), ("lease_expires_at", 1))),
                        Index((("created_at", -1), ("_id", -1)))),
}


@dataclass(frozen=True)
class Change:
    """What :func:`ensure` did to one index."""

    collection: str
    #: ``created``, ``replaced`` (its keys or options changed) or ``dropped`` (no longer declared).
    action: str
    index: str
    #: For ``replaced``: the index as it was.
    was: str = ""

    def __str__(self) -> str:
        was = f"; was {self.was}" if self.was else ""
        return f"{self.collection}: {self.action} {self.index}{was}"


def documents() -> list[type[mongoengine.Document]]:
    """Return every concrete document class that is loaded (Django loads each app's models)."""
    found: list[type[mongoengine.Document]] = []

    def walk(cls: type[mongoengine.Document]) -> None:
        for sub in cls.__subclasses__():
            if not sub._meta.get("abstract") and sub not in found:
                found.append(sub)
            walk(sub)

    walk(mongoengine.Document)
    return sorted(found, key=lambda d: d._get_collection_name())


def declared() -> dict[str, tuple[Index, ...]]:
    """Return each collection's declared indexes (``_id``'s, which MongoDB keeps, left out)."""
    found: dict[str, tuple[Index, ...]] = {}
    for document in documents():
        specs = []
        for spec in document._meta.get("index_specs") or []:
            specs.append(Index(
                keys=tuple((name, int(direction)) for name, direction in spec["fields"]),
                unique=bool(spec.get("unique")), sparse=bool(spec.get("sparse")),
                partial=spec.get("partialFilterExpression"),
            ))
        found[document._get_collection_name()] = tuple(specs)
    found.update(RAW)
    return found


def collection(name: str) -> Collection:
    """Return collection ``name`` of the store detflow is connected to."""
    return mongoengine.get_db(DEFAULT_CONNECTION_NAME)[name]  # the alias services connects


def ensure() -> list[Change]:
    """Make every declared collection hold exactly its declared indexes; return what changed.

    Idempotent: a second run changes nothing. A replaced index is dropped before it is built
    again (MongoDB refuses two indexes of one name), so a unique one does not hold meanwhile.
    """
    changes: list[Change] = []
    for name, wanted in declared().items():
        target = collection(name)
        existing = {n: info for n, info in target.index_information().items() if n != "_id_"}
        for index in wanted:
            info = existing.pop(index.name, None)
            if info is not None and stored(info) == index:
                continue
            if info is not None:
                target.drop_index(index.name)
            target.create_index(list(index.keys), **index.options())
            was = "" if info is None else stored(info).describe()
            changes.append(Change(name, "created" if info is None else "replaced", index.describe(), was))
        for extra, info in sorted(existing.items()):
            target.drop_index(extra)
            changes.append(Change(name, "dropped", stored(info).describe()))
    return changes


def stored(info: Mapping[str, Any]) -> Index:
    """Return an index as ``index_information()`` describes it."""
    partial = info.get("partialFilterExpression")
    return Index(
        keys=tuple((name, int(direction)) for name, direction in info["key"]),
        unique=bool(info.get("unique")), sparse=bool(info.get("sparse")),
        partial=None if partial is None else _plain(partial),
    )


def _plain(value: Any) -> Any:
    """Return ``value`` as plain dicts and lists (a server answers SON), for comparison."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# The planner's rule for partial filters, as far as detflow's filters need it.

#: Operators whose condition never matches a missing field (nor null, for a non-null value).
_BOUNDING = ("$gt", "$gte", "$lt", "$lte")


def implies(query: Mapping[str, Any], required: Mapping[str, Any]) -> bool:
    """Tell whether every document ``query`` matches also matches ``required`` (a partial filter).

    ``required`` is a conjunction of per-field conditions (top level, or in ``$and``). Each is
    implied by the same condition in the query, and ``{$exists: true}`` also by an equality to a
    value that is not null, an ``$in`` without null, a range bound that is not null, or ``$type``.
    The query's conditions are its top-level fields, those of its ``$and`` parts, and those every
    ``$or`` branch carries. Anything else is not implied: a false "no" only fails a test.
    """
    return all(_implied(field, condition, query) for field, condition in _conditions(required))


def _conditions(required: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    for key, value in required.items():
        if key == "$and":
            for part in value:
                yield from _conditions(part)
        else:
            yield key, value


def _implied(field: str, condition: Any, query: Mapping[str, Any]) -> bool:
    for key, value in query.items():
        if key == "$and":
            if any(_implied(field, condition, part) for part in value):
                return True
        elif key == "$or":
            if value and all(_implied(field, condition, branch) for branch in value):
                return True
        elif key == field and (_plain(value) == _plain(condition) or (
                _plain(condition) == {"$exists": True} and _excludes_missing(value))):
            return True
    return False


def _excludes_missing(value: Any) -> bool:
    """Tell whether a query's condition on a field never matches a document without the field."""
    if not isinstance(value, Mapping) or not any(str(k).startswith("$") for k in value):
        return value is not None  # an equality (a document's equality included)
    for op, operand in value.items():
        if op == "$eq" and operand is not None:
            return True
        if op == "$in" and isinstance(operand, (list, tuple)) and operand and None not in operand:
            return True
        if op in _BOUNDING and operand is not None:
            return True
        if (op == "$exists" and operand is True) or op == "$type":
            return True
    return False
