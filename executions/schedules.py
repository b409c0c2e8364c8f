"""Schedules: start a workflow at the times of a cron expression, from the sweeper.

A schedule is one document of the ``schedules`` collection. :func:`fire_due` starts the execution
of each due time with the idempotency key ``schedule:<id>:<time>``, so two sweepers (or one after
a restart) never start two executions for one time, and advances ``next_fire_at`` by an update
matched on its old value, so two firers never advance it twice.
"""
from __future__ import annotations

import contextlib
import logging
import math
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter

from detflow_site import indexes
from detflow_site.errors import NotFound
from executions import operations, store
from executions.engine import TERMINAL
from executions.errors import InvalidArgument, OperationNotAllowed
from executions.store import now_ms, to_dt
from workflows import definitions

logger = logging.getLogger("detflow.schedules")

COLLECTION = "schedules"
OVERLAPS = ("skip", "allow", "cancel_previous")
#: Times one schedule fires per call at most, so that a long outage cannot loop for ever.
MAX_FIRES = 100
#: Due schedules read per call at most; the next call takes the rest.
BATCH = 200


class ScheduleNotFound(NotFound):
    """No schedule has that id."""

    default_code = "schedule_not_found"


@dataclass
class FireReport:
    """What one :func:`fire_due` did."""

    started: list[str] = field(default_factory=list)
    skipped: int = 0
    missed: int = 0
    failed: list[str] = field(default_factory=list)


def collection() -> Any:
    return indexes.collection(COLLECTION)


def _zone(name: Any) -> ZoneInfo:
    if not isinstance(name, str) or not name:
        raise InvalidArgument("timezone", "must be an IANA time zone name such as 'Europe/Paris'")
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a directory, such as 'Europe'
        raise InvalidArgument("timezone", f"{name!r} is not a known IANA time zone") from None


def _after(cron: str, zone: ZoneInfo, after_ms: int) -> int:
    """Return the first time of ``cron`` strictly after ``after_ms``, in milliseconds."""
    start = datetime.fromtimestamp(after_ms / 1000, tz=UTC).astimezone(zone)
    nxt = croniter(cron, start).get_next(datetime)
    return round(nxt.timestamp() * 1000)


def create(
    workflow: Any, cron: Any, input: Any = None, version: Any = None, timezone_name: Any = "UTC",
    overlap: Any = "skip", catch_up_s: Any = 0, created_by: str | None = None, now: int | None = None,
) -> dict[str, Any]:
    """Validate and store a schedule; return it."""
    if not isinstance(workflow, str) or not workflow:
        raise InvalidArgument("workflow", "must be the name of a registered workflow")
    if version is not None and (not isinstance(version, int) or isinstance(version, bool) or version < 1):
        raise InvalidArgument("version", "must be a positive integer")
    try:
        stored = definitions.get(workflow, version)
    except Exception as exc:
        raise InvalidArgument("workflow", str(exc)) from None
    if not isinstance(cron, str) or not croniter.is_valid(cron) or len(cron.split()) not in (5, 6):
        raise InvalidArgument("cron", f"{cron!r} is not a cron expression of 5 fields (or 6, with seconds)")
    zone = _zone(timezone_name)
    if overlap not in OVERLAPS:
        raise InvalidArgument("overlap", f"must be one of {', '.join(OVERLAPS)}")
    if (not isinstance(catch_up_s, int | float) or isinstance(catch_up_s, bool)
            or not math.isfinite(catch_up_s) or catch_up_s < 0):
        raise InvalidArgument("catch_up_s", "must be a number of seconds, 0 or more")
    operations._json(input, "input", operations.INPUT_CAP_BYTES)
    operations.check_input(stored, input)  # each start checks it again, against the version it starts
    now = now_ms() if now is None else now
    try:
        first = _after(cron, zone, now - 1)
    except CroniterError:  # such as "0 0 31 2 *": it never fires
        raise InvalidArgument("cron", f"{cron!r} never fires") from None
    doc = {
        "_id": secrets.token_hex(12), "workflow": workflow, "version": version, "input": input,
        "cron": cron, "timezone": zone.key, "overlap": overlap, "catch_up_s": catch_up_s,
        "paused": False, "next_fire_at": to_dt(first),
        "last_fired_at": None, "last_execution_id": None, "created_by": created_by,
        "created_at": to_dt(now),
    }
    collection().insert_one(doc)
    return doc


def get(schedule_id: str) -> dict[str, Any]:
    found = collection().find_one({"_id": schedule_id})
    if found is None:
        raise ScheduleNotFound(f"no schedule has id {schedule_id!r}")
    return dict(found)


def listed() -> list[dict[str, Any]]:
    return list(collection().find({}).sort("_id", 1).limit(1000))


def set_paused(schedule_id: str, paused: bool, now: int | None = None, by: str | None = None,
               reason: str = "") -> dict[str, Any]:
    """Pause or resume a schedule; a resume fires from now on (the paused times are not caught up).
    A pause records who paused it and why (``pause``: ``{by, reason, at}``); a resume removes it."""
    doc = get(schedule_id)
    now = now_ms() if now is None else now
    if paused and not doc["paused"]:
        update: dict[str, Any] = {"$set": {"paused": True,
                                           "pause": {"by": by, "reason": reason, "at": to_dt(now)}}}
    elif not paused and doc["paused"]:
        update = {"$set": {"paused": False,
                           "next_fire_at": to_dt(_after(doc["cron"], ZoneInfo(doc["timezone"]), now - 1))},
                  "$unset": {"pause": ""}}
    else:
        return doc  # paused already, or running already: nothing changes
    collection().update_one({"_id": schedule_id}, update)
    return get(schedule_id)


def delete(schedule_id: str) -> None:
    if collection().delete_one({"_id": schedule_id}).deleted_count == 0:
        raise ScheduleNotFound(f"no schedule has id {schedule_id!r}")


def fire_due(now: int | None = None) -> FireReport:
    """Start the executions of every due time of every due schedule; return what was done.

    Of a schedule's due times, the latest always fires; earlier ones (missed while no sweeper
    ran) fire only when at most ``catch_up_s`` old, and at most :data:`MAX_FIRES` per call.
    """
    now = now_ms() if now is None else now
    report = FireReport()
    due = collection().find({"next_fire_at": {"$lte": to_dt(now)}, "paused": False}).limit(BATCH)
    for doc in list(due):
        try:
            _fire(doc, now, report)
        except Exception as exc:  # one schedule that keeps failing never stops the others
            report.failed.append(doc["_id"])
            logger.warning("schedule %s failed (%s: %s)", doc["_id"], type(exc).__name__, exc)
    return report


def _fire(doc: dict[str, Any], now: int, report: FireReport) -> None:
    zone = ZoneInfo(doc["timezone"])
    sid = doc["_id"]
    old = doc["next_fire_at"]
    at = store.to_ms(old)
    assert at is not None
    last = doc.get("last_execution_id")
    fired_at = doc.get("last_fired_at")
    for _ in range(MAX_FIRES):
        if at > now:
            break
        following = _after(doc["cron"], zone, at)
        # The latest due time is on time for this call; an earlier one (missed while no sweeper
        # ran) fires only within catch_up_s.
        if following <= now and at < now - round(doc.get("catch_up_s", 0) * 1000):
            report.missed += 1
        else:
            previous = store.load(last) if last else None
            running = previous is not None and previous["status"] not in TERMINAL
            if running and doc["overlap"] == "skip":
                report.skipped += 1
            else:
                if last and running and doc["overlap"] == "cancel_previous":
                    with contextlib.suppress(OperationNotAllowed):  # it ended meanwhile
                        operations.cancel(last, by=f"schedule:{sid}", reason=f"schedule {sid} fires again")
                iso = datetime.fromtimestamp(at / 1000, tz=UTC).isoformat()
                started, _created = operations.start(
                    doc["workflow"], doc.get("input"), doc.get("version"),
                    idempotency_key=f"schedule:{sid}:{iso}", by=f"schedule:{sid}")
                last, fired_at = started["_id"], to_dt(now)
                report.started.append(last)
        at = following
    collection().update_one(
        {"_id": sid, "next_fire_at": old},
        {"$set": {"next_fire_at": to_dt(at), "last_fired_at": fired_at, "last_execution_id": last}})
