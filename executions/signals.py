"""Signals other apps listen to; the engine never imports its listeners (insights, metrics)."""
from __future__ import annotations

from django.dispatch import Signal

#: Sent once by the writer whose update made an execution terminal (SUCCEEDED, FAILED, CANCELLED,
#: COMPENSATED, COMPENSATION_FAILED; again when it ends again after an operator's action), after the
#: update, with ``execution_id``, ``status`` and ``workflow``. Receivers run in the writer's thread
#: and must be quick (send a message, count a metric); their errors are logged, never raised into
#: the engine.
execution_finished = Signal()

#: Sent by a sweeper thread after each sweep it ran (with ``exclusive``, only by the leader), with
#: ``now`` (the sweep's time). Receivers run in the sweeper's thread, so they may do housekeeping
#: that takes a moment (the project's retention pass); their errors are logged, never raised.
swept = Signal()
