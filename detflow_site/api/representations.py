"""Response bodies, read from stored documents (dicts); the OpenAPI schema is generated from these."""
from __future__ import annotations

import datetime as dt
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from detflow_site.api.fields import JSONText
from executions.engine import ExecutionStatus, StepStatus
from workflows import inputs, masking
from workflows.spec import ON_FAILURE, ON_TIMEOUT, SLEEP_HANDLER, WAIT_HANDLER

#: What a step is: one running a handler, a sleep, or a wait for a signal.
STEP_KINDS = ("handler", "sleep", "wait")
_KIND_OF = {SLEEP_HANDLER: "sleep", WAIT_HANDLER: "wait"}


def _time(**kwargs: Any) -> serializers.DateTimeField:
    return serializers.DateTimeField(allow_null=True, **kwargs)


# Errors.


class Error(serializers.Serializer):
    """Every 4xx answer (and 503 from health/)."""

    code = serializers.CharField(help_text="Stable, machine-readable.")
    detail = serializers.CharField(help_text="What is wrong and, where it helps, how to fix it.")
    fields = serializers.DictField(child=serializers.ListField(child=serializers.CharField()),
                                   help_text="Messages by request field (dotted paths).")


# Workflows and handlers.


class RetryPolicy(serializers.Serializer):
    max_attempts = serializers.IntegerField()
    initial_delay_s = serializers.FloatField()
    multiplier = serializers.FloatField()
    max_delay_s = serializers.FloatField()
    jitter = serializers.FloatField()


class CompensateDefinition(serializers.Serializer):
    handler = serializers.CharField()
    retry = RetryPolicy()
    timeout_s = serializers.FloatField()
    non_retryable = serializers.ListField(child=serializers.CharField())


class SleepDefinition(serializers.Serializer):
    seconds = serializers.FloatField(allow_null=True, help_text="How long; null: until 'until'.")
    until = serializers.CharField(allow_null=True, help_text="The path its time is read at; null: 'seconds'.")


class WaitDefinition(serializers.Serializer):
    signal = serializers.CharField()
    timeout_s = serializers.FloatField()
    on_timeout = serializers.ChoiceField(choices=list(ON_TIMEOUT), default="fail")
    default_output = serializers.JSONField(allow_null=True, default=None)


class StepDefinition(serializers.Serializer):
    name = serializers.CharField()
    handler = serializers.CharField(help_text="detflow.sleep or detflow.wait for a sleep or a wait step.")
    retry = RetryPolicy(allow_null=True, help_text="null for a sleep or a wait step.")
    timeout_s = serializers.FloatField(allow_null=True, help_text="null for a sleep or a wait step.")
    non_retryable = serializers.ListField(child=serializers.CharField(), allow_null=True)
    max_concurrency = serializers.IntegerField(allow_null=True, help_text="null: no limit.")
    compensate = CompensateDefinition(allow_null=True,
                                      help_text="What undoes this step in a rollback; null: nothing.")
    sleep = SleepDefinition(allow_null=True, help_text="A sleep step's duration; null for other steps.")
    wait = WaitDefinition(allow_null=True, help_text="What a wait step waits for; null for other steps.")


class WorkflowVersion(serializers.Serializer):
    name = serializers.CharField()
    version = serializers.IntegerField()
    description = serializers.CharField(allow_blank=True)
    steps = StepDefinition(many=True)
    on_failure = serializers.ChoiceField(
        choices=list(ON_FAILURE), default="stop",
        help_text="When a step fails for good: stop (the execution ends FAILED) or compensate "
                  "(the compensations of the steps that succeeded run, newest first).")
    secret_inputs = serializers.ListField(
        child=serializers.CharField(), required=False, default=list,
        help_text="Input fields (dotted paths) shown as [secret] everywhere but to handlers.")
    deadline_s = serializers.FloatField(allow_null=True, required=False,
                                        help_text="Longest time an execution may take; null: none.")
    on_deadline = serializers.CharField(required=False, default="fail",
                                        help_text="Past the deadline: fail or compensate.")
    retention_days = serializers.IntegerField(
        allow_null=True, required=False,
        help_text="Days a finished execution is kept; null: the DETFLOW_RETENTION_DAYS setting.")
    input_schema = serializers.SerializerMethodField(
        help_text="The JSON Schema a start's input must match; null: any input.")
    fingerprint = serializers.CharField()
    created_at = serializers.DateTimeField()

    def get_input_schema(self, stored: Any) -> Any:
        return inputs.loads(getattr(stored, "input_schema_json", None))


class VersionSummary(serializers.Serializer):
    version = serializers.IntegerField()
    fingerprint = serializers.CharField()
    created_at = serializers.DateTimeField()


class WorkflowPause(serializers.Serializer):
    by = serializers.CharField()
    reason = serializers.CharField()
    at = serializers.DateTimeField()


class Workflow(serializers.Serializer):
    name = serializers.CharField()
    latest = WorkflowVersion()
    versions = VersionSummary(many=True, help_text="Newest first.")
    paused = WorkflowPause(allow_null=True, help_text="The workflow's pause ({by, reason, at}), or null.")


class WorkflowList(serializers.Serializer):
    results = WorkflowVersion(many=True, help_text="The latest version of each workflow, by name.")


class Handler(serializers.Serializer):
    name = serializers.CharField()
    origin = serializers.CharField(help_text="The function's dotted path.")
    summary = serializers.CharField(allow_blank=True)


class HandlerList(serializers.Serializer):
    results = Handler(many=True)


# Executions.


class StepError(serializers.Serializer):
    type = serializers.CharField()
    message = serializers.CharField(allow_blank=True)


class LogLine(serializers.Serializer):
    at = serializers.DateTimeField()
    level = serializers.CharField()
    message = serializers.CharField(allow_blank=True)


class Attempt(serializers.Serializer):
    n = serializers.IntegerField()
    worker = serializers.CharField(allow_null=True)
    fence = serializers.IntegerField(allow_null=True, help_text="The execution version the claim wrote.")
    started_at = _time()
    ended_at = _time()
    duration_ms = serializers.IntegerField(allow_null=True)
    outcome = serializers.CharField(help_text="succeeded, failed, timed_out or lost")
    error_type = serializers.CharField(allow_null=True)
    message = serializers.CharField(allow_null=True, allow_blank=True)
    traceback = serializers.CharField(allow_null=True, allow_blank=True)
    logs = LogLine(many=True, default=list)
    logs_dropped = serializers.IntegerField(default=0)


class CurrentAttempt(serializers.Serializer):
    n = serializers.IntegerField()
    worker = serializers.CharField()
    fence = serializers.IntegerField()
    started_at = serializers.DateTimeField()


class Step(serializers.Serializer):
    name = serializers.CharField()
    handler = serializers.CharField(help_text="detflow.sleep or detflow.wait for a sleep or a wait step.")
    kind = serializers.SerializerMethodField()
    status = serializers.ChoiceField(choices=[s.value for s in StepStatus],
                                     help_text="WAITING: a sleep or a wait under way (no worker holds it).")
    wake_at = _time(help_text="While WAITING: when a sleep ends or a wait times out; null otherwise.")
    attempt = serializers.IntegerField(help_text="Attempts started, over every budget.")
    budget_base = serializers.IntegerField(help_text="`attempt` when the current budget opened.")
    started_at = _time()
    finished_at = _time()
    next_retry_at = _time()
    lease_expires_at = _time()
    heartbeat_at = _time()
    current = CurrentAttempt(allow_null=True, help_text="The running attempt, if any.")
    input = JSONText(source="input_json", allow_null=True,
                     help_text="This step's own input, set by a retry with an edited input.")
    output = JSONText(source="output_json", allow_null=True)
    output_bytes = serializers.IntegerField(allow_null=True)
    error = StepError(allow_null=True)
    attempts = Attempt(many=True, help_text="The latest attempt records, oldest first.")

    @extend_schema_field(serializers.ChoiceField(
        choices=list(STEP_KINDS), help_text="handler: runs a handler; sleep: waits for a time; wait: "
                                            "waits for a signal (its output: the signal's payload)."))
    def get_kind(self, stored: dict[str, Any]) -> str:
        return _KIND_OF.get(stored.get("handler", ""), "handler")


class Signal(serializers.Serializer):
    """A signal sent to an execution, kept until a wait step for its name takes it."""

    name = serializers.CharField()
    key = serializers.CharField(allow_null=True, help_text="Its Idempotency-Key; null: none was sent.")
    by = serializers.CharField(help_text="Who sent it.")
    reason = serializers.CharField(allow_blank=True)
    at = serializers.DateTimeField(help_text="When it came.")
    consumed_by = serializers.CharField(allow_null=True, default=None,
                                        help_text="The wait step that took it; null: kept, not taken yet.")
    payload = JSONText(source="payload_json", allow_null=True,
                       help_text="What it carries (the output of the step that takes it).")


class Compensation(serializers.Serializer):
    """What undoes one step in a rollback: a durable step of its own, with its own attempts."""

    name = serializers.CharField(help_text="The step it undoes.")
    step_index = serializers.IntegerField(help_text="That step's place in `steps`.")
    handler = serializers.CharField()
    status = serializers.ChoiceField(choices=[s.value for s in StepStatus])
    attempt = serializers.IntegerField(help_text="Attempts started, over every budget.")
    budget_base = serializers.IntegerField(help_text="`attempt` when the current budget opened.")
    started_at = _time()
    finished_at = _time()
    next_retry_at = _time()
    lease_expires_at = _time()
    heartbeat_at = _time()
    current = CurrentAttempt(allow_null=True, help_text="The running attempt, if any.")
    output = JSONText(source="output_json", allow_null=True)
    output_bytes = serializers.IntegerField(allow_null=True)
    error = StepError(allow_null=True, help_text="The last failure; null once it succeeded.")
    attempts = Attempt(many=True, help_text="The latest attempt records, oldest first.")

    def to_representation(self, stored: dict[str, Any]) -> Any:
        shown = super().to_representation(stored)
        if stored.get("status") == StepStatus.SUCCEEDED:
            shown["error"] = None  # an attempt that failed before the one that succeeded
        return shown


class RollbackCause(serializers.Serializer):
    step = serializers.CharField(allow_null=True, help_text="The step that failed; null: a cancellation.")
    error_type = serializers.CharField(allow_blank=True)
    message = serializers.CharField(allow_blank=True)


class Rollback(serializers.Serializer):
    by = serializers.CharField(allow_null=True, help_text="The operator; null: the workflow's on_failure.")
    reason = serializers.CharField(allow_null=True, allow_blank=True)
    started_at = serializers.DateTimeField()
    cause = RollbackCause(help_text="What the execution is rolled back for.")


class ExecutionSummary(serializers.Serializer):
    id = serializers.CharField(source="_id")
    workflow = serializers.CharField()
    workflow_version = serializers.IntegerField()
    status = serializers.ChoiceField(choices=[s.value for s in ExecutionStatus])
    idempotency_key = serializers.CharField(allow_null=True)
    failed_step = serializers.CharField(
        allow_null=True, help_text="The step that failed for good (kept while its failure is rolled back).")
    failed_compensation = serializers.CharField(
        allow_null=True, help_text="The step whose compensation failed for good, while COMPENSATION_FAILED.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()
    finished_at = _time()


class Execution(ExecutionSummary):
    version = serializers.IntegerField(help_text="Incremented by every state change.")
    due_at = _time(help_text="When a worker must next look at it; null when idle.")
    created_by = serializers.SerializerMethodField()
    input = JSONText(source="input_json")
    steps = Step(many=True)
    compensations = Compensation(many=True, default=list,
                                 help_text="A rollback's compensations, in the order they run; "
                                           "empty unless one started.")
    rollback = Rollback(allow_null=True, help_text="Who started the rollback, why and for what.")
    signals = Signal(many=True, default=list, help_text="The signals sent to it, in the order they came.")
    event_count = serializers.IntegerField(source="event_seq")
    paused = serializers.DictField(default=dict, help_text="The pauses holding it, by scope (execution, "
                                   "workflow): {by, reason, at}; empty when none holds it.")

    def to_representation(self, doc: dict[str, Any]) -> Any:
        return super().to_representation(masking.execution(doc))

    @extend_schema_field(serializers.CharField(allow_null=True))
    def get_created_by(self, doc: dict[str, Any]) -> str | None:
        if "created_by" in doc:
            return doc["created_by"]  # type: ignore[no-any-return]
        first = (doc.get("events") or [{}])[0]  # stored before created_by was
        return first.get("by") if first.get("type") == "created" else None


class ExecutionPage(serializers.Serializer):
    results = ExecutionSummary(many=True)
    next = serializers.URLField(allow_null=True, help_text="The next page; null on the last one.")


@extend_schema_field({
    "type": "object",
    "properties": {"seq": {"type": "integer"}, "at": {"type": "string", "format": "date-time"},
                   "type": {"type": "string"}},
    "required": ["seq", "at", "type"],
    "additionalProperties": True,
})
class EventField(serializers.Field):
    """One history event: ``seq``, ``at``, ``type`` and the fields of its type."""

    def to_representation(self, event: dict[str, Any]) -> dict[str, Any]:
        return {k: _iso(v) for k, v in event.items()}


class EventPage(serializers.Serializer):
    results = serializers.ListField(child=EventField())
    next = serializers.URLField(allow_null=True, help_text="The next page; null on the last one.")


class Change(serializers.Serializer):
    before = serializers.CharField(allow_blank=True, help_text="Empty for a compensation a rollback adds.")
    after = serializers.CharField()


class ActionResult(serializers.Serializer):
    execution_id = serializers.CharField()
    action = serializers.CharField()
    dry_run = serializers.BooleanField()
    changes = serializers.DictField(child=Change(),
                                    help_text='"execution", "steps.<name>" and "compensations.<name>" '
                                              'status changes.')
    event = serializers.DictField(help_text="The event recorded (or that would be).")
    execution = ExecutionSummary(help_text="The execution after the action (unchanged by a dry run).")


class SignalResult(serializers.Serializer):
    execution_id = serializers.CharField()
    name = serializers.CharField(help_text="The signal's name.")
    signal_index = serializers.IntegerField(help_text="Its place in the execution's `signals`.")
    created = serializers.BooleanField(help_text="False: the same Idempotency-Key and payload were "
                                                 "sent before; nothing changed.")
    consumed_by = serializers.CharField(allow_null=True,
                                        help_text="The wait step that took it, if one has already; null: "
                                                  "kept until its wait step takes it.")
    execution = ExecutionSummary(help_text="The execution after the signal.")


class PlannedCompensation(serializers.Serializer):
    step = serializers.CharField(help_text="The step it undoes.")
    step_index = serializers.IntegerField()
    handler = serializers.CharField()
    status = serializers.ChoiceField(choices=[s.value for s in StepStatus], help_text="The step's.")
    output = serializers.JSONField(allow_null=True, help_text="The step's output, which the handler gets.")


class CompensateResult(ActionResult):
    plan = PlannedCompensation(many=True, help_text="The compensations, in the order they run.")


class NextAction(serializers.Serializer):
    action = serializers.ChoiceField(
        choices=["claim", "compensate", "wait", "recover_lost", "finish", "rollback", "start_wait",
                 "take_signal", "wake", "expire", "none"],
        help_text="compensate: claim a compensation; rollback: start one; start_wait: start a sleep or "
                  "a wait step; take_signal: a waiting step takes its signal; wake: a sleep ends or a "
                  "wait times out; expire: the workflow's deadline passed, the step waiting to start fails.")
    step = serializers.CharField(allow_null=True)
    attempt = serializers.IntegerField(allow_null=True)
    at = _time(help_text="Until when it waits.")
    reason = serializers.CharField(allow_null=True, help_text="lease or retry for a wait; why for none.")


class Lease(serializers.Serializer):
    step = serializers.CharField()
    attempt = serializers.IntegerField(allow_null=True)
    worker = serializers.CharField(allow_null=True)
    expires_at = _time()
    expired = serializers.BooleanField()
    heartbeat_at = _time()
    since_heartbeat_ms = serializers.IntegerField(allow_null=True)


class Lock(serializers.Serializer):
    held = serializers.BooleanField()
    ttl_ms = serializers.IntegerField(allow_null=True, help_text="Time left; null when not held.")
    holder = serializers.CharField(allow_null=True, help_text="The worker of the running attempt.")


class Messages(serializers.Serializer):
    queued = serializers.IntegerField(help_text="Waiting in the queue.")
    fetched = serializers.IntegerField(help_text="Fetched by a worker, not yet acknowledged.")
    delayed = serializers.IntegerField(help_text="On the delay queue (a retry).")
    next_eta = _time()
    waited_ms = serializers.IntegerField(allow_null=True, help_text="Age of the oldest queued one.")
    scanned = serializers.IntegerField()
    complete = serializers.BooleanField(help_text="False when the scan stopped before the end.")


class Reachability(serializers.Serializer):
    reachable = serializers.BooleanField()
    error = serializers.CharField(allow_null=True)


class Repair(serializers.Serializer):
    action = serializers.ChoiceField(choices=["none", "wait", "sweep", "start_worker", "operator", "redis"])
    command = serializers.CharField(allow_null=True)
    detail = serializers.CharField()


class Concurrency(serializers.Serializer):
    limit = serializers.IntegerField()
    held = serializers.IntegerField(help_text="Live attempts of the step holding a slot now.")
    waiting_for_slot = serializers.BooleanField()


class Diagnosis(serializers.Serializer):
    execution_id = serializers.CharField()
    status = serializers.ChoiceField(choices=[s.value for s in ExecutionStatus])
    checked_at = serializers.DateTimeField()
    summary = serializers.CharField()
    next = NextAction(help_text="What the engine would do now.")
    due_at = _time()
    overdue_ms = serializers.IntegerField(allow_null=True)
    lease = Lease(allow_null=True, help_text="The running attempt's lease.")
    lock = Lock(allow_null=True, help_text="The execution's Redis lock; null when Redis is unreachable.")
    messages = Messages(allow_null=True, help_text="Null when Redis is unreachable.")
    redis = Reachability()
    concurrency = Concurrency(allow_null=True, help_text="Null unless the next step has max_concurrency.")
    stuck = serializers.BooleanField()
    repair = Repair()


class Service(serializers.Serializer):
    """One service's state; its latency and error only for staff users (absent for anyone else)."""

    ok = serializers.BooleanField()
    latency_ms = serializers.FloatField(allow_null=True, required=False,
                                        help_text="staff users only; null when the service failed")
    error = serializers.CharField(allow_null=True, required=False,
                                  help_text="staff users only; null when the service answered")


class Health(serializers.Serializer):
    status = serializers.ChoiceField(choices=["ok", "degraded"])
    mongodb = Service()
    redis = Service()


def _iso(value: Any) -> Any:
    if isinstance(value, dt.datetime):
        return serializers.DateTimeField().to_representation(value)
    return value
