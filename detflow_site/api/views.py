"""Workflows, handlers, executions and operator actions."""
from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import replace_query_param
from rest_framework.views import APIView

from detflow_site.api import filters, representations
from detflow_site.api.serializers import (
    MAX_VERSION,
    ActionRequest,
    CompensateRequest,
    DefinitionBody,
    RetryRequest,
    SignalRequest,
    SkipRequest,
    StartRequest,
)
from detflow_site.api.throttles import StartThrottle
from executions import controls, diagnosis, operations, store
from executions.engine import ExecutionStatus
from executions.errors import ExecutionNotFound, IdempotencyConflict, InvalidArgument
from workflows import definitions, masking, registry
from workflows.builtin import FILE_PROCESSING, ensure_file_processing
from workflows.errors import WorkflowNotFound
from workflows.spec import NAME_RE

#: Events per page unless ``limit`` says otherwise, and the most it may say.
EVENTS_PAGE = 100
MAX_EVENTS_PAGE = 1000
#: Largest ``after`` an events page takes (a ``seq`` never gets near).
MAX_AFTER = 2**62
#: An ``Idempotency-Key``: 1 to 200 visible ASCII characters (spaces inside allowed).
IDEMPOTENCY_KEY_RE = re.compile(r"[\x21-\x7e](?:[\x20-\x7e]{0,198}[\x21-\x7e])?")

IDEMPOTENCY_KEY = OpenApiParameter(
    "Idempotency-Key", {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_RE.pattern}$"},
    OpenApiParameter.HEADER, required=False,
    description="Makes a retried request safe: the same key (per workflow) and body answer 200 with the "
                "execution the first request created; the same key with another body answers 409.",
)
NAME = {"type": "string", "minLength": 1, "maxLength": 100}


def _integer(low: int, high: int) -> dict[str, Any]:
    """Return the schema of an integer query parameter that ``filters.integer`` bounds so."""
    return {"type": "integer", "minimum": low, "maximum": high}
#: The handler that reads ``input.path`` from the server's disk.
RECEIVE = "files.receive"


# Workflows and handlers.


class WorkflowListView(APIView):
    @extend_schema(responses=representations.WorkflowList, operation_id="workflows_list",
                   summary="The latest version of each workflow")
    def get(self, request: Request) -> Response:
        latest = definitions.latest_versions()
        return Response({"results": representations.WorkflowVersion(latest, many=True).data})

    @extend_schema(request=DefinitionBody,
                   responses={201: representations.WorkflowVersion, 200: representations.WorkflowVersion},
                   summary="Register a definition (the same definition again returns its version)")
    def post(self, request: Request) -> Response:
        stored, created = definitions.register(request.data)
        return Response(representations.WorkflowVersion(stored).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


class WorkflowDetailView(APIView):
    @extend_schema(responses=representations.Workflow,
                   summary="A workflow: its latest version and all versions")
    def get(self, request: Request, name: str) -> Response:
        stored = definitions.versions(name) if NAME_RE.fullmatch(name) else []
        if not stored:
            definitions.get(name)  # raises WorkflowNotFound, listing the known workflows
        return Response(representations.Workflow({
            "name": name,
            "latest": stored[0],
            "versions": [{"version": d.version, "fingerprint": d.fingerprint, "created_at": d.created_at}
                         for d in stored],
            "paused": controls.paused(name),
        }).data)


class ReasonRequest(serializers.Serializer):  # type: ignore[misc]
    reason = serializers.CharField()


class WorkflowPauseResult(serializers.Serializer):  # type: ignore[misc]
    workflow = serializers.CharField()
    paused = serializers.BooleanField()
    by = serializers.CharField(allow_null=True)
    reason = serializers.CharField(allow_null=True)
    released = serializers.IntegerField()


class WorkflowPauseView(APIView):
    @extend_schema(request=ReasonRequest, responses=WorkflowPauseResult,
                   summary="Pause a workflow: new executions stay PENDING, running ones stop at a step")
    def post(self, request: Request, name: str) -> Response:
        checked = ReasonRequest(data=request.data)
        checked.is_valid(raise_exception=True)
        reason = checked.validated_data["reason"]
        result = operations.pause_workflow(name, request.user.get_username(), reason)
        return Response(WorkflowPauseResult(dataclasses.asdict(result)).data)


class WorkflowResumeView(APIView):
    @extend_schema(request=ReasonRequest, responses=WorkflowPauseResult,
                   summary="Resume a paused workflow: the executions its pause held go on")
    def post(self, request: Request, name: str) -> Response:
        checked = ReasonRequest(data=request.data)
        checked.is_valid(raise_exception=True)
        reason = checked.validated_data["reason"]
        result = operations.resume_workflow(name, request.user.get_username(), reason)
        return Response(WorkflowPauseResult(dataclasses.asdict(result)).data)


class WorkflowVersionView(APIView):
    @extend_schema(responses=representations.WorkflowVersion, summary="One version of a workflow")
    def get(self, request: Request, name: str, version: int) -> Response:
        if not NAME_RE.fullmatch(name) or not 1 <= version <= MAX_VERSION:
            raise WorkflowNotFound(f"workflow {name!r} has no version {version}")
        return Response(representations.WorkflowVersion(definitions.get(name, version)).data)


class HandlerListView(APIView):
    @extend_schema(responses=representations.HandlerList, summary="The handlers a definition may name")
    def get(self, request: Request) -> Response:
        return Response({"results": [registry.describe(name) for name in registry.known_handlers()]})


# Executions.


class ExecutionListView(APIView):
    def get_throttles(self) -> list[Any]:
        return [StartThrottle()] if self.request.method == "POST" else []

    @extend_schema(
        parameters=[
            OpenApiParameter("status", str, enum=[s.value for s in ExecutionStatus]),
            OpenApiParameter("workflow", NAME),
            OpenApiParameter("version", _integer(1, MAX_VERSION), description="Needs workflow."),
            OpenApiParameter("created_after", OpenApiTypes.DATETIME, description="Inclusive."),
            OpenApiParameter("created_before", OpenApiTypes.DATETIME, description="Exclusive."),
            OpenApiParameter("failed_step", NAME),
            OpenApiParameter("ordering", str, enum=list(filters.ORDERINGS)),
            OpenApiParameter("cursor", str, description="From a `next` link."),
            OpenApiParameter("page_size", _integer(1, filters.MAX_PAGE_SIZE),
                             description=f"1 to {filters.MAX_PAGE_SIZE}."),
        ],
        responses=representations.ExecutionPage, operation_id="executions_list",
        summary="Executions, filtered, newest first unless ordered otherwise",
    )
    def get(self, request: Request) -> Response:
        query = filters.parse(request.query_params)
        rows, cursor = query.page(dict.fromkeys(filters.SUMMARY_FIELDS, 1))
        next_url = replace_query_param(request.build_absolute_uri(), "cursor", cursor) if cursor else None
        return Response({"results": representations.ExecutionSummary(rows, many=True).data,
                         "next": next_url})

    @extend_schema(
        request=StartRequest, parameters=[IDEMPOTENCY_KEY],
        responses={201: representations.Execution, 200: representations.Execution},
        summary="Start an execution (stored first, then dispatched: works while Redis is down)",
    )
    def post(self, request: Request) -> Response:
        body = StartRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        given = data["input"]
        doc, created = start(request, data["workflow"], given, data.get("version"))
        if not created and not (_same_json(doc["input_json"], given) and
                                data.get("version") in (None, doc["workflow_version"])):
            raise IdempotencyConflict(
                f"Idempotency-Key {doc.get('idempotency_key')!r} was used for execution {doc['_id']} "
                "with another version or input; use a new key for a new request")
        return Response(representations.Execution(doc).data,
                        status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


def start(
    request: Request, workflow: str, given: Any, version: int | None = None, *, server_path: bool = False
) -> tuple[dict[str, Any], bool]:
    """Start ``workflow`` for the requesting user, with the request's ``Idempotency-Key``.

    ``files.receive`` copies the file at ``input.path`` from the server's disk: only the upload
    view (``server_path``), which chose that path itself, may pass one to a workflow using it.
    """
    key = idempotency_key(request)
    try:
        if workflow == FILE_PROCESSING:
            ensure_file_processing()  # built in: a deployment has it before anyone registers it
        # The version checked is the version started: "latest" is looked up once, here.
        stored = definitions.get(workflow, version)
        reads_path = any(step["handler"] == RECEIVE for step in stored.steps)
        if not server_path and isinstance(given, dict) and "path" in given and reads_path:
            raise InvalidArgument("input.path", f"{RECEIVE} would read this path on the server; upload "
                                  "the file with POST files/, or send it as content_b64", "forbidden")
        return operations.start(workflow, given, idempotency_key=key, by=request.user.get_username(),
                                definition=stored)
    except WorkflowNotFound as exc:
        raise InvalidArgument(exc.field or "workflow", str(exc), "unknown_workflow") from None


def idempotency_key(request: Request) -> str | None:
    """Return the request's ``Idempotency-Key`` (``None`` without one), refusing a malformed one."""
    key = request.headers.get("Idempotency-Key")
    if key is not None and not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise InvalidArgument("Idempotency-Key", "must be 1 to 200 visible ASCII characters", "invalid")
    return key


def _same_json(stored: str, given: Any) -> bool:
    def canonical(value: Any) -> str:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)

    return canonical(json.loads(stored)) == canonical(given)


class ExecutionDetailView(APIView):
    @extend_schema(responses=representations.Execution, summary="An execution: its steps and attempts")
    def get(self, request: Request, execution_id: str) -> Response:
        # The history is its own page (events/): not read here.
        doc = store.collection().find_one({"_id": execution_id}, {"events": 0})
        if doc is None:
            raise ExecutionNotFound(f"execution {execution_id} does not exist")
        if "created_by" not in doc:  # stored before created_by was: its first event says
            doc["events"] = store.events_after(execution_id, 0, 1) or []
        return Response(representations.Execution(doc).data)


class ExecutionEventsView(APIView):
    @extend_schema(
        parameters=[OpenApiParameter("after", _integer(0, MAX_AFTER),
                                     description="Events after this `seq` (default 0)."),
                    OpenApiParameter("limit", _integer(1, MAX_EVENTS_PAGE),
                                     description=f"1 to {MAX_EVENTS_PAGE}.")],
        responses=representations.EventPage, summary="An execution's history, oldest first",
    )
    def get(self, request: Request, execution_id: str) -> Response:
        query = request.query_params
        unknown = sorted(set(query) - {"after", "limit"})
        if unknown:
            raise InvalidArgument(unknown[0], "unknown parameter; allowed: after, limit", "unknown_field")
        after = filters.integer(query, "after", 0, MAX_AFTER) if "after" in query else 0
        limit = filters.integer(query, "limit", 1, MAX_EVENTS_PAGE) if "limit" in query else EVENTS_PAGE
        events = store.events_after(execution_id, after, limit + 1)
        if events is None:
            raise ExecutionNotFound(f"execution {execution_id} does not exist")
        if events:
            doc = store.collection().find_one({"_id": execution_id}, masking.PROJECTION) or {}
            events = [masking.event(doc, e) for e in events]
        next_url = None
        if len(events) > limit:
            events = events[:limit]
            next_url = replace_query_param(request.build_absolute_uri(), "after", events[-1]["seq"])
        return Response(representations.EventPage({"results": events, "next": next_url}).data)


class DiagnosisView(APIView):
    @extend_schema(responses=representations.Diagnosis,
                   summary="Why an execution is where it is, and the safe repair when it is stuck")
    def get(self, request: Request, execution_id: str) -> Response:
        return Response(representations.Diagnosis(diagnosis.diagnose(execution_id).as_dict()).data)


# Operator actions.


class ActionView(APIView):
    """``POST executions/{id}/<action>/``: the body names a reason; ``dry_run`` changes nothing."""

    def act(self, request: Request, execution_id: str, body: type[ActionRequest], action: str) -> Response:
        checked = body(data=request.data)
        checked.is_valid(raise_exception=True)
        data = dict(checked.validated_data)
        by = request.user.get_username()
        more: dict[str, Any] = {}
        if action == "compensate":
            result, planned = operations.compensate(execution_id, by, data["reason"], dry_run=data["dry_run"],
                                                    include_skipped=data["include_skipped"])
            more["plan"] = [dataclasses.asdict(p) for p in planned]
        elif action == "cancel":
            result = operations.cancel(execution_id, by, data["reason"], dry_run=data["dry_run"])
        elif action == "pause":
            result = operations.pause(execution_id, by, data["reason"], dry_run=data["dry_run"])
        elif action == "resume":
            result = operations.resume(execution_id, by, data["reason"], dry_run=data["dry_run"])
        elif action == "retry":
            edited = {"input": data["input"]} if "input" in data else {}
            if edited:
                refuse_server_path(execution_id, edited["input"])
            result = operations.retry(execution_id, by, data["reason"], dry_run=data["dry_run"], **edited)
        else:
            result = operations.skip(execution_id, by, data["reason"], output=data["output"],
                                     step=data.get("step"), dry_run=data["dry_run"])
        doc = store.collection().find_one({"_id": execution_id},
                                          {**dict.fromkeys(filters.SUMMARY_FIELDS, 1), **masking.PROJECTION})
        shape = representations.CompensateResult if action == "compensate" else representations.ActionResult
        return Response(shape({
            "execution_id": result.execution_id, "action": result.action, "dry_run": result.dry_run,
            "changes": {k: {"before": old, "after": new} for k, (old, new) in result.changes.items()},
            "event": masking.event(doc or {}, result.event), "execution": doc, **more,
        }).data)


def refuse_server_path(execution_id: str, edited: Any) -> None:
    """Refuse a retry's edited input that points ``files.receive`` at a path on the server.

    Only a FAILED execution's step takes an edited input (a failed compensation takes none, and
    the retry itself says so)."""
    if isinstance(edited, dict) and "path" in edited:
        doc = store.load(execution_id) or {}
        failed = doc.get("steps", []) if doc.get("status") == ExecutionStatus.FAILED else []
        if any(s["status"] == "FAILED" and s["handler"] == RECEIVE for s in failed):
            raise InvalidArgument("input.path", f"{RECEIVE} would read this path on the server; "
                                  "send the file as content_b64", "forbidden")


class CancelView(ActionView):
    @extend_schema(request=ActionRequest, responses=representations.ActionResult,
                   summary="Cancel: no further step starts (a running attempt may finish)")
    def post(self, request: Request, execution_id: str) -> Response:
        return self.act(request, execution_id, ActionRequest, "cancel")


class PauseView(ActionView):
    @extend_schema(request=ActionRequest, responses=representations.ActionResult,
                   summary="Pause: the execution starts no further step until resumed (a running attempt "
                           "finishes)")
    def post(self, request: Request, execution_id: str) -> Response:
        return self.act(request, execution_id, ActionRequest, "pause")


class ResumeView(ActionView):
    @extend_schema(request=ActionRequest, responses=representations.ActionResult,
                   summary="Resume a paused execution: it goes on from its next step")
    def post(self, request: Request, execution_id: str) -> Response:
        return self.act(request, execution_id, ActionRequest, "resume")


class RetryView(ActionView):
    @extend_schema(request=RetryRequest, responses=representations.ActionResult,
                   summary="Retry a FAILED execution from its failed step, with a new attempt budget "
                           "(or, COMPENSATION_FAILED, its failed compensation: the rollback goes on)")
    def post(self, request: Request, execution_id: str) -> Response:
        return self.act(request, execution_id, RetryRequest, "retry")


class SkipView(ActionView):
    @extend_schema(request=SkipRequest, responses=representations.ActionResult,
                   summary="Skip the failed step, with an output standing in for its result (or, "
                           "COMPENSATION_FAILED, its failed compensation, without an output)")
    def post(self, request: Request, execution_id: str) -> Response:
        return self.act(request, execution_id, SkipRequest, "skip")


class CompensateView(ActionView):
    @extend_schema(request=CompensateRequest, responses=representations.CompensateResult,
                   summary="Roll back a FAILED or CANCELLED execution: run the compensations of its "
                           "succeeded steps, newest first (the plan answered; a dry run changes nothing)")
    def post(self, request: Request, execution_id: str) -> Response:
        return self.act(request, execution_id, CompensateRequest, "compensate")


# Signals.

SIGNAL_KEY = OpenApiParameter(
    "Idempotency-Key", {"type": "string", "pattern": f"^{IDEMPOTENCY_KEY_RE.pattern}$"},
    OpenApiParameter.HEADER, required=False,
    description="Makes a retried signal safe: the same key (per signal name) and payload answer 200 "
                "with the signal first sent, storing nothing; the same key with another payload "
                "answers 409.",
)
SIGNAL_NAME = OpenApiParameter(
    "name", {"type": "string", "pattern": f"^{NAME_RE.pattern}$"}, OpenApiParameter.PATH,
    description="The signal: a wait step of the execution names it (`wait.signal`).",
)


class SignalView(APIView):
    """``POST executions/{id}/signals/{name}/``: open to operators and to signallers, who may do
    nothing else (``permissions.HasRole``)."""

    signallers_may_post = True

    @extend_schema(
        request=SignalRequest, parameters=[SIGNAL_NAME, SIGNAL_KEY],
        responses={201: representations.SignalResult, 200: representations.SignalResult},
        operation_id="executions_signal",
        summary="Send a signal: the wait step for it takes it now, or when it starts (kept until then); "
                "its payload becomes that step's output",
    )
    def post(self, request: Request, execution_id: str, name: str) -> Response:
        if not NAME_RE.fullmatch(name):
            raise InvalidArgument("name", "a signal name is 1 to 100 letters, digits, '.', '_' or '-', "
                                  "starting with a letter or digit", "invalid")
        body = SignalRequest(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        result = operations.signal(execution_id, name, data["payload"], by=request.user.get_username(),
                                   reason=data["reason"], idempotency_key=idempotency_key(request))
        doc = store.collection().find_one({"_id": execution_id}, dict.fromkeys(filters.SUMMARY_FIELDS, 1))
        return Response(representations.SignalResult({
            "execution_id": result.execution_id, "name": result.name, "signal_index": result.signal_index,
            "created": result.created, "consumed_by": result.consumed_by, "execution": doc,
        }).data, status=status.HTTP_201_CREATED if result.created else status.HTTP_200_OK)
