"""The admin console of executions and workflows, on detflow's document admin glue.

Viewers and operators (``executions.roles``) read every page; operators also cancel, retry, skip,
compensate (roll back), pause and resume, each with a reason, a dry-run preview and a confirmation;
they pause and resume a whole workflow on its page (with a reason, at once: no dry run), and send a
signal to a wait step ("Approve" when the signal reads as an approval), with a reason and a JSON
payload, at once (a signal has no dry run). The actions are the API's own services
(``executions.operations``), so they record the same events. On a COMPENSATION_FAILED execution
retry and skip act on its failed compensation, and say so.
"""
from __future__ import annotations

import datetime as dt
import io
import json
from typing import Any
from urllib.parse import urlencode

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.loader import render_to_string
from django.urls import URLPattern, URLResolver, path
from django.utils.safestring import SafeString
from rest_framework.exceptions import ParseError, ValidationError

from detflow_site import docadmin
from detflow_site.api.fields import JSONValue
from detflow_site.api.parsers import JSONParser
from detflow_site.api.views import refuse_server_path
from detflow_site.console import aggregates, listing, repair, timeline, waits
from detflow_site.errors import DetflowError, PayloadTooLarge
from executions import controls, diagnosis, operations, store
from executions.engine import ExecutionStatus, StepStatus, rollback_plan
from executions.errors import InvalidArgument
from executions.roles import OPERATORS, VIEWERS, roles_of
from executions.store import now_ms, to_dt, to_ms
from workflows import definitions, masking
from workflows.errors import WorkflowNotFound

#: The operator actions, what each asks for, and the statuses it applies to.
ACTIONS = {
    "cancel": {"label": "Cancel", "statuses": ("PENDING", "RUNNING")},
    "retry": {"label": "Retry", "statuses": ("FAILED", "COMPENSATION_FAILED")},
    "skip": {"label": "Skip the failed step", "statuses": ("FAILED", "COMPENSATION_FAILED")},
    "compensate": {"label": "Compensate", "statuses": ("FAILED", "CANCELLED")},
    # Offered only when the definition has a wait step; labelled "Approve" for an approval.
    "signal": {"label": "Send signal", "statuses": ("PENDING", "RUNNING")},
    # Pause while the execution holds no pause of its own; Resume while it does.
    "pause": {"label": "Pause", "statuses": ("PENDING", "RUNNING", "COMPENSATING")},
    "resume": {"label": "Resume", "statuses": ("PENDING", "RUNNING", "COMPENSATING")},
}
#: Who a pause's scope names, as the execution's page says it.
PAUSED_BY = {"execution": "itself", "workflow": "its workflow"}


def offered(doc: dict[str, Any]) -> list[tuple[str, str]]:
    """Return the actions (name, label) that apply to stored execution ``doc``: Compensate only when
    it has something to undo (a step that succeeded, or was skipped, and names a compensation)."""
    found = []
    for name, action in ACTIONS.items():
        if doc["status"] not in action["statuses"]:
            continue
        if name == "compensate" and not rollback_plan(store.to_state(doc), include_skipped=True):
            continue
        if name == "signal" and not waits.signal_names(doc):
            continue
        if name in ("pause", "resume") and ("execution" in (doc.get("paused") or {})) != (name == "resume"):
            continue
        found.append((name, action_label(name, doc)))
    return found


def action_label(action: str, doc: dict[str, Any]) -> str:
    """Return what action ``action`` is called on ``doc``'s page: on a COMPENSATION_FAILED execution
    retry and skip name the compensation they act on."""
    failed = doc.get("failed_compensation")
    if doc["status"] == ExecutionStatus.COMPENSATION_FAILED and failed:
        if action == "retry":
            return f"Retry the compensation of {failed}"
        if action == "skip":
            return f"Skip the compensation of {failed} (undone by hand)"
    if action == "signal" and waits.is_approval(waits.awaited(doc)):
        return "Approve"
    return str(ACTIONS[action]["label"])


class RoleAdmin(docadmin.DocumentAdmin):
    """Pages for the ``viewers`` and ``operators`` roles."""

    def has_view_permission(self, request: HttpRequest) -> bool:
        return bool(roles_of(request.user) & {VIEWERS, OPERATORS})

    def has_action_permission(self, request: HttpRequest) -> bool:
        return OPERATORS in roles_of(request.user)


@docadmin.register
class ExecutionAdmin(RoleAdmin):
    app_label = "executions"
    name = "execution"
    verbose_name_plural = "Executions"

    def get_urls(self) -> list[URLPattern | URLResolver]:
        return [
            path("", self.view(self.list_view), name=self.route("list")),
            path("<str:execution_id>/", self.view(self.detail_view), name=self.route("detail")),
            path("<str:execution_id>/<str:action>/", self.view(self.action_view, action=True),
                 name=self.route("action")),
        ]

    def dashboard_panel(self, request: HttpRequest) -> SafeString:
        data = aggregates.dashboard()
        since = data["since"].isoformat(timespec="seconds") + "Z"
        return render_to_string("admin/executions/dashboard.html", {
            "data": data, "list_url": self.url("list"), "since": since,
            "statuses": [(s, n) for s, n in data["by_status"].items()],
        }, request=request)

    def list_view(self, request: HttpRequest) -> HttpResponse:
        params = {k: v for k, v in request.GET.items() if v != ""}

        def query_string(**changes: Any) -> str:
            found = request.GET.copy()
            for key, value in changes.items():
                found.pop(key, None)
                if value is not None:
                    found[key] = value
            return found.urlencode()

        error = None
        try:
            page = listing.page(params, query_string)
        except InvalidArgument as exc:
            page, error = listing.Page([]), str(exc)
        now = now_ms()
        rows = [{**row, "duration_ms": _duration(row, now)} for row in page.rows]
        workflow = params.get("workflow")
        return self.render(request, "admin/executions/execution_list.html", {
            "title": "Executions", "rows": rows, "page": page, "error": error, "params": params,
            "match_cap": listing.MATCH_CAP,
            "next_url": f"?{page.next_query}" if page.next_query else None,
            "prev_url": f"?{page.prev_query}" if page.prev_query else None,
            "first_url": f"?{query_string(cursor=None, before=None)}"
                         if "cursor" in params or "before" in params else None,
            "page_sizes": [(n, "?" + query_string(page_size=None if n == listing.PAGE_SIZE else n,
                                                  cursor=None, before=None), n == page.page_size)
                           for n in listing.PAGE_SIZES],
            "filters": _filters(params, query_string, workflow),
            "ordering": params.get("ordering", "-created_at"),
            "sort_url": "?" + query_string(cursor=None, before=None, ordering="created_at"
                                           if params.get("ordering", "-created_at") == "-created_at"
                                           else "-created_at"),
        })

    def detail_view(self, request: HttpRequest, execution_id: str) -> HttpResponse:
        doc = store.load(execution_id)
        if doc is None:
            raise Http404(f"execution {execution_id} does not exist")
        doc = masking.execution(doc)
        now = now_ms()
        found = diagnosis.diagnose(execution_id, now)
        specs = doc["definition"]["steps"]
        compensations = doc.get("compensations") or []
        undone = {c["step_index"]: c["status"] for c in compensations}
        return self.render(request, "admin/executions/execution_detail.html", {
            "title": f"Execution {execution_id}", "doc": doc, "input": _pretty(doc["input_json"]),
            "duration_ms": _duration(doc, now), "created_by": (doc["events"] or [{}])[0].get("by"),
            "steps": [{**_step(step, spec, now), "undone": undone.get(i), "waits": waits.describe(step, spec)}
                      for i, (step, spec) in enumerate(zip(doc["steps"], specs, strict=True))],
            "rollback": doc.get("rollback"),
            "compensations": [{**_step(c, specs[c["step_index"]]["compensate"], now), "place": k + 1}
                              for k, c in enumerate(compensations)],
            "events": [_event(e) for e in doc["events"]], "timeline": timeline.svg(doc, now),
            "signals": waits.signals(doc), "waiting_signal_steps": waits.signal_names(doc),
            "diagnosis": found, "panels": self.panels(request, doc),
            "repair": repair.text(found.repair, doc, offered(doc), self.has_action_permission(request)),
            "actions": offered(doc), "pauses": pauses(doc),
            "workflow_url": _workflow_url(self, doc["workflow"]),
        })

    def action_view(self, request: HttpRequest, execution_id: str, action: str) -> HttpResponse:
        if action not in ACTIONS:
            raise Http404(f"no action {action!r}")
        doc = store.load(execution_id)
        if doc is None:
            raise Http404(f"execution {execution_id} does not exist")
        doc = masking.execution(doc)  # a secret left masked in an edited input keeps its value
        if action == "signal":
            return self._signal_view(request, execution_id, doc)
        form = {"reason": "", "input": "", "output": "null", "include_skipped": ""}
        named = action_label(action, doc)
        # On a COMPENSATION_FAILED execution retry and skip act on the failed compensation: no edited
        # input, no output (operations refuses both).
        compensation = doc["status"] == ExecutionStatus.COMPENSATION_FAILED and action in ("retry", "skip")
        context: dict[str, Any] = {"title": f"{named}: execution {execution_id}",
                                   "doc": doc, "action": action, "label": named,
                                   "phrase": named[:1].lower() + named[1:],  # a step's name as it is
                                   "compensation": doc.get("failed_compensation") if compensation else None,
                                   "detail_url": self.url("detail", execution_id),
                                   "current_input": _pretty(_failed_input(doc))}
        if action == "retry" and not compensation:
            form["input"] = context["current_input"]  # the form starts from the input the step reads
        if request.method == "POST":
            form = {k: request.POST.get(k, "") for k in form}
            confirm = request.POST.get("stage") == "confirm"
            sent = dict(form)
            if action == "retry" and _same_json(form["input"], context["current_input"]):
                sent["input"] = ""  # left as it was: a retry with the same input, no edit recorded
            try:
                result, plan = _perform(action, execution_id, request.user.get_username(), sent,
                                        dry_run=not confirm)
            except DetflowError as exc:
                context.update(form=form, error=str(exc))
                return self.render(request, "admin/executions/action.html", context, status=400)
            if confirm:
                event = ", ".join(f"{k}={v}" for k, v in result.event.items() if k != "input_diff_json")
                messages.success(request, f"{named} done; recorded: {event}")
                return HttpResponseRedirect(self.url("detail", execution_id))
            context.update(form=form, preview=result, changes=sorted(result.changes.items()),
                           plan=None if plan is None else [_planned(p) for p in plan])
            return self.render(request, "admin/executions/action.html", context)
        context["form"] = form
        return self.render(request, "admin/executions/action.html", context)

    def _signal_view(self, request: HttpRequest, execution_id: str, doc: dict[str, Any]) -> HttpResponse:
        """Send a signal to a wait step of ``doc`` (no dry run: a signal changes only what it names)."""
        names = waits.signal_names(doc)
        awaited = waits.awaited(doc)
        named = action_label("signal", doc)
        form = {"name": awaited or (names[0] if names else ""),
                "payload": "{}" if waits.is_approval(awaited) else "",
                "reason": ""}
        context: dict[str, Any] = {"title": f"{named}: execution {execution_id}", "doc": doc,
                                   "label": named, "names": names, "awaited": awaited,
                                   "waiting": waits.waiting_steps(doc),
                                   "detail_url": self.url("detail", execution_id)}
        if request.method == "POST":
            form = {k: request.POST.get(k, "") for k in form}
            try:
                if not form["reason"].strip():
                    raise InvalidArgument("reason", "is required: say why, it is recorded with your name")
                payload = _json_field(form["payload"] or "null", "payload")
                result = operations.signal(execution_id, form["name"], payload,
                                           by=request.user.get_username(), reason=form["reason"].strip())
            except DetflowError as exc:
                context.update(form=form, error=str(exc))
                return self.render(request, "admin/executions/signal.html", context, status=400)
            messages.success(request, waits.result_text(result, store.load(execution_id)))
            return HttpResponseRedirect(self.url("detail", execution_id))
        context["form"] = form
        return self.render(request, "admin/executions/signal.html", context)


def pauses(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Return the pauses holding stored execution ``doc``: its own first, then its workflow's."""
    held = doc.get("paused") or {}
    return [{"scope": scope, "who": who, **held[scope]} for scope, who in PAUSED_BY.items() if scope in held]


def _perform(action: str, execution_id: str, by: str, form: dict[str, str],
             dry_run: bool) -> tuple[operations.ActionResult, list[operations.PlannedCompensation] | None]:
    """Run ``action`` from the form's fields; return its result and, for a rollback, its plan."""
    reason = form["reason"].strip()
    if action == "cancel":
        return operations.cancel(execution_id, by, reason, dry_run=dry_run), None
    if action == "pause":
        return operations.pause(execution_id, by, reason, dry_run=dry_run), None
    if action == "resume":
        return operations.resume(execution_id, by, reason, dry_run=dry_run), None
    if action == "compensate":
        return operations.compensate(execution_id, by, reason, dry_run=dry_run,
                                     include_skipped=bool(form["include_skipped"]))
    if action == "retry":
        edited = {}
        if form["input"].strip():
            edited["input"] = _json_field(form["input"], "input")
            refuse_server_path(execution_id, edited["input"])
        return operations.retry(execution_id, by, reason, dry_run=dry_run, **edited), None
    # The form of a compensation's skip sends no output (an absent one is null); one sent anyway is refused.
    return operations.skip(execution_id, by, reason, output=_json_field(form["output"] or "null", "output"),
                           dry_run=dry_run), None


def _planned(planned: operations.PlannedCompensation) -> dict[str, Any]:
    """Return one compensation of a rollback's plan as the preview shows it."""
    output = None if planned.output is None else json.dumps(planned.output, indent=2, ensure_ascii=False,
                                                            sort_keys=True)
    return {"step": planned.step, "step_index": planned.step_index, "handler": planned.handler,
            "status": planned.status, "output": output}


def _json_field(text: str, name: str) -> Any:
    """Decode form field ``name`` as the API decodes a body holding it: the same size, nesting and
    constant limits (``JSONParser``), then a JSON value's depth (``JSONValue``); a refusal names it."""
    try:
        value = JSONParser().parse(io.BytesIO(text.encode("utf-8", "surrogatepass")),
                                   parser_context={"encoding": "utf-8"})
        return JSONValue().to_internal_value(value)
    except PayloadTooLarge as exc:
        reason = str(exc)
    except ParseError as exc:
        reason = f"is not JSON: {exc.detail}"
    except ValidationError as exc:
        reason = " ".join(str(detail) for detail in exc.detail)
    except InvalidArgument as exc:  # where in the value, e.g. a lone surrogate
        where = "" if exc.field == "body" else exc.field or ""
        raise InvalidArgument(name + ("" if not where or where.startswith("[") else ".") + where,
                              exc.reason, code=exc.default_code) from None
    raise InvalidArgument(name, reason)


def _same_json(text: str, other: str) -> bool:
    """Return whether form text ``text`` is the JSON value ``other`` is (spacing and key order aside)."""
    try:
        return bool(text.strip()) and json.loads(text) == json.loads(other)
    except ValueError:
        return False


def _failed_input(doc: dict[str, Any]) -> str:
    failed: dict[str, Any] = next((s for s in doc["steps"] if s["status"] == StepStatus.FAILED), {})
    return str(failed.get("input_json") or doc["input_json"])


def _pretty(text: str | None) -> str:
    if text is None:
        return ""
    return json.dumps(json.loads(text), indent=2, ensure_ascii=False, sort_keys=True)


def _duration(doc: dict[str, Any], now: int) -> int:
    end = to_ms(doc.get("finished_at")) or now
    return end - (to_ms(doc["created_at"]) or end)


def _step(step: dict[str, Any], spec: dict[str, Any], now: int) -> dict[str, Any]:
    attempts = [{**a, "duration_ms": a.get("duration_ms") if a.get("duration_ms") is not None
                 else _span(a.get("started_at"), a.get("ended_at"))} for a in step.get("attempts") or []]
    current = step.get("current")
    if current:
        attempts.append({**current, "outcome": "running", "duration_ms": _span(current.get("started_at"),
                                                                                 to_dt(now))})
    # A step that succeeded has no error: a failed attempt before it keeps its own (older documents
    # still carry the last one on the step).
    error = None if step.get("status") == StepStatus.SUCCEEDED else step.get("error")
    return {**step, "spec": spec, "attempts": attempts, "output": _pretty(step.get("output_json")),
            "own_input": _pretty(step.get("input_json")), "error": error}


def _span(start: dt.datetime | None, end: dt.datetime | None) -> int | None:
    if start is None or end is None:
        return None
    return (to_ms(end) or 0) - (to_ms(start) or 0)


#: Event fields shown in their own columns rather than among the details.
_EVENT_COLUMNS = ("seq", "at", "type", "step", "step_index", "attempt")


def _event(event: dict[str, Any]) -> dict[str, Any]:
    details = []
    for key, value in event.items():
        if key in _EVENT_COLUMNS:
            continue
        if isinstance(value, dt.datetime):
            value = value.isoformat(timespec="milliseconds") + "Z"
        elif key.endswith("_json") and isinstance(value, str):
            value = value if value != "[]" else None
        if value is not None:
            details.append((key, value))
    return {**event, "details": details}


def _filters(params: dict[str, str], query_string: Any, workflow: str | None) -> list[dict[str, Any]]:
    """Return the sidebar: each filter's choices as links (each keeps the list on an index)."""

    def choices(key: str, values: list[tuple[str, str]], **also: Any) -> list[dict[str, Any]]:
        clear = {key: None, "cursor": None, "before": None, **also}
        return ([{"label": "All", "url": "?" + query_string(**clear), "selected": key not in params}]
                + [{"label": label, "url": "?" + query_string(**{**clear, key: value}),
                    "selected": params.get(key) == value} for value, label in values])

    names = [d.name for d in definitions.latest_versions()]
    statuses = choices("status", [(s.value, s.value) for s in ExecutionStatus], failed_step=None)
    for choice in statuses[1:]:
        choice["status"] = choice["label"]  # shown as its badge, in the colour it has everywhere
    found = [
        {"title": "status", "choices": statuses},
        {"title": "workflow", "choices": choices("workflow", [(n, n) for n in names], version=None,
                                                 failed_step=None)},
    ]
    if workflow:
        stored = definitions.versions(workflow)
        found.append({"title": "version", "choices": choices(
            "version", [(str(d.version), f"v{d.version}") for d in stored], failed_step=None)})
        steps = sorted({s["name"] for d in stored for s in d.steps})
        found.append({"title": "failed step", "choices": choices(
            "failed_step", [(s, s) for s in steps], status=None, version=None)})
    now = to_dt(now_ms())
    assert now is not None
    windows = [("last hour", dt.timedelta(hours=1)), ("last 24 hours", dt.timedelta(days=1)),
               ("last 7 days", dt.timedelta(days=7))]
    started = choices("created_after", [((now - delta).isoformat(timespec="seconds") + "Z", label)
                                        for label, delta in windows], created_before=None)
    for choice in started[1:]:
        choice["selected"] = False  # the windows move with the clock: none stays selected
    found.append({"title": "started", "choices": started})
    return found


def _workflow_url(admin: docadmin.DocumentAdmin, name: str) -> str:
    return admin.site.document("workflows.workflow").url("detail", name)


@docadmin.register
class WorkflowAdmin(RoleAdmin):
    """Definitions and their versions, with the statistics of each version's executions."""

    app_label = "workflows"
    name = "workflow"
    verbose_name_plural = "Workflows"

    def get_urls(self) -> list[URLPattern | URLResolver]:
        return [
            path("", self.view(self.list_view), name=self.route("list")),
            path("<str:name>/", self.view(self.detail_view), name=self.route("detail")),
            path("<str:name>/<str:action>/", self.view(self.pause_view, action=True),
                 name=self.route("pause")),
        ]

    def list_view(self, request: HttpRequest) -> HttpResponse:
        return self.render(request, "admin/executions/workflow_list.html", {
            "title": "Workflows", "workflows": definitions.latest_versions(),
            "executions_url": self.site.document("executions.execution").url("list"),
        })

    def detail_view(self, request: HttpRequest, name: str) -> HttpResponse:
        return self.render(request, "admin/executions/workflow_detail.html", self._detail(name))

    def pause_view(self, request: HttpRequest, name: str, action: str) -> HttpResponse:
        """Pause or resume workflow ``name`` (POST, with a reason): every execution of it is held
        at its next step boundary, or released."""
        if action not in ("pause", "resume"):
            raise Http404(f"no action {action!r}")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        reason = request.POST.get("reason", "")
        by = request.user.get_username()
        try:
            if action == "pause":
                done = operations.pause_workflow(name, by, reason.strip())
                text = f"Workflow {name} paused: its executions stop at their next step boundary"
            else:
                done = operations.resume_workflow(name, by, reason.strip())
                text = (f"Workflow {name} resumed: {done.released} held execution"
                        f"{'' if done.released == 1 else 's'} released")
        except WorkflowNotFound as exc:
            raise Http404(str(exc)) from None
        except DetflowError as exc:  # the page is built only to say why
            context = {**self._detail(name), "error": str(exc), "form": {"reason": reason}}
            return self.render(request, "admin/executions/workflow_detail.html", context, status=400)
        messages.success(request, f"{text}; recorded: by={done.by}, reason={done.reason}")
        return HttpResponseRedirect(self.url("detail", name))

    def _detail(self, name: str) -> dict[str, Any]:
        """Return the context of workflow ``name``'s page: its versions and its pause."""
        try:
            stored = definitions.versions(name)[: aggregates.VERSIONS_SHOWN]
        except WorkflowNotFound:
            stored = []
        if not stored:
            raise Http404(f"workflow {name} is not registered")
        stats = {s["version"]: s for s in aggregates.version_stats(name)}
        executions = self.site.document("executions.execution")
        versions = []
        for d in stored:
            steps = [{**s, "worst_case_s": aggregates.worst_case_s(s), "pause": waits.describe({}, s)}
                     for s in d.steps]
            query = urlencode({"workflow": name, "version": d.version})
            versions.append({"stored": d, "steps": steps, "stats": stats.get(d.version),
                             "input_schema": _pretty(d.input_schema_json) if d.input_schema_json else None,
                             "worst_case_s": sum(s["worst_case_s"] for s in steps),
                             "executions_url": executions.url("list", query=query)})
        paused = controls.paused(name)
        return {"title": f"Workflow {name}", "name": name, "versions": versions, "paused": paused,
                "pause_url": self.url("pause", name, "resume" if paused else "pause"),
                "form": {"reason": ""}}
