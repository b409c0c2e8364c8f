"""Routes of the API, mounted at ``/api/v1/``; any other path under it answers a JSON 404."""
from __future__ import annotations

from django.urls import path, re_path
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, authentication_classes, permission_classes
from rest_framework.exceptions import NotFound
from rest_framework.permissions import AllowAny

from detflow_site.api import bulk, health, schedules, uploads, views
from detflow_site.api.docs import DocsView, SchemaView


@extend_schema(exclude=True)
@api_view(["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
@authentication_classes([])
@permission_classes([AllowAny])
def not_found(request: object, rest: str = "") -> None:
    """Answer a path the API does not have."""
    hint = "" if rest.endswith("/") or not rest else " (its paths end with '/')"
    raise NotFound(f"the API has no such path{hint}; see /api/v1/docs/")


urlpatterns = [
    path("workflows/", views.WorkflowListView.as_view(), name="workflows"),
    path("workflows/<str:name>/", views.WorkflowDetailView.as_view(), name="workflow"),
    path("workflows/<str:name>/pause/", views.WorkflowPauseView.as_view(), name="workflow-pause"),
    path("workflows/<str:name>/resume/", views.WorkflowResumeView.as_view(), name="workflow-resume"),
    path("workflows/<str:name>/versions/<int:version>/", views.WorkflowVersionView.as_view(),
         name="workflow-version"),
    path("handlers/", views.HandlerListView.as_view(), name="handlers"),
    path("executions/", views.ExecutionListView.as_view(), name="executions"),
    path("executions/<str:execution_id>/", views.ExecutionDetailView.as_view(), name="execution"),
    path("executions/<str:execution_id>/events/", views.ExecutionEventsView.as_view(),
         name="execution-events"),
    path("executions/<str:execution_id>/diagnosis/", views.DiagnosisView.as_view(),
         name="execution-diagnosis"),
    path("executions/<str:execution_id>/cancel/", views.CancelView.as_view(), name="execution-cancel"),
    path("executions/<str:execution_id>/pause/", views.PauseView.as_view(), name="execution-pause"),
    path("executions/<str:execution_id>/resume/", views.ResumeView.as_view(), name="execution-resume"),
    path("executions/<str:execution_id>/retry/", views.RetryView.as_view(), name="execution-retry"),
    path("executions/<str:execution_id>/skip/", views.SkipView.as_view(), name="execution-skip"),
    path("executions/<str:execution_id>/compensate/", views.CompensateView.as_view(),
         name="execution-compensate"),
    path("executions/<str:execution_id>/signals/<str:name>/", views.SignalView.as_view(),
         name="execution-signal"),
    path("bulk-operations/", bulk.BulkOperationListView.as_view(), name="bulk-operations"),
    path("bulk-operations/<str:op_id>/", bulk.BulkOperationDetailView.as_view(), name="bulk-operation"),
    path("bulk-operations/<str:op_id>/cancel/", bulk.BulkOperationCancelView.as_view(),
         name="bulk-operation-cancel"),
    path("schedules/", schedules.ScheduleListView.as_view(), name="schedules"),
    path("schedules/<str:schedule_id>/", schedules.ScheduleDetailView.as_view(), name="schedule"),
    path("schedules/<str:schedule_id>/pause/", schedules.SchedulePauseView.as_view(), name="schedule-pause"),
    path("schedules/<str:schedule_id>/resume/", schedules.ScheduleResumeView.as_view(),
         name="schedule-resume"),
    path("files/", uploads.UploadView.as_view(), name="files"),
    path("health/", health.HealthView.as_view(), name="health"),
    path("schema/", SchemaView.as_view(), name="schema"),
    path("docs/", DocsView.as_view(url_name="api:schema"), name="docs"),
    re_path(r"^(?P<rest>[\s\S]*)$", not_found),  # any character, a decoded newline included
]
