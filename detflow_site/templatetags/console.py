"""Template filters of the admin console: times in UTC, durations, status badges."""
from __future__ import annotations

import datetime as dt
from typing import Any

from django import template
from django.utils.html import format_html
from django.utils.safestring import SafeString

from detflow_site.times import naive_utc

register = template.Library()

#: Badge colour by execution, step or attempt status (white text on each: contrast 4.5:1 or more).
BADGES = {"PENDING": "#6d6d6d", "RUNNING": "#1565c0", "RETRY_WAIT": "#ef6c00", "SUCCEEDED": "#2e7d32",
          "FAILED": "#c62828", "SKIPPED": "#8e24aa", "CANCELLED": "#455a64",
          # A rollback's own: running (teal), done (brown: undone, not a success), stopped for an
          # operator (crimson, apart from a forward step's failure).
          "COMPENSATING": "#00695c", "COMPENSATED": "#6d4c41", "COMPENSATION_FAILED": "#ad1457",
          # A sleep or a wait: nothing runs, nothing is held (indigo).
          "WAITING": "#283593",
          # Held by an operator's pause (its own, or its workflow's): nothing new starts (amber-brown).
          "PAUSED": "#8d6e00"}


@register.filter
def utc(value: Any) -> str:
    """Show a stored (naive UTC) time as ISO 8601 with ``Z``, to the millisecond."""
    if not isinstance(value, dt.datetime):
        return "" if value is None else str(value)
    return naive_utc(value).isoformat(sep=" ", timespec="milliseconds") + "Z"


@register.filter
def utc_seconds(value: Any) -> str:
    """Show a stored (naive UTC) time as ISO 8601 with ``Z``, to the second (a list's compact column)."""
    if not isinstance(value, dt.datetime):
        return "" if value is None else str(value)
    return naive_utc(value).isoformat(sep=" ", timespec="seconds") + "Z"


@register.filter
def utc_short(value: Any) -> str:
    """Show a stored (naive UTC) time as ``MM-DD HH:MM:SS`` (a narrow list's column; its title holds
    the whole time)."""
    if not isinstance(value, dt.datetime):
        return "" if value is None else str(value)
    return naive_utc(value).strftime("%m-%d %H:%M:%S")


@register.filter
def ms(value: Any) -> str:
    """Show milliseconds as a duration: ``850 ms``, ``12.3 s``, ``4 min 05 s``, ``2 h 03 min``."""
    if value is None or value == "":
        return ""
    value = int(value)
    if value < 1000:
        return f"{value} ms"
    if value < 60_000:
        return f"{value / 1000:.1f} s"
    minutes, seconds = divmod(value // 1000, 60)
    if minutes < 60:
        return f"{minutes} min {seconds:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@register.filter
def percent(value: Any) -> str:
    return "" if value is None else f"{value * 100:.1f} %"


@register.filter
def badge(status: Any) -> SafeString:
    """Show a status as a coloured badge."""
    colour = BADGES.get(str(status).upper(), "#555")
    return format_html('<span class="detflow-badge status-{}" style="background:{}">{}</span>',
                       str(status).lower(), colour, status)


@register.filter
def capped(count: int, cap: int) -> str:
    """Show a count that stopped at ``cap`` as ``cap+``."""
    return f"{cap}+" if count >= cap else str(count)


@register.filter
def get_id(document: dict[str, Any]) -> Any:
    """Return a stored document's ``_id`` (templates cannot name attributes starting with ``_``)."""
    return document.get("_id")


@register.filter
def paused_badge(paused: Any) -> SafeString:
    """Show a stored ``paused`` (``{scope: {by, reason, at}}``) as a "Paused" badge saying by whom and why."""
    held = paused if isinstance(paused, dict) else {}
    why = "; ".join(f"{'its workflow' if scope == 'workflow' else 'itself'}: by {hold.get('by')}, "
                    f"{hold.get('reason')}" for scope, hold in sorted(held.items()) if isinstance(hold, dict))
    return format_html('<span class="detflow-badge status-paused" style="background:{}" title="{}">'
                       'Paused</span>', BADGES["PAUSED"], why)
