"""Receivers of the engine's signals: a finished execution gets its post-mortem message."""
from __future__ import annotations

import logging
from typing import Any

from detflow_site import conf

logger = logging.getLogger("detflow.insights")


def execution_finished(sender: Any, execution_id: str, status: str, **kwargs: Any) -> None:
    """Queue the post-mortem of an execution that just became terminal (``DETFLOW_INSIGHTS_AUTO``).

    Any terminal status: FAILED, CANCELLED, COMPENSATED and COMPENSATION_FAILED are written up, a
    SUCCEEDED one when a step was slow (``service.on_finished`` decides). An execution that ends
    again (an operator's retry, or a rollback of a FAILED or CANCELLED one) is sent again, and its
    post-mortem is rewritten for the new end.

    Runs in the writer's thread: it only sends a message. A failed send loses that post-mortem
    alone (it can still be asked for); it never reaches the engine.
    """
    if not conf.get().INSIGHTS_AUTO:
        return
    from insights.actors import write_postmortem

    try:
        write_postmortem.send(execution_id)
    except Exception as exc:  # any broker failure: Redis down, timeout, refused
        logger.warning("post-mortem message for %s not sent: %s", execution_id, exc)
