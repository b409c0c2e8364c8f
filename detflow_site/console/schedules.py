"""The schedules in the admin: their list, and Pause, Resume and Delete for operators.

Viewers read the list; operators pause and resume a schedule (a POST from its row) and delete one
(after a confirmation page). Each is the API's own service (``executions.schedules``). The list is
read by ``_id`` (the index every collection has), at most ``schedules.listed``'s bound.
"""
from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.urls import URLPattern, URLResolver, path

from detflow_site import docadmin
from detflow_site.console.admin import RoleAdmin
from executions import schedules

#: What each schedule action does, as the message after it says.
DONE = {"pause": "paused: it starts nothing until it is resumed",
        "resume": "resumed: it fires from its next time on (the times missed while paused are not caught up)",
        "delete": "deleted"}
#: Schedules the list shows at most (``schedules.listed`` reads no more).
SHOWN = 1000


@docadmin.register
class ScheduleAdmin(RoleAdmin):
    """Schedules: a workflow started at the times of a cron expression, from the sweeper."""

    app_label = "executions"
    name = "schedule"
    verbose_name_plural = "Schedules"

    def get_urls(self) -> list[URLPattern | URLResolver]:
        return [
            path("", self.view(self.list_view), name=self.route("list")),
            path("<str:schedule_id>/<str:action>/", self.view(self.action_view, action=True),
                 name=self.route("action")),
        ]

    def list_view(self, request: HttpRequest) -> HttpResponse:
        found = schedules.listed()
        return self.render(request, "admin/executions/schedule_list.html", {
            "title": "Schedules", "rows": [self._row(doc) for doc in found],
            "capped": len(found) >= SHOWN,
        })

    def action_view(self, request: HttpRequest, schedule_id: str, action: str) -> HttpResponse:
        """Pause, resume (POST) or delete (a confirmation page, then a POST) one schedule."""
        if action not in DONE:
            raise Http404(f"no action {action!r}")
        try:
            doc = schedules.get(schedule_id)
        except schedules.ScheduleNotFound as exc:
            raise Http404(str(exc)) from None
        if action == "delete" and not (request.method == "POST" and request.POST.get("stage") == "confirm"):
            if request.method not in ("GET", "HEAD", "POST"):
                return HttpResponseNotAllowed(["GET", "POST"])
            return self.render(request, "admin/executions/schedule_delete.html", {
                "title": f"Delete schedule {schedule_id}", "schedule": self._row(doc)})
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        try:
            if action == "delete":
                schedules.delete(schedule_id)
            else:
                schedules.set_paused(schedule_id, action == "pause", by=request.user.get_username())
        except schedules.ScheduleNotFound as exc:  # deleted meanwhile
            raise Http404(str(exc)) from None
        messages.success(request, f"Schedule {schedule_id} of {doc['workflow']} {DONE[action]}")
        return HttpResponseRedirect(self.url("list"))

    def _row(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Return one schedule as the list shows it, with the links of its workflow and last start."""
        executions = self.site.document("executions.execution")
        last = doc.get("last_execution_id")
        return {**doc, "id": doc["_id"],
                "workflow_url": self.site.document("workflows.workflow").url("detail", doc["workflow"]),
                "last_execution_url": executions.url("detail", last) if last else None,
                "pause_url": self.url("action", doc["_id"], "resume" if doc["paused"] else "pause"),
                "delete_url": self.url("action", doc["_id"], "delete")}
