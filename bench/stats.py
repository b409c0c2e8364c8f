"""Small statistics: medians, percentiles, ratios of paired runs."""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0-100), linearly interpolated between the nearest ranks."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float:
    """Return the median of the per-repetition ratios (each pair measured side by side)."""
    return median([n / d for n, d in zip(numerators, denominators, strict=True) if d])


def rounded(value: float, digits: int = 3) -> float | None:
    """Round for JSON; NaN becomes ``None``."""
    return None if value is None or math.isnan(value) else round(value, digits)
