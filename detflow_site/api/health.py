"""``GET health/``: are MongoDB and Redis reachable, and how fast do they answer; and the probes
outside the API: ``/healthz`` (alive), ``/readyz`` (services answer) and ``/metrics`` (Prometheus).

Anyone may ask (load balancers, probes) and learns each service's name and state; latencies and
error text (addresses, socket paths) go only to staff users, signed in by session or token."""
from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from drf_spectacular.utils import extend_schema
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest, multiprocess
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from detflow_site import services
from detflow_site.api.representations import Health
from executions import store


def probe(check: Callable[[], Any]) -> dict[str, Any]:
    """Run ``check``; return whether it worked, how long it took, and the error if it failed."""
    started = time.perf_counter()
    try:
        check()
    except Exception as exc:  # a health check reports failures, it does not raise them
        return {"ok": False, "latency_ms": None, "error": f"{type(exc).__name__}: {exc}"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 3), "error": None}


def services_state(request: HttpRequest) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Probe MongoDB and Redis; return whether both answer and each one's state, with its latency
    and error only when ``request`` comes from a staff user."""
    found = {"mongodb": probe(lambda: store.collection().database.command("ping")),
             "redis": probe(lambda: services.redis_client().ping())}
    healthy = all(state["ok"] for state in found.values())
    if not is_staff(request):
        found = {name: {"ok": state["ok"]} for name, state in found.items()}
    return healthy, found


def is_staff(request: HttpRequest) -> bool:
    """Whether an active staff user sent ``request``: by its session, or by an API token (a token
    that is wrong makes the caller anonymous here, never a 401 to a probe)."""
    user = getattr(request, "user", None)
    if user is None or not user.is_authenticated:
        try:
            signed = TokenAuthentication().authenticate(request)  # type: ignore[arg-type]
        except AuthenticationFailed:
            signed = None
        user = signed[0] if signed else None
    return bool(user is not None and user.is_active and user.is_staff)


class HealthView(APIView):
    """Open to anyone (load balancers, probes): it says nothing about executions."""

    # The session only: a token is read by ``is_staff``, where a wrong one cannot turn a probe into a 401.
    authentication_classes = [SessionAuthentication]
    permission_classes = [AllowAny]

    @extend_schema(responses={200: Health, 503: Health}, auth=[],
                   summary="MongoDB and Redis reachable (with latency and error for staff users); "
                           "503 when one is not")
    def get(self, request: Request) -> Response:
        healthy, found = services_state(request._request)
        return Response({"status": "ok" if healthy else "degraded", **found}, status=200 if healthy else 503)


def healthz(request: HttpRequest) -> JsonResponse:
    """Liveness: the process answers (no service is asked)."""
    return JsonResponse({"status": "ok"})


def readyz(request: HttpRequest) -> JsonResponse:
    """Readiness: MongoDB and Redis answer; 503 (with which failed) when either does not."""
    ready, found = services_state(request)
    return JsonResponse({"status": "ready" if ready else "not ready", **found}, status=200 if ready else 503)


def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus metrics of this process (of every worker process in multiprocess mode)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
