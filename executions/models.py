"""The Execution document: one run of a pinned workflow definition, its steps and its history.

Writers never ``save()`` an existing execution: every change is one conditional update matched on
``version`` (see ``executions.transitions``). This class declares the fields and the indexes that
every query of the API, the admin and the sweeper relies on.
"""
from __future__ import annotations

import mongoengine as me


class Execution(me.Document):
    """One run of a workflow version."""

    #: Random hex id, also the first half of every step's idempotency key.
    id = me.StringField(primary_key=True)
    workflow = me.StringField(required=True)
    workflow_version = me.IntField(required=True)
    #: The definition pinned at start: ``{"name", "version", "description", "steps": [...]}``.
    definition = me.DictField(required=True)
    #: The input as JSON text (any JSON value; text keeps keys MongoDB would refuse).
    input_json = me.StringField(required=True)
    #: Optional caller key; unique per workflow, so a repeated start returns the first execution.
    idempotency_key = me.StringField()
    status = me.StringField(required=True)
    #: Who started it (an API user, ``demo``); ``None`` when the caller did not say.
    created_by = me.StringField()
    #: The events up to this ``seq`` moved to the history collection (``executions.store.history``).
    history_seq = me.IntField()
    #: Bytes (BSON) of the events the document holds; past ``store.EVENTS_BYTES`` the oldest move out.
    events_bytes = me.IntField()
    #: Incremented by every state change; the fencing token of each claim.
    version = me.IntField(required=True)
    #: Sequence number of the newest event (events are numbered 1, 2, 3, ... without gaps).
    event_seq = me.IntField(required=True)
    created_at = me.DateTimeField(required=True)
    updated_at = me.DateTimeField(required=True)
    finished_at = me.DateTimeField()
    #: When a worker must next look at it (claim, retry, lease expiry); unset when idle.
    due_at = me.DateTimeField()
    #: Name of the step that failed, while the execution is FAILED.
    failed_step = me.StringField()
    #: One dict per step: status, attempt counters, lease, output, current attempt, attempt records.
    steps = me.ListField(me.DictField(), required=True)
    #: A rollback's compensations, in the order they run (as steps: status, attempts, output, ...),
    #: why it started (``{by, reason, started_at, cause}``), and the step whose compensation failed
    #: for good.
    compensations = me.ListField(me.DictField())
    rollback = me.DictField()
    failed_compensation = me.StringField()
    #: The pauses holding it: ``{"execution"|"workflow": {"by", "reason", "at"}}``; unset when none.
    paused = me.DictField()
    #: The bulk operations that acted on it, newest last (at most ``store.BULK_KEPT``).
    bulk_operations = me.ListField(me.StringField())
    #: The history: ``{"seq", "at", "type", ...}`` dicts, appended by the same update as each change.
    events = me.ListField(me.DictField(), required=True)

    meta = {
        "collection": "executions",
        "strict": False,
        # Created by ``manage.py ensure_indexes`` (detflow_site.indexes), never on first access.
        "auto_create_index": False,
        # The API lists executions by equality on the leading fields and in (created_at, _id)
        # order: each filter it offers has an index here that serves both (detflow_site.api.filters).
        # A partial filter is ``$exists: true``, which an equality on the field implies (the
        # planner uses a partial index only when the query implies its filter; an equality does
        # not imply ``$type``); the engine unsets these fields, it never stores them as null.
        "indexes": [
            # The sweeper, and the console's overdue list: due_at ranges in due_at order.
            {"fields": ["due_at"], "sparse": True},
            ["-created_at", "-id"],
            ["status", "-created_at", "-id"],
            ["workflow", "-created_at", "-id"],
            ["workflow", "status", "-created_at", "-id"],
            ["workflow", "workflow_version", "-created_at", "-id"],
            # A step baseline reads the newest SUCCEEDED executions of one workflow version.
            ["workflow", "workflow_version", "status", "-created_at", "-id"],
            # Failures at one step, of any workflow or of one (only FAILED executions have one).
            {"fields": ["failed_step", "-created_at", "-id"],
             "partialFilterExpression": {"failed_step": {"$exists": True}}},
            {"fields": ["workflow", "failed_step", "-created_at", "-id"],
             "partialFilterExpression": {"failed_step": {"$exists": True}}},
            # A retention purge: the finished executions of one workflow, finished before a time
            # (the purge's query names finished_at with a range, which implies the filter).
            {"fields": ["workflow", "status", "finished_at"],
             "partialFilterExpression": {"finished_at": {"$exists": True}}},
            # The console's search by idempotency key, in any workflow.
            {"fields": ["idempotency_key", "-created_at", "-id"],
             "partialFilterExpression": {"idempotency_key": {"$exists": True}}},
            # One execution per (workflow, key); executions started without a key have no field,
            # so any number of them coexist. A repeated start looks the first one up by it.
            {
                "fields": ["workflow", "idempotency_key"],
                "unique": True,
                "partialFilterExpression": {"idempotency_key": {"$exists": True}},
            },
            # The executions a workflow's pause holds (lifted when the workflow is resumed).
            {"fields": ["workflow", "paused.workflow.at"],
             "partialFilterExpression": {"paused.workflow.at": {"$exists": True}}},
        ],
    }

    def __str__(self) -> str:
        return f"{self.workflow} v{self.workflow_version} {self.id} {self.status}"


class WorkflowControl(me.Document):
    """A workflow's pause: while ``paused`` is set, none of its executions starts a step (each is
    held at its next step boundary, a new one from its start); ``release``, while set, is a resume
    whose holds are still being lifted (the sweeper finishes it after a crash)."""

    #: The workflow's name.
    id = me.StringField(primary_key=True)
    #: ``{"by", "reason", "at"}`` while the workflow is paused.
    paused = me.DictField()
    #: ``{"by", "reason", "at"}`` while a resume lifts its executions' holds.
    release = me.DictField()

    meta = {
        "collection": "workflow_controls",
        "strict": False,
        "auto_create_index": False,
        # A tiny collection, one document per workflow; still, every read is served by an index:
        # the paused ones (workers), the unfinished resumes (the sweeper), and one workflow's pause or
        # resume matched on its name and state (a pause, a resume, its end).
        "indexes": [
            {"fields": ["paused.at"], "partialFilterExpression": {"paused.at": {"$exists": True}}},
            {"fields": ["release.at"], "partialFilterExpression": {"release.at": {"$exists": True}}},
            ["id", "paused.at"],
            ["id", "release.at"],
        ],
    }
