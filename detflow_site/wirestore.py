"""The commands of the wire-protocol test server, answered from the strict embedded store.

Each handler takes the decoded command (its body, with the OP_MSG document sequences merged in)
and returns the reply document MongoDB would send, or raises :class:`CommandFailed` with one of
MongoDB's error codes. The store is mongomock made strict and thread-safe by
``embedded.serialize_mongomock()``; every command runs under one lock as well, so that a command
made of several store calls (``findAndModify``'s upsert report, ``createIndexes``' checks) is
atomic as it is on a server.

State lives in this process's memory: a store for tests and local multi-process runs, not for
data anyone keeps.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import bson

from detflow_site import embedded

#: The limits hello announces (those of MongoDB 6.0).
MAX_BSON_SIZE = embedded.MAX_BSON_SIZE
MAX_MESSAGE_SIZE = 48_000_000
MAX_WRITE_BATCH = 100_000
MAX_WIRE_VERSION = 17
#: The first batch of a find without ``batchSize``, as on a server.
DEFAULT_BATCH = 101
#: A cursor unused this long is closed (the server's ``cursorTimeoutMillis``).
CURSOR_IDLE_S = 600.0
#: The bytes of documents one batch carries at most (a reply stays below 16 MiB plus overhead).
BATCH_BYTES = MAX_BSON_SIZE - 16 * 1024

#: MongoDB's names of the error codes this server answers with.
CODE_NAMES = {
    1: "InternalError", 2: "BadValue", 9: "FailedToParse", 26: "NamespaceNotFound",
    27: "IndexNotFound", 40: "ConflictingUpdateOperators", 43: "CursorNotFound", 48: "NamespaceExists",
    52: "DollarPrefixedFieldName", 59: "CommandNotFound", 67: "CannotCreateIndex", 72: "InvalidOptions",
    85: "IndexOptionsConflict", 86: "IndexKeySpecsConflict", 238: "NotImplemented",
    10107: "NotWritablePrimary", 10334: "BSONObjectTooLarge", 11000: "DuplicateKey",
    17419: "BSONObjectTooLarge",
}


class CommandFailed(Exception):
    """A command's error reply: ``ok: 0`` with a code, its name and a message."""

    def __init__(self, code: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.code = code
        self.extra = extra

    def reply(self) -> dict[str, Any]:
        """Return the error document MongoDB sends."""
        return {"ok": 0.0, "errmsg": str(self), "code": self.code,
                "codeName": CODE_NAMES.get(self.code, "UnknownError"), **self.extra}


def error_entry(exc: BaseException) -> tuple[int, str, dict[str, Any]]:
    """Return the code, message and details MongoDB gives for what the store raised."""
    from pymongo.errors import DocumentTooLarge, PyMongoError

    if isinstance(exc, CommandFailed):
        return exc.code, str(exc), dict(exc.extra)
    if isinstance(exc, DocumentTooLarge):
        return 10334, str(exc), {}
    if isinstance(exc, PyMongoError):
        details = dict(getattr(exc, "details", None) or {})
        code = getattr(exc, "code", None) or 2
        message = details.get("errmsg") or str(exc)
        extra = {k: details[k] for k in ("keyPattern", "keyValue") if k in details}
        return int(code), str(message), extra
    if isinstance(exc, NotImplementedError):
        return 238, f"not supported by the test store: {exc}", {}
    if isinstance(exc, ValueError | TypeError | KeyError | bson.errors.BSONError):
        return 2, f"{type(exc).__name__}: {exc}", {}
    return 1, f"the test store failed: {type(exc).__name__}: {exc}", {}


@dataclass
class Cursor:
    """The documents of a find or aggregate that a client has not fetched yet."""

    namespace: str
    documents: Iterator[dict[str, Any]]
    used_at: float = field(default_factory=time.monotonic)
    pending: dict[str, Any] | None = None


class Store:
    """The embedded store behind the wire: a mongomock client, the open cursors, the commands."""

    def __init__(self) -> None:
        import mongomock

        embedded.serialize_mongomock()
        self.client: Any = mongomock.MongoClient(tz_aware=False)
        self.lock = threading.RLock()
        self.cursors: dict[int, Cursor] = {}
        self._ids = itertools.count(1_000_001)
        self.handlers: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
            "ping": lambda db, cmd: {},
            "endSessions": lambda db, cmd: {},
            "buildInfo": self.build_info, "buildinfo": self.build_info,
            "find": self.find, "getMore": self.get_more, "killCursors": self.kill_cursors,
            "insert": self.insert, "update": self.update, "delete": self.delete,
            "findAndModify": self.find_and_modify, "findandmodify": self.find_and_modify,
            "aggregate": self.aggregate, "count": self.count, "distinct": self.distinct,
            "createIndexes": self.create_indexes, "listIndexes": self.list_indexes,
            "dropIndexes": self.drop_indexes, "deleteIndexes": self.drop_indexes,
            "listCollections": self.list_collections, "create": self.create, "drop": self.drop,
            "dropDatabase": self.drop_database, "listDatabases": self.list_databases,
        }

    def hello(self, connection_id: int) -> dict[str, Any]:
        """Return the handshake of a standalone server (no replica set is emulated)."""
        import datetime

        return {"helloOk": True, "ismaster": True, "isWritablePrimary": True,
                "maxBsonObjectSize": MAX_BSON_SIZE, "maxMessageSizeBytes": MAX_MESSAGE_SIZE,
                "maxWriteBatchSize": MAX_WRITE_BATCH, "logicalSessionTimeoutMinutes": 30,
                "localTime": datetime.datetime.now(datetime.UTC), "connectionId": connection_id,
                "minWireVersion": 0, "maxWireVersion": MAX_WIRE_VERSION, "readOnly": False}

    def run(self, name: str, db: str, command: dict[str, Any]) -> dict[str, Any]:
        """Answer one command (not hello, which the connection answers); return the reply."""
        handler = self.handlers.get(name)
        if handler is None:
            raise CommandFailed(59, f"no such command: '{name}'")
        if command.get("collation"):
            raise CommandFailed(238, "collation is not supported by the test store")
        with self.lock:
            reply = handler(db, command)
        return {**reply, "ok": 1.0}

    def build_info(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        return {"version": "6.0.0", "versionArray": [6, 0, 0, 0], "gitVersion": "detflow-runstore",
                "bits": 64, "maxBsonObjectSize": MAX_BSON_SIZE,
                "storageEngines": ["detflow-embedded"]}

    def _collection(self, db: str, command: dict[str, Any], name: str) -> Any:
        target = command[name]
        if not isinstance(target, str) or not target:
            raise CommandFailed(2, f"{name} needs a collection name, not {target!r}")
        return self.client[db][target]

    # Cursors

    def _cursor_reply(self, namespace: str, documents: Iterator[dict[str, Any]], batch: int | None,
                      single: bool = False) -> dict[str, Any]:
        cursor = Cursor(namespace, documents)
        first = self._batch(cursor, batch if batch is not None else DEFAULT_BATCH)
        cursor_id = 0
        if not single and self._more(cursor):
            self._reap()
            cursor_id = next(self._ids)
            self.cursors[cursor_id] = cursor
        return {"cursor": {"id": bson.Int64(cursor_id), "ns": namespace, "firstBatch": first}}

    @staticmethod
    def _more(cursor: Cursor) -> bool:
        if cursor.pending is None:
            cursor.pending = next(cursor.documents, None)
        return cursor.pending is not None

    def _batch(self, cursor: Cursor, size: int) -> list[dict[str, Any]]:
        taken: list[dict[str, Any]] = []
        used = 0
        while (size <= 0 or len(taken) < size) and self._more(cursor):
            document = cursor.pending
            assert document is not None
            used += len(bson.encode(document))
            if taken and used > BATCH_BYTES:
                break
            taken.append(document)
            cursor.pending = None
        return taken

    def _reap(self) -> None:
        now = time.monotonic()
        for key in [k for k, c in self.cursors.items() if now - c.used_at > CURSOR_IDLE_S]:
            del self.cursors[key]

    def find(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "find")
        limit = int(command.get("limit") or 0)
        single = bool(command.get("singleBatch")) or limit < 0
        sort = command.get("sort") or None
        documents = list(collection.find(
            command.get("filter") or {}, command.get("projection") or None,
            skip=int(command.get("skip") or 0), limit=abs(limit),
            sort=list(sort.items()) if sort else None,
        ))
        batch = command.get("batchSize")
        if limit and (batch is None or batch > abs(limit)):
            batch = abs(limit)
        return self._cursor_reply(collection.full_name, iter(documents), batch, single)

    def get_more(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        cursor_id = int(command["getMore"])
        cursor = self.cursors.get(cursor_id)
        namespace = f"{db}.{command.get('collection')}"
        if cursor is None or cursor.namespace != namespace:
            raise CommandFailed(43, f"cursor id {cursor_id} not found")
        cursor.used_at = time.monotonic()
        batch = self._batch(cursor, int(command.get("batchSize") or 0))
        if not self._more(cursor):
            del self.cursors[cursor_id]
            cursor_id = 0
        return {"cursor": {"id": bson.Int64(cursor_id), "ns": namespace, "nextBatch": batch}}

    def kill_cursors(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        killed: list[Any] = []
        missing: list[Any] = []
        for cursor_id in command.get("cursors", []):
            (killed if self.cursors.pop(int(cursor_id), None) else missing).append(cursor_id)
        return {"cursorsKilled": killed, "cursorsNotFound": missing, "cursorsAlive": [],
                "cursorsUnknown": []}

    # Writes

    @staticmethod
    def _statements(command: dict[str, Any], key: str) -> list[dict[str, Any]]:
        statements = command.get(key) or []
        if len(statements) > MAX_WRITE_BATCH:
            raise CommandFailed(2, f"write batch of {len(statements)} passes {MAX_WRITE_BATCH}")
        return list(statements)

    @staticmethod
    def _written(n: int, errors: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        reply: dict[str, Any] = {"n": n, **extra}
        if errors:
            reply["writeErrors"] = errors
        return reply

    @staticmethod
    def _write_error(index: int, exc: BaseException) -> dict[str, Any]:
        code, message, extra = error_entry(exc)
        return {"index": index, "code": code, "errmsg": message, **extra}

    def insert(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "insert")
        ordered = command.get("ordered", True)
        n, errors = 0, []
        for index, document in enumerate(self._statements(command, "documents")):
            try:
                collection.insert_one(document)
                n += 1
            except Exception as exc:
                errors.append(self._write_error(index, exc))
                if ordered:
                    break
        return self._written(n, errors)

    def update(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "update")
        ordered = command.get("ordered", True)
        n = modified = 0
        errors: list[dict[str, Any]] = []
        upserted: list[dict[str, Any]] = []
        for index, statement in enumerate(self._statements(command, "updates")):
            try:
                result = self._update_one_statement(collection, statement)
            except Exception as exc:
                errors.append(self._write_error(index, exc))
                if ordered:
                    break
                continue
            if result.upserted_id is not None:
                n += 1
                upserted.append({"index": index, "_id": result.upserted_id})
            else:
                n += result.matched_count
                modified += result.modified_count
        extra: dict[str, Any] = {"nModified": modified}
        if upserted:
            extra["upserted"] = upserted
        return self._written(n, errors, **extra)

    @staticmethod
    def _update_one_statement(collection: Any, statement: dict[str, Any]) -> Any:
        refuse_unsupported(statement)
        query, change = statement.get("q") or {}, statement.get("u")
        upsert, multi = bool(statement.get("upsert")), bool(statement.get("multi"))
        if isinstance(change, list):
            raise CommandFailed(238, "an aggregation pipeline as an update is not supported by "
                                     "the test store")
        if not isinstance(change, dict):
            raise CommandFailed(9, "the update 'u' must be a document")
        if change and all(str(key).startswith("$") for key in change):
            method = collection.update_many if multi else collection.update_one
            return method(query, change, upsert=upsert)
        if multi:
            raise CommandFailed(9, "multi update is not supported for replacement-style update")
        return collection.replace_one(query, change, upsert=upsert)

    def delete(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "delete")
        ordered = command.get("ordered", True)
        n, errors = 0, []
        for index, statement in enumerate(self._statements(command, "deletes")):
            try:
                refuse_unsupported(statement)
                method = collection.delete_one if statement.get("limit") else collection.delete_many
                n += method(statement.get("q") or {}).deleted_count
            except Exception as exc:
                errors.append(self._write_error(index, exc))
                if ordered:
                    break
        return self._written(n, errors)

    def find_and_modify(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        from pymongo import ReturnDocument

        collection = self._collection(db, command, next(iter(command)))
        refuse_unsupported(command)
        query = command.get("query") or {}
        sort = list(command["sort"].items()) if command.get("sort") else None
        fields = command.get("fields") or None
        new, upsert = bool(command.get("new")), bool(command.get("upsert"))
        existing = collection.find_one(query, {"_id": 1}, sort=sort)
        if command.get("remove"):
            if new:
                raise CommandFailed(9, "remove and returnNew can't co-exist")
            value = collection.find_one_and_delete(query, fields, sort=sort)
            return {"lastErrorObject": {"n": int(value is not None)}, "value": value}
        change = command.get("update")
        if isinstance(change, list):
            raise CommandFailed(238, "an aggregation pipeline as an update is not supported by "
                                     "the test store")
        if not isinstance(change, dict):
            raise CommandFailed(9, "Either an update or remove=true must be specified")
        operators = bool(change) and all(str(key).startswith("$") for key in change)
        method = collection.find_one_and_update if operators else collection.find_one_and_replace
        if existing is not None:
            value = method(query, change, fields, sort=sort,
                           return_document=ReturnDocument.AFTER if new else ReturnDocument.BEFORE)
            return {"lastErrorObject": {"n": 1, "updatedExisting": True}, "value": value}
        if not upsert:
            return {"lastErrorObject": {"n": 0, "updatedExisting": False}, "value": None}
        made = method(query, change, None, sort=sort, upsert=True,
                      return_document=ReturnDocument.AFTER)
        value = collection.find_one({"_id": made["_id"]}, fields) if new else None
        return {"lastErrorObject": {"n": 1, "updatedExisting": False, "upserted": made["_id"]},
                "value": value}

    # Reads

    def aggregate(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(command["aggregate"], str):
            raise CommandFailed(238, "a database-level aggregate is not supported by the test store")
        collection = self._collection(db, command, "aggregate")
        pipeline = command.get("pipeline")
        if not isinstance(pipeline, list):
            raise CommandFailed(9, "'pipeline' must be an array")
        for stage in pipeline:
            if isinstance(stage, dict) and {"$out", "$merge"} & set(stage):
                raise CommandFailed(238, "$out and $merge are not supported by the test store")
        documents = list(collection.aggregate(pipeline))
        batch = (command.get("cursor") or {}).get("batchSize")
        return self._cursor_reply(collection.full_name, iter(documents), batch)

    def count(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "count")
        options = {k: int(command[k]) for k in ("skip", "limit") if command.get(k)}
        return {"n": collection.count_documents(command.get("query") or {}, **options)}

    def distinct(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "distinct")
        return {"values": collection.distinct(command["key"], command.get("query") or {})}

    # Indexes and collections

    def create_indexes(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "createIndexes")
        created = collection.name not in self.client[db].list_collection_names()
        before = len(collection.index_information()) if not created else 1
        if created:
            self.client[db].create_collection(collection.name)
        known = collection.index_information()
        for spec in command.get("indexes") or []:
            keys = list(spec["key"].items())
            name = spec.get("name")
            if not name:
                raise CommandFailed(9, "an index specification needs a name")
            options = {k: spec[k] for k in ("unique", "sparse", "partialFilterExpression",
                                             "expireAfterSeconds") if k in spec}
            unknown = set(spec) - {"key", "name", "v", "background", *options}
            if unknown:
                raise CommandFailed(238, f"index option(s) {sorted(unknown)} are not supported by "
                                         "the test store")
            old = known.get(name)
            if old is not None:
                if [tuple(k) for k in old["key"]] != keys:
                    raise CommandFailed(86, f"An existing index has the same name as the requested "
                                            f"index. Requested index: {spec}, existing index: {old}")
                if {k: v for k, v in old.items() if k not in ("key", "v")} != {
                        k: v for k, v in options.items() if v}:
                    raise CommandFailed(85, f"An existing index has the same name as the requested "
                                            f"index but different options: {name}")
                continue
            for other, existing in known.items():
                same = [tuple(k) for k in existing["key"]] == keys
                if same and {k: v for k, v in existing.items() if k not in ("key", "v")} == options:
                    raise CommandFailed(85, f"Index already exists with a different name: {other}")
            collection.create_index(keys, name=name, **options)
            known = collection.index_information()
        return {"createdCollectionAutomatically": created, "numIndexesBefore": before,
                "numIndexesAfter": len(known)}

    def _existing(self, db: str, command: dict[str, Any], key: str) -> Any:
        collection = self._collection(db, command, key)
        if collection.name not in self.client[db].list_collection_names():
            raise CommandFailed(26, f"ns does not exist: {collection.full_name}")
        return collection

    def list_indexes(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._existing(db, command, "listIndexes")
        documents = [dict(spec, key=dict(spec["key"]), name=name)
                     for name, spec in collection.index_information().items()]
        batch = (command.get("cursor") or {}).get("batchSize")
        return self._cursor_reply(f"{db}.$cmd.listIndexes.{collection.name}", iter(documents), batch)

    def drop_indexes(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._existing(db, command, next(iter(command)))
        target = command.get("index")
        known = collection.index_information()
        before = len(known)
        if target == "*":
            collection.drop_indexes()
            return {"nIndexesWas": before}
        names = []
        for given in target if isinstance(target, list) else [target]:
            name = given if not isinstance(given, dict) else next(
                (n for n, spec in known.items() if [tuple(k) for k in spec["key"]] == list(given.items())),
                None)
            if name == "_id_":
                raise CommandFailed(72, "cannot drop _id index")
            if name not in known:
                raise CommandFailed(27, f"index not found with name [{name or given}]")
            names.append(name)
        for name in names:
            collection.drop_index(name)
        return {"nIndexesWas": before}

    def list_collections(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        from mongomock.filtering import filter_applies

        found = []
        for name in sorted(self.client[db].list_collection_names()):
            info = {"name": name, "type": "collection", "options": {},
                    "info": {"readOnly": False}, "idIndex": {"v": 2, "key": {"_id": 1}, "name": "_id_"}}
            if filter_applies(command.get("filter") or {}, info):
                found.append({"name": name, "type": "collection"} if command.get("nameOnly") else info)
        batch = (command.get("cursor") or {}).get("batchSize")
        return self._cursor_reply(f"{db}.$cmd.listCollections", iter(found), batch)

    def create(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._collection(db, command, "create")
        if collection.name in self.client[db].list_collection_names():
            raise CommandFailed(48, f"Collection {collection.full_name} already exists.")
        self.client[db].create_collection(collection.name)
        return {}

    def drop(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        collection = self._existing(db, command, "drop")
        before = len(collection.index_information())
        self.client[db].drop_collection(collection.name)
        return {"ns": collection.full_name, "nIndexesWas": before}

    def drop_database(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        self.client.drop_database(db)
        return {"dropped": db}

    def list_databases(self, db: str, command: dict[str, Any]) -> dict[str, Any]:
        names = self.client.list_database_names()
        return {"databases": [{"name": n, "sizeOnDisk": 0, "empty": False} for n in names],
                "totalSize": 0}


def refuse_unsupported(statement: dict[str, Any]) -> None:
    """Refuse, by name, the options the store would silently ignore or get wrong."""
    for option in ("arrayFilters", "collation", "hint"):
        if statement.get(option):
            raise CommandFailed(238, f"{option} is not supported by the test store (mongomock "
                                     "4.3 does not apply it as MongoDB does)")
