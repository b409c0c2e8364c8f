"""``GET, POST /api/v1/executions/{id}/insight/``: an execution's post-mortem; POST writes it again.

Routed from ``detflow_site.urls`` (``detflow_site.api`` may not import insights); the API's role
permission (viewers read, operators write) and error handler apply as to every other endpoint.
A GET never asks the model (a missing post-mortem is written by the rules); a POST may, throttled
per user and per execution, and within the model budget of the hour.
"""
from __future__ import annotations

from typing import Any

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detflow_site.api.permissions import HasRole
from detflow_site.api.representations import Error
from detflow_site.api.throttles import ExecutionRegenerateThrottle, RegenerateThrottle
from insights import service
from insights.postmortem import ACTIONS, CONFIDENCE
from insights.representation import represent

#: Why a GET may answer 409.
NOT_FINISHED = ("The execution never finished (it is PENDING or RUNNING) and so has no post-mortem yet: "
                "`not_finished`.")
#: Why a POST may answer 429.
THROTTLED = ("Too many regenerations: by this user (`DETFLOW_INSIGHTS_REGENERATE_RATE`), or of this "
             "execution by anyone (one per `DETFLOW_INSIGHTS_REGENERATE_INTERVAL_S`); Retry-After says "
             "when to try again: `throttled`.")


class Evidence(serializers.Serializer):
    event_seq = serializers.IntegerField(help_text="The event's seq in the execution's history.")
    shows = serializers.CharField(allow_blank=True, help_text="What the event shows (plain text).")


class SuggestedAction(serializers.Serializer):
    action = serializers.ChoiceField(choices=ACTIONS)
    detail = serializers.CharField(allow_blank=True, help_text="Plain text.")
    how = serializers.CharField(allow_null=True, help_text="The API call that takes the action.")


class Fallback(serializers.Serializer):
    writer = serializers.CharField(help_text="The model that was asked: llm:<model>.")
    reason = serializers.CharField(help_text="Why its answer was not used.")


class Insight(serializers.Serializer):
    """A post-mortem. Its text is plain text written by rules or a model: show it as text."""

    execution_id = serializers.CharField()
    workflow = serializers.CharField()
    workflow_version = serializers.IntegerField()
    execution_status = serializers.CharField(help_text="The execution's status when this was written.")
    execution_version = serializers.IntegerField()
    current = serializers.BooleanField(help_text="False when the execution changed since (it runs again).")
    source = serializers.CharField(help_text="Who wrote it: rules, or llm:<model>.")
    summary = serializers.CharField()
    root_cause = serializers.CharField(allow_blank=True)
    evidence = Evidence(many=True)
    impact = serializers.CharField(allow_blank=True)
    suggested_actions = SuggestedAction(many=True)
    confidence = serializers.ChoiceField(choices=CONFIDENCE)
    dropped_evidence = serializers.ListField(
        child=serializers.IntegerField(), help_text="Event seqs a model cited that do not exist.")
    fallback = Fallback(allow_null=True)
    facts = serializers.DictField(help_text="The computed facts it was written from.")
    created_at = serializers.DateTimeField()
    took_ms = serializers.IntegerField(allow_null=True)


class InsightView(APIView):
    permission_classes = [HasRole]

    def get_throttles(self) -> list[Any]:
        if self.request.method != "POST":
            return []
        return [RegenerateThrottle(), ExecutionRegenerateThrottle()]

    def check_throttles(self, request: Request) -> None:
        """Stop at the first throttle that refuses: a request the user's rate refuses takes no
        execution's slot."""
        for throttle in self.get_throttles():
            if not throttle.allow_request(request, self):
                self.throttled(request, throttle.wait())

    @extend_schema(responses={200: Insight, 409: OpenApiResponse(Error, description=NOT_FINISHED)},
                   operation_id="executions_insight_retrieve",
                   summary="The post-mortem of a finished execution (written by the rules if there is "
                           "none: a read never asks the model)")
    def get(self, request: Request, execution_id: str) -> Response:
        record, current = service.shown(execution_id)
        return Response(Insight(represent(record, current)).data)

    @extend_schema(request=None, responses={200: Insight, 429: OpenApiResponse(Error, description=THROTTLED)},
                   operation_id="executions_insight_create",
                   summary="Write the post-mortem of a finished execution again, by the model if one is "
                           "configured and its budget allows (operators; throttled)")
    def post(self, request: Request, execution_id: str) -> Response:
        record = service.postmortem(execution_id, regenerate=True)
        return Response(Insight(represent(record, current=True)).data)
