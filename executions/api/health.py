"""``GET health/``: are MongoDB and Redis reachable, and how fast do they answer; and the probes
outside the API: ``/healthz`` (alive), ``/readyz`` (services answer) and ``/metrics`` (Prometheus)."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detflow_site import services
from executions import store
from executions.api.representations import Health


def probe(check: Callable[[], Any]) -> dict[str, Any]:
    """Run ``check``; return whether it worked, how long it took, and the error if it failed."""
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a health check reports failures, it does not raise them
        return {"ok": False, "latency_ms": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3), "error": None}


class HealthView(APIView):
    """Open to anyone (load balancers, probes): it says nothing about executions."""

    authentication_classes: list[Any] = []
    permission_classes = [AllowAny]

    @extend_schema(responses={200: Health, 503: Health}, auth=[],
                   summary="MongoDB and Redis reachable, with latency; 503 when one is not")
    def get(self, request: Request) -> Response:
        mongodb = probe(lambda: store.collection().database.command("ping"))
        redis = probe(lambda: services.redis_client().ping())
        healthy = mongodb["ok"] and redis["ok"]
        return Response({"status": "ok" if healthy else "degraded", "mongodb": mongodb, "redis": redis},
                        status=200 if healthy else 503)


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers (no service is asked)."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: MongoDB and Redis answer; 503 (with what failed) when either does not."""
    mongodb = probe(lambda: store.collection().database.command("ping"))
    redis = probe(lambda: services.redis_client().ping())
    ready = mongodb["ok"] and redis["ok"]
    return JsonResponse({"status": "ready" if ready else "not ready", "mongodb": mongodb,
                         "redis": redis}, status=200 if ready else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics of this process (of every worker process in multiprocess mode)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
