"""Signals other apps listen to; the engine never imports its listeners (insights, metrics)."""
from __future__ import annotations

from django.dispatch import Signal

#: Sent once by the writer whose update made an execution terminal (SUCCEEDED, FAILED, CANCELLED,
#: COMPENSATED, COMPENSATION_FAILED; again when it ends again after an operator's action), after the
#: update, with ``execution_id``, ``status`` and ``workflow``. Receivers run in the writer's thread
#: and must be quick (send a message, count a metric); their errors are logged, never raised into
#: the engine.
execution_finished = Signal()
