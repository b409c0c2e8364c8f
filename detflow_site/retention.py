"""Retention: remove finished executions past their window, optionally exporting them first.

A finished execution (``finished_at`` set, a terminal status) is kept ``DETFLOW_RETENTION_DAYS``
days, or its workflow's ``retention_days`` (from the workflow's latest version); 0 keeps it forever.
Removing one removes its document, its moved-out history, its Insight and the file workflow's
upload and inbox copy. It lives here, above ``executions`` and ``insights``, because it removes
the documents of both (nothing below ``insights`` may import it).

With an export, each execution is written first (as the API shows it, with its whole history) as
one line of a gzip JSON Lines file, and removed only after that line is flushed to disk: a crash
loses none. The document is removed by a write matched on the ``version`` read, so an execution
that changed meanwhile (an operator's retry) stays, and no execution is exported twice by one pass.
"""
from __future__ import annotations

import gzip
import json
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from detflow_site import conf
from detflow_site.times import to_dt
from executions import store
from executions.engine import TERMINAL
from insights.models import Insight
from workflows import storage
from workflows.errors import PermanentError
from workflows.models import WorkflowDefinition

logger = logging.getLogger("detflow.retention")

DAY_MS = 86_400_000
#: Executions one purge removes at most; the next pass takes the rest.
LIMIT = 500
_STATUSES = sorted(str(status) for status in TERMINAL)


@dataclass
class PurgeReport:
    """What one purge did (or, in a dry run, would do)."""

    removed: list[str] = field(default_factory=list)
    #: Files removed (relative to the storage directory).
    files: list[str] = field(default_factory=list)
    #: Executions that changed between read and removal: kept.
    changed: list[str] = field(default_factory=list)
    #: Executions written to the export.
    exported: list[str] = field(default_factory=list)
    export: str | None = None
    dry_run: bool = False

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        text = f"{verb} {len(self.removed)} execution(s) and {len(self.files)} file(s)"
        if self.changed:
            text += f"; {len(self.changed)} changed meanwhile and kept"
        if self.export:
            text += f"; {len(self.exported)} exported to {self.export}"
        return text


def retention_days(workflow: str) -> int:
    """Return the days ``workflow``'s finished executions are kept (0: forever)."""
    latest = (WorkflowDefinition._get_collection().find({"name": workflow}, {"retention_days": 1})
              .sort("version", -1).limit(1))
    found: dict[str, Any] = next(iter(latest), {})
    days = found.get("retention_days")
    return int(days) if isinstance(days, int) and not isinstance(days, bool) and days >= 0 \
        else conf.get().RETENTION_DAYS


def workflow_names() -> list[str]:
    """Return the workflows executions may belong to (those registered)."""
    return sorted(WorkflowDefinition._get_collection().distinct("name"))


def finished(workflow: str, before_ms: int | None, limit: int = 0) -> Iterator[dict[str, Any]]:
    """Yield the finished executions of ``workflow`` (finished at or before ``before_ms``)."""
    when: dict[str, Any] = {"$exists": True}
    if before_ms is not None:
        when["$lte"] = to_dt(before_ms)
    query = {"workflow": workflow, "status": {"$in": _STATUSES}, "finished_at": when}
    cursor = store.collection().find(query, {"events": 0})
    yield from (cursor.limit(limit) if limit else cursor)


def record(execution_id: str) -> dict[str, Any] | None:
    """Return an execution as the API shows it, with its whole history under ``events``."""
    from detflow_site.api.representations import EventField, Execution

    doc = store.load(execution_id)
    if doc is None:
        return None
    shown = dict(Execution(doc).data)
    shown["events"] = [EventField().to_representation(event) for event in doc.get("events", [])]
    return shown


class Export:
    """A gzip JSON Lines file that each line is flushed to disk before the caller goes on."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0
        self._raw: BinaryIO = open(path, "xb")  # noqa: SIM115 - closed by close()
        self._gzip = gzip.GzipFile(fileobj=self._raw, mode="wb")

    def write(self, item: dict[str, Any]) -> None:
        self._gzip.write(json.dumps(item, default=str, ensure_ascii=False).encode() + b"\n")
        self._gzip.flush()
        self._raw.flush()
        os.fsync(self._raw.fileno())
        self.count += 1

    def close(self) -> None:
        self._gzip.close()
        self._raw.close()


def remove(doc: dict[str, Any]) -> list[str] | None:
    """Remove one execution read as ``doc`` and what belongs to it; ``None`` if it changed."""
    execution_id = doc["_id"]
    gone = store.collection().delete_one({"_id": execution_id, "version": doc["version"],
                                          "status": {"$in": _STATUSES}})
    if gone.deleted_count != 1:
        return None
    store.history().delete_many({"execution_id": execution_id})
    Insight._get_collection().delete_many({"execution_id": execution_id})
    return remove_files(doc)


def owned_files(doc: dict[str, Any]) -> list[Path]:
    """Return the file workflow's files of an execution that exist: its upload and inbox copy.

    Each path is derived from the storage directory: the inbox from the execution id, the upload
    from ``input.path`` only when :func:`workflows.storage.resolve` finds it inside ``uploads/``.
    """
    if not any(spec.get("handler") == "files.receive" for spec in doc.get("definition", {}).get("steps", [])):
        return []
    paths = [storage.inbox_path(doc["_id"])]
    try:
        given = json.loads(doc.get("input_json") or "null")
    except ValueError:
        given = None
    if isinstance(given, dict) and "path" in given:
        try:
            paths.append(storage.resolve(given["path"], "input.path", under="uploads"))
        except PermanentError:
            logger.warning("execution %s names an upload outside uploads/: left alone", doc["_id"])
    root = storage.storage_dir().resolve()
    return [path for path in paths if path.is_file() and path.resolve().is_relative_to(root)]


def remove_files(doc: dict[str, Any]) -> list[str]:
    removed = []
    for path in owned_files(doc):
        path.unlink(missing_ok=True)
        removed.append(storage.relative(path))
    return removed


def purge(now_ms: int, limit: int = LIMIT, export_to: str | Path | None = None,
          dry_run: bool = False) -> PurgeReport:
    """Remove up to ``limit`` finished executions past their workflow's retention at ``now_ms``."""
    report = PurgeReport(dry_run=dry_run)
    export = None
    if export_to is not None and not dry_run:
        folder = Path(export_to)
        if not folder.is_dir():
            raise FileNotFoundError(f"the export directory {folder} does not exist")
        export = Export(folder / f"detflow-purge-{now_ms}.jsonl.gz")
        report.export = str(export.path)
    try:
        for workflow in workflow_names():
            days = retention_days(workflow)
            left = limit - len(report.removed)
            if days == 0 or left <= 0:
                continue
            for doc in list(finished(workflow, now_ms - days * DAY_MS, left)):
                take(doc, report, export)
    finally:
        if export is not None:
            export.close()
    return report


def take(doc: dict[str, Any], report: PurgeReport, export: Export | None) -> None:
    """Export (when asked) and remove one execution, recording it in ``report``."""
    if report.dry_run:
        report.removed.append(doc["_id"])
        report.files += [storage.relative(path) for path in owned_files(doc)]
        return
    if export is not None:
        shown = record(doc["_id"])
        if shown is None or shown.get("version") != doc["version"]:
            report.changed.append(doc["_id"])
            return
        export.write(shown)
        report.exported.append(doc["_id"])
    files = remove(doc)
    if files is None:
        report.changed.append(doc["_id"])
        return
    report.removed.append(doc["_id"])
    report.files += files


_last_pass = [float("-inf")]
_passing = threading.Lock()


def on_swept(now: int, **_: Any) -> None:
    """Start a retention pass, at most once per ``DETFLOW_PURGE_INTERVAL_S`` in this process (a
    receiver of ``executions.signals.swept``). The pass runs in a thread of its own, so that the
    sweeper goes on recovering leases and firing schedules while it removes; one at a time."""
    interval = conf.get().PURGE_INTERVAL_S
    if interval <= 0 or time.monotonic() - _last_pass[0] < interval or not _passing.acquire(blocking=False):
        return
    threading.Thread(target=_pass, args=(now,), name="detflow-retention", daemon=True).start()


def _pass(now: int) -> None:
    try:
        report = purge(now)
        _last_pass[0] = time.monotonic()  # a pass that failed is tried again at the next sweep
        if report.removed or report.changed:
            logger.info("retention: %s", report.summary())
    except Exception:
        logger.exception("retention pass failed; tried again at the next sweep")
    finally:
        _passing.release()


def export(out: str | Path, workflow: str | None = None, before_ms: int | None = None,
           purge_too: bool = False) -> PurgeReport:
    """Write every finished execution (of ``workflow``, finished before ``before_ms``) to ``out``."""
    report = PurgeReport()
    target = Export(Path(out))
    report.export = str(target.path)
    try:
        for name in [workflow] if workflow else workflow_names():
            for doc in finished(name, before_ms):
                if purge_too:
                    take(doc, report, target)
                    continue
                shown = record(doc["_id"])
                if shown is not None:
                    target.write(shown)
                    report.exported.append(doc["_id"])
    finally:
        target.close()
    return report
