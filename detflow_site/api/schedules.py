"""``/api/v1/schedules/``: create, list, read, delete, pause and resume schedules (operators write)."""
from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detflow_site.times import to_ms
from executions import schedules
from executions.errors import InvalidArgument

FIELDS = ("workflow", "version", "input", "cron", "timezone", "overlap", "catch_up_s")


def shown(doc: dict[str, Any]) -> dict[str, Any]:
    """Return a schedule as the API shows it (times in epoch milliseconds)."""
    out = {k: v for k, v in doc.items() if k != "_id"}
    out["id"] = doc["_id"]
    for name in ("next_fire_at", "last_fired_at", "created_at"):
        out[name] = to_ms(doc.get(name))
    if doc.get("pause"):
        out["pause"] = {**doc["pause"], "at": to_ms(doc["pause"].get("at"))}
    return out


class ScheduleListView(APIView):
    @extend_schema(operation_id="schedules_list", request=None, responses=OpenApiTypes.OBJECT,
                   summary="The schedules")
    def get(self, request: Request) -> Response:
        return Response({"results": [shown(d) for d in schedules.listed()]})

    @extend_schema(operation_id="schedules_create", request=OpenApiTypes.OBJECT,
                   responses=OpenApiTypes.OBJECT,
                   summary="Create a schedule: a workflow started at the times of a cron expression")
    def post(self, request: Request) -> Response:
        body = request.data
        if not isinstance(body, dict):
            raise InvalidArgument("body", "must be a JSON object")
        unknown = sorted(set(body) - set(FIELDS))
        if unknown:
            raise InvalidArgument(unknown[0], f"is not a schedule field; the fields are {', '.join(FIELDS)}")
        doc = schedules.create(
            body.get("workflow"), body.get("cron"), input=body.get("input"), version=body.get("version"),
            timezone_name=body.get("timezone", "UTC"), overlap=body.get("overlap", "skip"),
            catch_up_s=body.get("catch_up_s", 0), created_by=request.user.get_username())
        return Response(shown(doc), status=status.HTTP_201_CREATED)


class ScheduleDetailView(APIView):
    @extend_schema(operation_id="schedules_retrieve", request=None, responses=OpenApiTypes.OBJECT,
                   summary="One schedule")
    def get(self, request: Request, schedule_id: str) -> Response:
        return Response(shown(schedules.get(schedule_id)))

    @extend_schema(operation_id="schedules_destroy", request=None, responses=OpenApiTypes.OBJECT,
                   summary="Delete a schedule")
    def delete(self, request: Request, schedule_id: str) -> Response:
        schedules.delete(schedule_id)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SchedulePauseView(APIView):
    #: ``True`` pauses, ``False`` resumes.
    pause = True

    @extend_schema(request=OpenApiTypes.OBJECT, responses=OpenApiTypes.OBJECT,
                   summary="Pause (or, at resume/, resume) a schedule")
    def post(self, request: Request, schedule_id: str) -> Response:
        reason = request.data.get("reason", "") if isinstance(request.data, dict) else ""
        if not isinstance(reason, str) or len(reason) > 1000:
            raise InvalidArgument("reason", "must be a text of at most 1000 characters")
        return Response(shown(schedules.set_paused(schedule_id, self.pause, by=request.user.get_username(),
                                                   reason=reason)))


class ScheduleResumeView(SchedulePauseView):
    pause = False
