"""Sending advance messages by the actor's name; a failed send is logged and left to the sweeper.

Nothing here imports the actor or the runner behind it: a process that only sends (the API, a
management command, the sweeper) loads the broker alone, never the worker's machinery.
"""
from __future__ import annotations

import logging

from dramatiq import Message

from detflow_site import conf

logger = logging.getLogger("detflow.dispatch")

#: Name of the actor that advances an execution; messages carry only the execution id.
ADVANCE = "detflow.advance"


def send(execution_id: str, delay_ms: int = 0) -> bool:
    """Ask a worker to advance ``execution_id`` (after ``delay_ms``); ``False`` if the send failed.

    MongoDB already holds the work, so a lost send delays it until the next sweep, never loses it.
    """
    from executions.broker import broker  # built from settings: imported when first needed

    message: Message[None] = Message(queue_name=conf.get().QUEUE, actor_name=ADVANCE,
                                     args=(execution_id,), kwargs={}, options={})
    try:
        broker.enqueue(message, delay=max(delay_ms, 0) or None)
    except Exception as exc:  # any broker failure: Redis down, timeout, refused
        logger.warning("send of %s failed (%s); the sweeper will re-send", execution_id, exc)
        return False
    return True
