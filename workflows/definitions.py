"""Register and look up workflow definitions; versions are immutable."""
from __future__ import annotations

import datetime as dt
import json
from typing import Any

from mongoengine.errors import NotUniqueError

from workflows import registry
from workflows.errors import WorkflowNotFound
from workflows.models import WorkflowDefinition
from workflows.spec import WorkflowSpec, parse_workflow


def register(data: Any | WorkflowSpec) -> tuple[WorkflowDefinition, bool]:
    """Store a definition; return ``(stored version, created)``.

    A definition identical to the latest version of its name returns that version; a changed one
    becomes the next version. Concurrent registrations settle on one version each (unique index).
    """
    spec = data if isinstance(data, WorkflowSpec) else parse(data)
    fingerprint = spec.fingerprint()
    while True:
        latest = _latest(spec.name)
        if latest is not None and latest.fingerprint == fingerprint:
            return latest, False
        stored = WorkflowDefinition(
            name=spec.name,
            version=(latest.version + 1) if latest else 1,
            description=spec.description,
            steps=spec.to_dict()["steps"],
            secret_inputs=list(spec.secret_inputs),
            on_failure=spec.on_failure,
            deadline_s=spec.deadline_s,
            on_deadline=spec.on_deadline,
            retention_days=spec.retention_days,
            input_schema_json=None if spec.input_schema is None
            else json.dumps(spec.input_schema, sort_keys=True, separators=(",", ":")),
            fingerprint=fingerprint,
            created_at=dt.datetime.now(dt.UTC).replace(tzinfo=None),
        )
        try:
            stored.save(force_insert=True)
        except NotUniqueError:
            continue  # another process stored this version first: compare with it
        return stored, True


def parse(data: Any) -> WorkflowSpec:
    """Validate a definition, handler names included."""
    return parse_workflow(data, known_handlers=registry.get_handler)


def get(name: str, version: int | None = None) -> WorkflowDefinition:
    """Return version ``version`` of ``name`` (the latest when ``None``)."""
    found = _latest(name) if version is None else _read({"name": name, "version": version})
    if found is None:
        if version is not None and (stored := [d.version for d in versions(name)]):
            raise WorkflowNotFound(
                f"workflow {name!r} has no version {version}; its versions: "
                + ", ".join(map(str, sorted(stored))), field="version",
            )
        raise WorkflowNotFound(f"workflow {name!r} is not registered; known workflows: "
                               + (_listing(names()) or "none are registered"))
    return found


def names() -> list[str]:
    """Return the registered workflow names, sorted."""
    return sorted(WorkflowDefinition.objects.distinct("name"))


def _listing(items: list[str], shown: int = 50) -> str:
    more = f" and {len(items) - shown} more" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def latest_versions() -> list[WorkflowDefinition]:
    """Return the latest version of every workflow, by name."""
    pipeline = [{"$sort": {"name": 1, "version": -1}},
                {"$group": {"_id": "$name", "latest": {"$first": "$$ROOT"}}},
                {"$sort": {"_id": 1}}]
    rows = WorkflowDefinition._get_collection().aggregate(pipeline)
    return [WorkflowDefinition._from_son(row["latest"]) for row in rows]


def versions(name: str) -> list[WorkflowDefinition]:
    """Return every version of ``name``, newest first."""
    return list(WorkflowDefinition.objects(name=name).order_by("-version"))


def _latest(name: str) -> WorkflowDefinition | None:
    return _read({"name": name})


#: The definitions read before, by database and ``_id`` (at most ``READ_KEPT``): a version is never
#: modified once stored, so one read of the whole document serves every later start of it, and a
#: version deleted and registered again is another document, with another ``_id``. Shared:
#: read-only (a start pins a copy of the steps, ``plain_steps``).
_READ: dict[Any, WorkflowDefinition] = {}
READ_KEPT = 256


def _read(query: dict[str, Any]) -> WorkflowDefinition | None:
    """Return the newest version that ``query`` (a name, and maybe a version) matches: its ``_id``
    read (by the index), and the document itself only the first time."""
    collection = WorkflowDefinition._get_collection()
    head = collection.find_one(query, {"_id": 1}, sort=None if "version" in query else [("version", -1)])
    if head is None:
        return None
    key = (collection.database.name, head["_id"])
    found = _READ.get(key)
    if found is None:
        raw = collection.find_one({"_id": head["_id"]})
        if raw is None:  # deleted in between
            return None
        found = WorkflowDefinition._from_son(raw)
        _ = (found.steps, found.secret_inputs)  # mongoengine converts a list at its first look: now
        if len(_READ) >= READ_KEPT:
            _READ.clear()
        _READ[key] = found
    return found


def plain_steps(definition: WorkflowDefinition) -> list[dict[str, Any]]:
    """Return a copy of ``definition``'s steps as plain dicts and lists (a definition read by
    :func:`get` is shared: what is built from it must not hold its lists)."""
    return _plain(list(definition.steps))


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value
