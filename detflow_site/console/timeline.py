"""The timeline of an execution as an SVG drawn on the server.

One row per step, one bar per recorded attempt from its start to its end (the running one to now),
coloured by outcome; a dashed line from a failed attempt to the next one is the retry wait (to
``next_retry_at`` while the step waits). A rollback gets a lane of its own below the forward steps:
a tinted band headed "rollback" (with a dashed mark where it started), one row per compensation in
plan order, its bars outlined and classed ``undo`` (not ``attempt``), so that undoing a step never
reads as a retry of it. A sleep or a wait for a signal runs no attempt: it is drawn as a hatched
indigo band classed ``wait-span`` and ``sleep`` or ``wait`` (from its ``wait_started`` to its end, or
to now while it waits), with a diamond where a signal came. The time an execution waited for an
operator is drawn as its own kind, classed ``operator-wait``, in grey and labelled "waited for an
operator": on a step's row from a failed attempt to the operator's retry (``retried``, or
``compensation_retried`` on a compensation's row), never as a retry wait; and across the rows as a
grey band while a pause held it (``paused`` to ``resumed`` of the same scope, to now while it holds).
Every text in it is escaped.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

from executions.store import to_ms

WIDTH = 900
LABEL_W = 170
ROW_H = 26
BAR_H = 14
TOP = 22
#: Bar colour by attempt outcome.
COLOURS = {"succeeded": "#2e7d32", "failed": "#c62828", "timed_out": "#ef6c00", "lost": "#757575",
           "running": "#1565c0"}
#: The rollback lane's band and the outline of its bars.
LANE_FILL = "#fbe9f0"
UNDO_STROKE = "#4a148c"
#: A sleep's or a wait's band (the WAITING badge's indigo) and a signal's mark.
WAIT_COLOUR = "#283593"
SIGNAL_COLOUR = "#f9a825"
#: What waited for an operator: a failed step until its retry, a pause until it was lifted.
OPERATOR_COLOUR = "#616161"
OPERATOR_LABEL = "waited for an operator"
#: The narrowest operator wait (px) that carries its label as text (a narrower one has it as a title).
LABEL_MIN_PX = 130


def svg(doc: dict[str, Any], now: int) -> SafeString:
    """Return the timeline of stored execution ``doc`` at ``now`` (milliseconds)."""
    start = to_ms(doc["created_at"]) or 0
    end = to_ms(doc.get("finished_at")) or now
    steps = doc["steps"]
    compensations = doc.get("compensations") or []
    retried, held = _operator_events(doc, now)
    rows = [_bars(slot, now, retried.get(("step", i), [])) for i, slot in enumerate(steps)]
    rows += [_bars(slot, now, retried.get(("undo", slot.get("step_index")), [])) for slot in compensations]
    spans, marks = _pauses(doc, now)
    rollback_at = to_ms((doc.get("rollback") or {}).get("started_at"))
    for bars, waits, _ in rows:
        end = max([end] + [bar["end"] for bar in bars] + [until for _, until in waits])
    end = max([end] + [p["end"] for found in spans.values() for p in found]
              + [m["at"] for found in marks.values() for m in found] + [h["end"] for h in held])
    if rollback_at is not None:
        end = max(end, rollback_at)
    span = max(end - start, 1)
    scale = (WIDTH - LABEL_W - 10) / span

    def x(ms: int) -> float:
        return round(LABEL_W + (ms - start) * scale, 1)

    lane = ROW_H if compensations else 0  # the rollback lane's heading
    height = TOP + ROW_H * len(rows) + lane + 6
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="detflow-timeline" width="{WIDTH}" '
           f'height="{height}" viewBox="0 0 {WIDTH} {height}" role="img" '
           f'aria-label="timeline of execution {escape(doc["_id"])}">',
           f'<text x="{LABEL_W}" y="14" font-size="11" fill="#666">0 s</text>',
           f'<text x="{WIDTH - 10}" y="14" font-size="11" fill="#666" text-anchor="end">'
           f'{span / 1000:.3f} s</text>',
           '<defs><pattern id="detflow-wait-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
           f'patternTransform="rotate(45)"><rect width="6" height="6" fill="{WAIT_COLOUR}" '
           'fill-opacity="0.25"/>'
           f'<line x1="0" y1="0" x2="0" y2="6" stroke="{WAIT_COLOUR}" stroke-width="2"/></pattern></defs>']
    for hold in held:
        out += _hold(hold, TOP, TOP + ROW_H * len(steps), x)
    for index, (step, row) in enumerate(zip(steps, rows[: len(steps)], strict=True)):
        label = f'{step["name"]} ({step["status"].lower()})'
        top = TOP + index * ROW_H
        out += _row(top, label, step["name"], row, x, undo=False)
        out += _pause_marks(top + ROW_H / 2, step["name"], spans.get(index, []), marks.get(index, []), x)
    if compensations:
        top = TOP + len(steps) * ROW_H
        out.append(f'<g class="rollback-lane"><rect x="0" y="{top}" width="{WIDTH}" '
                   f'height="{lane + ROW_H * len(compensations)}" fill="{LANE_FILL}"/>'
                   f'<text x="4" y="{top + ROW_H / 2 + 4}" font-size="12" font-weight="bold" '
                   f'class="lane-label">rollback, newest step first</text>')
        if rollback_at is not None:
            out.append(f'<line class="rollback-start" x1="{x(rollback_at)}" y1="{TOP}" '
                       f'x2="{x(rollback_at)}" y2="{height - 6}" stroke="{UNDO_STROKE}" '
                       f'stroke-dasharray="2 2"><title>rollback started</title></line>')
        for k, (undo, row) in enumerate(zip(compensations, rows[len(steps):], strict=True)):
            label = f'\u21a9 {undo["name"]} ({undo["status"].lower()})'
            out += _row(top + lane + k * ROW_H, label, f'undo {undo["name"]}', row, x, undo=True)
        out.append("</g>")
    out.append("</svg>")
    return mark_safe("".join(out))  # every text in it is escaped above


Row = tuple[list[dict[str, Any]], list[tuple[int, int]], list[tuple[int, int]]]


def _row(y: float, label: str, what: str, row: Row, x: Callable[[int], float], undo: bool) -> list[str]:
    """Return the SVG of one row: its label, its track, its waits (for a retry, for an operator) and
    its bars."""
    bars, waits, operator_waits = row
    mid = y + ROW_H / 2
    kind = "undo" if undo else "attempt"
    out = [f'<text x="4" y="{mid + 4}" font-size="12" class="{"undo" if undo else "step"}-label">'
           f'{escape(label)}</text>',
           f'<line x1="{LABEL_W}" y1="{mid}" x2="{WIDTH - 10}" y2="{mid}" stroke="#eee"/>']
    for wait_start, wait_end in waits:
        out.append(f'<line class="wait" x1="{x(wait_start)}" y1="{mid}" x2="{x(wait_end)}" y2="{mid}" '
                   f'stroke="#999" stroke-width="2" stroke-dasharray="4 3">'
                   f'<title>retry wait {(wait_end - wait_start) / 1000:.3f} s</title></line>')
    for wait_start, wait_end in operator_waits:
        left, right = x(wait_start), x(wait_end)
        title = f"{OPERATOR_LABEL}: {(wait_end - wait_start) / 1000:.3f} s, failed until an operator's retry"
        out.append(f'<g class="operator-wait retry"><line x1="{left}" y1="{mid}" x2="{right}" y2="{mid}" '
                   f'stroke="{OPERATOR_COLOUR}" stroke-width="4" stroke-opacity="0.6">'
                   f'<title>{escape(title)}</title></line>')
        if right - left >= LABEL_MIN_PX:
            out.append(f'<text x="{(left + right) / 2}" y="{mid - 5}" font-size="10" text-anchor="middle" '
                       f'class="operator-wait-label" fill="{OPERATOR_COLOUR}">{OPERATOR_LABEL}</text>')
        out.append("</g>")
    outline = f' stroke="{UNDO_STROKE}" stroke-width="1.5"' if undo else ""
    for bar in bars:
        left, right = x(bar["start"]), x(bar["end"])
        title = (f'{what} attempt {bar["n"]}: {bar["outcome"]}, '
                 f'{(bar["end"] - bar["start"]) / 1000:.3f} s on {bar["worker"]}')
        if bar["error"]:
            title += f' - {bar["error"]}'
        out.append(f'<rect class="{kind} {escape(bar["outcome"])}" x="{left}" y="{mid - BAR_H / 2}" '
                   f'width="{max(right - left, 2)}" height="{BAR_H}" rx="2" '
                   f'fill="{COLOURS.get(bar["outcome"], "#555")}"{outline}>'
                   f'<title>{escape(title)}</title></rect>')
    return out


def _hold(hold: dict[str, Any], top: float, bottom: float, x: Callable[[int], float]) -> list[str]:
    """Return the SVG of a pause that held the execution: a grey band across the steps' rows."""
    left, right = x(hold["start"]), x(hold["end"])
    took = f'{(hold["end"] - hold["start"]) / 1000:.3f} s{" so far" if hold["open"] else ""}'
    title = (f'{OPERATOR_LABEL}: paused ({hold["who"]}) by {hold["by"]}'
             + (f' ({hold["reason"]})' if hold["reason"] else "") + f', {took}')
    out = [f'<g class="operator-wait pause"><rect x="{left}" y="{top}" width="{max(right - left, 2)}" '
           f'height="{bottom - top}" fill="{OPERATOR_COLOUR}" fill-opacity="0.15" stroke="{OPERATOR_COLOUR}" '
           f'stroke-dasharray="1 2"><title>{escape(title)}</title></rect>']
    if right - left >= LABEL_MIN_PX:
        out.append(f'<text x="{(left + right) / 2}" y="{top + 10}" font-size="10" text-anchor="middle" '
                   f'class="operator-wait-label" fill="{OPERATOR_COLOUR}">{OPERATOR_LABEL} (paused)</text>')
    out.append("</g>")
    return out


def _operator_events(doc: dict[str, Any], now: int) -> tuple[dict[tuple[str, Any], list[int]],
                                                           list[dict[str, Any]]]:
    """Return when operators retried each step (``("step", index)``) and each compensation
    (``("undo", index of the step it undoes)``), and the pauses that held the execution (from
    ``paused`` to the ``resumed`` of the same scope; to its end, or now, while it holds)."""
    retried: dict[tuple[str, Any], list[int]] = {}
    held: list[dict[str, Any]] = []
    open_by_scope: dict[str, dict[str, Any]] = {}
    for event in doc.get("events") or []:
        kind, at = event.get("type"), to_ms(event.get("at"))
        if at is None:
            continue
        if kind in ("retried", "compensation_retried"):
            lane = "step" if kind == "retried" else "undo"
            retried.setdefault((lane, event.get("step_index")), []).append(at)
        elif kind == "paused":
            scope = str(event.get("scope"))
            if scope not in open_by_scope:
                open_by_scope[scope] = {"start": at, "end": at, "open": True, "by": event.get("by"),
                                        "reason": event.get("reason") or "",
                                        "who": "itself" if scope == "execution" else "its workflow"}
                held.append(open_by_scope[scope])
        elif kind == "resumed" and str(event.get("scope")) in open_by_scope:
            open_by_scope.pop(str(event.get("scope"))).update(end=at, open=False)
    finished = to_ms(doc.get("finished_at"))
    for hold in open_by_scope.values():
        hold["end"] = max(hold["start"], finished if finished is not None else now)
    return retried, held


def _pause_marks(mid: float, what: str, spans: list[dict[str, Any]], marks: list[dict[str, Any]],
                 x: Callable[[int], float]) -> list[str]:
    """Return the SVG of a step's sleeps or waits (hatched bands) and the signals that came to it."""
    out = []
    for p in spans:
        left, right = x(p["start"]), x(p["end"])
        what_for = f' for signal {p["signal"]}' if p["signal"] else ""
        verb = "sleeps" if p["kind"] == "sleep" else "waits"
        took = f'{(p["end"] - p["start"]) / 1000:.3f} s'
        if p["outcome"] == "waiting":
            title = f'{what} {verb}{what_for}: {took} so far'
        else:
            title = f'{what} {p["kind"]}{what_for}: {p["outcome"]} after {took}'
        out.append(f'<rect class="wait-span {escape(p["kind"])} {escape(p["outcome"])}" x="{left}" '
                   f'y="{mid - BAR_H / 2}" width="{max(right - left, 2)}" height="{BAR_H}" rx="2" '
                   f'fill="url(#detflow-wait-hatch)" stroke="{WAIT_COLOUR}" stroke-width="1">'
                   f'<title>{escape(title)}</title></rect>')
    for m in marks:
        cx, r = x(m["at"]), BAR_H / 2 + 1
        title = f'signal {m["name"]} from {m["by"]}' + (f' ({m["reason"]})' if m["reason"] else "")
        out.append(f'<polygon class="signal-mark" points="{cx},{mid - r} {cx + r},{mid} {cx},{mid + r} '
                   f'{cx - r},{mid}" fill="{SIGNAL_COLOUR}" stroke="#333" stroke-width="0.5">'
                   f'<title>{escape(title)}</title></polygon>')
    return out


Found = dict[int, list[dict[str, Any]]]


def _pauses(doc: dict[str, Any], now: int) -> tuple[Found, Found]:
    """Return, by step index, the sleeps and waits the history records (``wait_started`` to its
    ``signal_consumed``, ``wait_ended`` or cancel; to now while open) and the signals that came to
    each step (the one that took it, else the first wait step for its name)."""
    spans: Found = {}
    received: dict[int, dict[str, Any]] = {}
    taker: dict[int, int] = {}
    for event in doc.get("events") or []:
        kind, at = event.get("type"), to_ms(event.get("at"))
        index = event.get("step_index")
        if at is None:
            continue
        if kind == "wait_started" and isinstance(index, int):
            spans.setdefault(index, []).append({"start": at, "end": max(now, at), "kind": event.get("kind"),
                                                "signal": event.get("signal"), "outcome": "waiting"})
        elif kind in ("signal_consumed", "wait_ended") and isinstance(index, int) and spans.get(index):
            ended = "signalled" if kind == "signal_consumed" else str(event.get("outcome"))
            spans[index][-1].update(end=at, outcome=ended)
            if kind == "signal_consumed" and isinstance(event.get("signal_index"), int):
                taker[event["signal_index"]] = index
        elif kind == "cancelled":
            for found in spans.values():
                if found[-1]["outcome"] == "waiting":
                    found[-1].update(end=at, outcome="cancelled")
        elif kind == "signal_received" and isinstance(event.get("signal_index"), int):
            received[event["signal_index"]] = {"at": at, "name": event.get("name"), "by": event.get("by"),
                                               "reason": event.get("reason") or ""}
    finished = to_ms(doc.get("finished_at"))
    for found in spans.values():  # a wait open at the end of a finished execution ends with it
        if found[-1]["outcome"] == "waiting" and finished is not None:
            found[-1]["end"] = max(finished, found[-1]["start"])
    specs = (doc.get("definition") or {}).get("steps") or []
    marks: Found = {}
    for k, mark in received.items():
        index = taker.get(k)
        if index is None:
            index = next((i for i, spec in enumerate(specs)
                          if (spec.get("wait") or {}).get("signal") == mark["name"]), None)
        if index is not None:
            marks.setdefault(index, []).append(mark)
    return spans, marks


def _bars(step: dict[str, Any], now: int, retried: list[int]) -> Row:
    """Return a step's (or a compensation's) bars, its retry waits and its waits for an operator (a
    gap after a failed attempt that an operator's retry, at one of ``retried``, ended)."""
    bars = []
    for record in step.get("attempts") or []:
        started = to_ms(record.get("started_at"))
        if started is None:
            continue
        ended = to_ms(record.get("ended_at")) or started
        error = f'{record.get("error_type")}: {record.get("message")}' if record.get("error_type") else ""
        bars.append({"n": record.get("n"), "start": started, "end": ended,
                     "outcome": str(record.get("outcome") or "unknown"),
                     "worker": record.get("worker"), "error": error[:200]})
    current = step.get("current")
    if current and current.get("started_at") is not None:
        started = to_ms(current["started_at"]) or now
        bars.append({"n": current.get("n"), "start": started, "end": max(now, started),
                     "outcome": "running", "worker": current.get("worker"), "error": ""})
    waits, operator_waits = [], []
    for a, b in itertools.pairwise(bars):
        if a["outcome"] == "succeeded" or b["start"] <= a["end"]:
            continue
        by_operator = [r for r in retried if a["end"] <= r <= b["start"]]
        if by_operator:
            operator_waits.append((a["end"], by_operator[0]))
        else:
            waits.append((a["end"], b["start"]))
    retry_at = to_ms(step.get("next_retry_at"))
    if step.get("status") == "RETRY_WAIT" and bars and retry_at is not None:
        waits.append((bars[-1]["end"], max(retry_at, bars[-1]["end"])))
    return bars, waits, operator_waits
