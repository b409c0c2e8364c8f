"""The Dramatiq actor that writes the post-mortem of a finished execution, on a queue of its own.

Its own queue (``<DETFLOW_QUEUE>-insights``) keeps a slow model call from holding up a step: the
in-process pool gives it a thread of its own, and ``runworker --queues`` can give it processes of
its own. Dramatiq may retry it (a store that is down), unlike the engine's actor: writing a
post-mortem twice only replaces it (never with one of an earlier finish), and the model is asked
once per finish: a second message for it, while the first one's writer asks, finds that writer's
claim and looks again once the claim has run out (the writer may have died). Each model call
counts against ``DETFLOW_INSIGHTS_MODEL_CALLS_PER_HOUR``.
"""
from __future__ import annotations

import logging

import dramatiq

from detflow_site import conf
from executions.broker import broker
from insights import service

logger = logging.getLogger("detflow.insights")

#: Name of the actor and its queue; messages carry the execution id (and how often it waited).
POSTMORTEM = "detflow.postmortem"
QUEUE = f"{conf.get().QUEUE}-insights"
#: Times a cancelled execution with a running attempt is looked at again before it is written up as
#: it stands (the attempt ends, or its lease runs out and the sweeper records it lost).
SETTLE_TRIES = 10


@dramatiq.actor(actor_name=POSTMORTEM, queue_name=QUEUE, max_retries=3, min_backoff=1000,
                max_backoff=60_000, broker=broker)
def write_postmortem(execution_id: str, waited: int = 0) -> None:
    """Write the post-mortem of an execution that just finished, if it needs one."""
    done = service.on_finished(execution_id, settle=waited < SETTLE_TRIES)
    if done == "settling":
        delay_ms = max(round(conf.get().LEASE_S * 1000), 500)
        write_postmortem.send_with_options(args=(execution_id, waited + 1), delay=delay_ms)
    elif done == "being written" and waited < SETTLE_TRIES:
        # Another writer asks the model (a duplicate message): look again once its claim has run
        # out, in case that writer died before it stored anything.
        write_postmortem.send_with_options(args=(execution_id, waited + 1), delay=service.claim_ms())
    logger.debug("post-mortem of %s: %s", execution_id, done)
