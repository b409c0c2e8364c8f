"""The Dramatiq actor that advances an execution by one step."""
from __future__ import annotations

import dramatiq

from detflow_site import conf
from executions import bulk, runner
from executions.broker import broker
from executions.dispatch import ADVANCE


@dramatiq.actor(actor_name=ADVANCE, queue_name=conf.get().QUEUE, max_retries=0, broker=broker)
def advance(execution_id: str) -> None:
    """Advance one execution by what the engine decides from its stored state."""
    runner.advance(execution_id)


@dramatiq.actor(actor_name=bulk.RUN, queue_name=conf.get().QUEUE, max_retries=0, broker=broker)
def run_bulk(op_id: str) -> None:
    """Run a bulk operation (retry or cancel by filter) from its saved cursor."""
    bulk.run(op_id)
