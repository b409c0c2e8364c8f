"""Post-mortems in the admin: their list, and the post-mortem panel of an execution's page.

They join two apps (the Insight documents of ``insights`` and the execution pages of
``executions``, which may not import ``insights``), so, like the demo command, they live in the
project. Their natural home is ``insights/admin.py``; moving them there changes no import.
"""
from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.template.loader import render_to_string
from django.urls import URLPattern, URLResolver, path
from django.utils.safestring import SafeString

import detflow_site.console.bulk  # noqa: F401  (registers the bulk operations' admin)
from detflow_site import docadmin
from detflow_site.console import schedules  # noqa: F401  (registers the schedules' admin)
from detflow_site.console.admin import RoleAdmin
from insights import service
from insights.errors import NotFinished
from insights.representation import represent

#: Post-mortems per page.
PAGE_SIZE = 50


@docadmin.register
class InsightAdmin(RoleAdmin):
    """The post-mortems, newest first (by ``_id``: the one index the Insight document declares
    that can order them; see the report on ``insights/models.py``)."""

    app_label = "insights"
    name = "insight"
    verbose_name_plural = "Post-mortems"

    def get_urls(self) -> list[URLPattern | URLResolver]:
        return [path("", self.view(self.list_view), name=self.route("list"))]

    def list_view(self, request: HttpRequest) -> HttpResponse:
        from bson import ObjectId
        from bson.errors import InvalidId

        query: dict[str, Any] = {}
        after = request.GET.get("after", "")
        if after:
            try:
                query = {"_id": {"$lt": ObjectId(after)}}
            except (InvalidId, TypeError):
                query = {}
        fields = {"execution_id": 1, "workflow": 1, "workflow_version": 1, "execution_status": 1,
                  "source": 1, "summary": 1, "confidence": 1, "created_at": 1}
        rows = list(service.collection().find(query, fields).sort("_id", -1).limit(PAGE_SIZE + 1))
        next_url = f"?after={rows[PAGE_SIZE - 1]['_id']}" if len(rows) > PAGE_SIZE else None
        executions = self.site.document("executions.execution")
        return self.render(request, "admin/detflow/insight_list.html", {
            "title": "Post-mortems", "rows": rows[:PAGE_SIZE], "next_url": next_url,
            "first_url": "?" if after else None, "executions_url": executions.url("list"),
        })


def postmortem_panel(request: HttpRequest, doc: dict[str, Any]) -> SafeString:
    """The post-mortem on an execution's page, its evidence linked to the events it cites.

    As ``GET /api/v1/executions/{id}/insight/``: a finished execution without one gets it written by
    the rules; opening a page never asks the model.
    """
    try:
        record, current = service.shown(doc["_id"])
    except NotFinished:
        data = None
    else:
        data = represent(record, current)
    return render_to_string("admin/detflow/postmortem.html", {"postmortem": data, "doc": doc},
                            request=request)


docadmin.default_site().add_panel("executions.execution", postmortem_panel)
