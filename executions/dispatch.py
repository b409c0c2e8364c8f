"""Sending advance messages; a failed send is logged and left to the sweeper."""
from __future__ import annotations

import logging

logger = logging.getLogger("detflow.dispatch")


def send(execution_id: str, delay_ms: int = 0) -> bool:
    """Ask a worker to advance ``execution_id`` (after ``delay_ms``); ``False`` if the send failed.

    MongoDB already holds the work, so a lost send delays it until the next sweep, never loses it.
    """
    from executions.actors import advance

    try:
        advance.send_with_options(args=(execution_id,), delay=max(delay_ms, 0) or None)
    except Exception as exc:  # any broker failure: Redis down, timeout, refused
        logger.warning("send of %s failed (%s); the sweeper will re-send", execution_id, exc)
        return False
    return True
