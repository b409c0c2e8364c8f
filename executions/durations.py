"""How long the steps of a stored execution took, and the nearest-rank percentiles of such times.

The admin's statistics (``detflow_site.console.aggregates``) and the post-mortems' step baselines
(``insights.baseline``) both read step times here, so that a step's p95 is the same figure in both.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from detflow_site.times import to_ms

#: The fields of a stored execution that :func:`step_durations` reads (a projection).
STEP_FIELDS = {"steps.name": 1, "steps.status": 1, "steps.started_at": 1, "steps.finished_at": 1}


def step_durations(doc: Mapping[str, Any]) -> dict[str, int]:
    """Return how long each SUCCEEDED step of ``doc`` took, by name, in milliseconds: from its first
    claim to its success."""
    durations = {}
    for step in doc.get("steps") or ():
        start, end = to_ms(step.get("started_at")), to_ms(step.get("finished_at"))
        if step.get("status") == "SUCCEEDED" and start is not None and end is not None:
            durations[str(step.get("name"))] = end - start
    return durations


def percentile(values: Sequence[int], q: float) -> int:
    """Return the ``q`` quantile (0 to 1) of ``values`` by nearest rank: the smallest value that at
    least a share ``q`` of them do not pass. ``values`` must not be empty."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]
