"""Module the ``dramatiq`` command imports in each process of the bench's raw Dramatiq worker set.

The same chain as ``bench.contenders.RawDramatiq`` (each step's actor sends the next step's
message, nothing is stored, no lock is taken), on the engine's broker and queue ``bench-raw``; the
last step of a chain counts it in Redis (``bench:raw-done:<run>``), where the bench looks for the
end, since the chains run in other processes than the one that launched them.
"""
from __future__ import annotations

import logging
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
django.setup()
# Dramatiq's own lines at INFO, as in runworker's processes: the bench waits for "Worker process
# is ready for action" from each process.
logging.getLogger("dramatiq").setLevel(logging.INFO)

import dramatiq  # noqa: E402

from bench import handlers  # noqa: E402
from bench.contenders import RAW_QUEUE  # noqa: E402
from detflow_site import services  # noqa: E402
from executions.broker import broker  # noqa: E402


@dramatiq.actor(actor_name="bench.raw_step", queue_name=RAW_QUEUE, max_retries=0, broker=broker)
def raw_step(run: str, chain: str, index: int, steps: int, sleep_s: float = 0.0) -> None:
    handlers.body(run, chain, index, sleep_s)
    if index + 1 < steps:
        raw_step.send(run, chain, index + 1, steps, sleep_s)
    else:
        services.redis_client().incr(f"bench:raw-done:{run}")
