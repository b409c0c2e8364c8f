"""Bulk operations in the admin: retry or cancel many executions from the executions list.

The list's action bar posts here (``new/``) the action, a reason and either the rows selected on
the page or "all matching this filter" (the list's filters, checked by the API's own code,
``detflow_site.api.filters``). The first answer is the dry run (``executions.bulk.plan``: the
exact count and the first ids) with a Confirm button; confirming stores the operation and sends it
to a worker (``executions.bulk.create``, as ``POST /api/v1/bulk-operations/`` does) and opens its
page. Selected rows are a filter on their ids (``{"_id": {"$in": [...]}}``, at most a page of
them), so they go through the same operation, runner and once-per-execution marker as a filter.

The operations' list (newest first, by the ``(created_at, _id)`` index of ``bulk_operations``) and
each one's page (its progress; Cancel while it is open) are for viewers and operators; only
operators start or cancel one.
"""
from __future__ import annotations

import datetime as dt
import re
from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import URLPattern, URLResolver, path

from detflow_site import docadmin
from detflow_site.api import filters
from detflow_site.console import listing
from detflow_site.console.admin import ACTIONS as EXECUTION_ACTIONS
from detflow_site.console.admin import RoleAdmin
from detflow_site.errors import DetflowError
from executions import bulk, store
from executions.errors import InvalidArgument

#: Operations per page of the list.
PAGE_SIZE = 50
#: Selected rows one operation takes at most: the rows of the executions list's largest page.
MAX_SELECTED = max(listing.PAGE_SIZES)
#: The two scopes the action bar offers.
SCOPES = ("selected", "filter")
_ID = re.compile(r"[0-9a-f]{32}")
#: Fields a row of the list shows.
LIST_FIELDS = {name: 1 for name in ("action", "reason", "by", "status", "total", "done", "acted",
                                     "skipped", "failed", "created_at", "updated_at", "filter")}


def describe(query: dict[str, Any]) -> str:
    """Return what an operation's stored filter takes, in words."""
    ids = (query.get("_id") or {}).get("$in") if isinstance(query.get("_id"), dict) else None
    if ids is not None and len(query) == 1:
        return f"{len(ids)} selected execution{'' if len(ids) == 1 else 's'}"
    if not query:
        return "every execution"
    words = []
    for name, value in sorted(query.items()):
        if isinstance(value, dict):  # a range (created_at)
            words += [f"{name} {_RANGES.get(op, op)} {_shown(bound)}" for op, bound in sorted(value.items())]
        else:
            words.append(f"{_NAMES.get(name, name)}={_shown(value)}")
    return ", ".join(words)


_RANGES = {"$gte": ">=", "$gt": ">", "$lt": "<", "$lte": "<="}
_NAMES = {"workflow_version": "version"}


def _shown(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat(timespec="seconds") + "Z"
    return str(value)


def progress(op: dict[str, Any]) -> int:
    """Return how much of ``op`` is done, in whole percent."""
    total = op.get("total") or 0
    return 100 if not total else min(100, int(op.get("done", 0) * 100 / total))


@docadmin.register
class BulkOperationAdmin(RoleAdmin):
    app_label = "executions"
    name = "bulkoperation"
    verbose_name_plural = "Bulk operations"

    def get_urls(self) -> list[URLPattern | URLResolver]:
        return [
            path("", self.view(self.list_view), name=self.route("list")),
            path("new/", self.view(self.new_view, action=True), name=self.route("new")),
            path("<str:op_id>/", self.view(self.detail_view), name=self.route("detail")),
            path("<str:op_id>/cancel/", self.view(self.cancel_view, action=True), name=self.route("cancel")),
        ]

    def list_view(self, request: HttpRequest) -> HttpResponse:
        query: dict[str, Any] = {}
        error = None
        cursor = request.GET.get("cursor", "")
        if cursor:
            try:
                at, last = filters.decode_cursor(cursor)
            except InvalidArgument as exc:
                error = str(exc)
            else:
                when = store.to_dt(at)
                query = {"$or": [{"created_at": {"$lt": when}}, {"created_at": when, "_id": {"$lt": last}}]}
        rows = [] if error else list(bulk.collection().find(query, LIST_FIELDS)
                                     .sort([("created_at", -1), ("_id", -1)]).limit(PAGE_SIZE + 1))
        next_url = f"?cursor={filters.encode_cursor(rows[PAGE_SIZE - 1])}" if len(rows) > PAGE_SIZE else None
        shown = [{**op, "id": op["_id"], "scope": describe(op["filter"]), "progress": progress(op)}
                 for op in rows[:PAGE_SIZE]]
        return self.render(request, "admin/executions/bulk_list.html", {
            "title": "Bulk operations", "rows": shown, "next_url": next_url, "error": error,
            "first_url": "?" if cursor else None,
            "executions_url": self.site.document("executions.execution").url("list"),
        }, status=400 if error else 200)

    def detail_view(self, request: HttpRequest, op_id: str) -> HttpResponse:
        op = bulk.get(op_id)
        if op is None:
            raise Http404(f"bulk operation {op_id} does not exist")
        executions = self.site.document("executions.execution")
        ids = op["filter"].get("_id", {}).get("$in") if isinstance(op["filter"].get("_id"), dict) else None
        return self.render(request, "admin/executions/bulk_detail.html", {
            "title": f"Bulk operation {op_id}", "op": {**op, "id": op["_id"]}, "progress": progress(op),
            "scope": describe(op["filter"]), "selected": ids, "open": op["status"] in bulk.OPEN,
            "executions_url": executions.url("list"),
        })

    def cancel_view(self, request: HttpRequest, op_id: str) -> HttpResponse:
        if bulk.get(op_id) is None:
            raise Http404(f"bulk operation {op_id} does not exist")
        if request.method != "POST":
            return HttpResponseRedirect(self.url("detail", op_id))
        done = bulk.cancel(op_id)
        if done is not None and done["status"] == bulk.CANCELLED:
            messages.success(request, f"Bulk operation {op_id} cancelled: it stops before its next batch")
        else:
            messages.warning(request, f"Bulk operation {op_id} had already ended; nothing changed")
        return HttpResponseRedirect(self.url("detail", op_id))

    def new_view(self, request: HttpRequest) -> HttpResponse:
        """The action bar's target: the dry run, then (``confirmed``) the operation."""
        executions = self.site.document("executions.execution")
        if request.method != "POST":
            return HttpResponseRedirect(executions.url("list"))
        form = {k: request.POST.get(k, "") for k in ("action", "reason", "scope")}
        context: dict[str, Any] = {"title": "Bulk operation: dry run", "form": form,
                                   "executions_url": executions.url("list")}
        try:
            action, reason, query, chosen = self._checked(request, form)
            if request.POST.get("confirmed") == "1":
                op = bulk.create(action, query, reason, request.user.get_username())
                messages.success(request, f"Bulk {action} {op['_id']} started over {op['total']} "
                                          f"execution{'' if op['total'] == 1 else 's'}")
                return HttpResponseRedirect(self.url("detail", op["_id"]))
            planned = bulk.plan(action, query)
        except DetflowError as exc:
            context.update(error=str(exc), title="Bulk operation: refused")
            return self.render(request, "admin/executions/bulk_new.html", context, status=400)
        qualifying = [str(s) for s in EXECUTION_ACTIONS[action]["statuses"]]
        if "ids" in chosen:
            rows = list(store.collection().find({"_id": {"$in": chosen["ids"]}}, {"status": 1}))
            context["eligible"] = sum(1 for r in rows if r["status"] in qualifying)
        context.update(planned=planned, chosen=chosen, qualifying=qualifying,
                       label=EXECUTION_ACTIONS[action]["label"], scope=describe(query))
        return self.render(request, "admin/executions/bulk_new.html", context)

    def _checked(self, request: HttpRequest,
                 form: dict[str, str]) -> tuple[str, str, dict[str, Any], dict[str, Any]]:
        """Return the action, the reason, the MongoDB filter and what was chosen (``ids``, or the
        list's ``filter``); raise :class:`InvalidArgument` naming the first bad field."""
        action = form["action"]
        if action not in bulk.ACTIONS:
            raise InvalidArgument("action", f"{action!r} is not one of: {', '.join(bulk.ACTIONS)}")
        reason = form["reason"].strip()
        if not reason:
            raise InvalidArgument("reason", "is required: say why, it is recorded with your name on "
                                            "each execution")
        if len(reason) > 1000:
            raise InvalidArgument("reason", "must be at most 1000 characters")
        if form["scope"] not in SCOPES:
            raise InvalidArgument("scope", "choose the selected rows or all matching the filter")
        if form["scope"] == "selected":
            ids = list(dict.fromkeys(request.POST.getlist("ids")))
            if request.POST.get("select_page"):
                ids = list(dict.fromkeys(ids + request.POST.getlist("page_ids")))
            if not ids:
                raise InvalidArgument("ids", "no execution is selected: tick the rows to act on")
            if len(ids) > MAX_SELECTED:
                raise InvalidArgument("ids", f"at most {MAX_SELECTED} selected executions (a page); "
                                             "to act on more, use all matching a filter")
            bad = next((i for i in ids if not _ID.fullmatch(i)), None)
            if bad is not None:
                raise InvalidArgument("ids", f"{bad[:40]!r} is not an execution id")
            return action, reason, {"_id": {"$in": sorted(ids)}}, {"ids": sorted(ids)}
        refused = next((k for k in ("q", "stuck") if request.POST.get(k)), None)
        if refused is not None:
            raise InvalidArgument(refused, "a search or the stuck list is not a filter a bulk operation "
                                           "takes; use the list's filters")
        chosen = {k: request.POST[k] for k in listing.BULK_FILTERS if request.POST.get(k)}
        if not chosen:
            raise InvalidArgument("filter", "no filter is set; choose a status, a workflow or a date "
                                            "range on the list first")
        return action, reason, filters.parse(chosen).filter, {"filter": chosen}
