"""The executions app: counts finished executions."""
from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class ExecutionsConfig(AppConfig):
    name = "executions"

    def ready(self) -> None:
        from executions import signals

        signals.execution_finished.connect(count_finished, dispatch_uid="detflow.metrics.finished")


def count_finished(sender: Any, execution_id: str, status: str, workflow: str, **_: Any) -> None:
    """Count an execution that became terminal."""
    from executions import metrics

    metrics.EXECUTIONS_FINISHED.labels(workflow, status).inc()
