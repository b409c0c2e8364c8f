"""What the demo prints: live progress (a bar, a row of step marks per file, notable events) and
the summary table."""
from __future__ import annotations

from pathlib import Path
from typing import Any, TextIO

from detflow_site import conf
from executions.store import now_ms, to_ms

UNICODE = {"SUCCEEDED": "✓", "RUNNING": "▸", "RETRY_WAIT": "↻", "FAILED": "✗", "PENDING": "·",
           "SKIPPED": "»", "CANCELLED": "-", "WAITING": "…", "bar": ("█", "░"), "ok": "✓", "bad": "✗"}
ASCII = {"SUCCEEDED": "+", "RUNNING": ">", "RETRY_WAIT": "~", "FAILED": "x", "PENDING": ".",
         "SKIPPED": "s", "CANCELLED": "-", "WAITING": "w", "bar": ("#", "-"), "ok": "ok", "bad": "FAILED"}
BAR_WIDTH = 30


def marks(out: TextIO) -> dict[str, Any]:
    """Return the marks the output can show: Unicode when it is UTF-8, ASCII otherwise."""
    encoding = (getattr(out, "encoding", None) or "utf-8").lower().replace("-", "")
    return UNICODE if encoding in ("utf8", "utf8sig") else ASCII


class Progress:
    """Prints notable events as they happen and, on a terminal, a live table redrawn below them."""

    def __init__(self, out: TextIO, names: list[str], enabled: bool = True) -> None:
        self.out = out
        self.names = names
        self.enabled = enabled
        self.tty = enabled and bool(getattr(out, "isatty", lambda: False)())
        self.marks = marks(out)
        self.width = max([len(n) for n in names] + [4])
        self.started_ms = now_ms()
        self._seen: dict[str, int] = {}
        self._drawn = 0
        self._done = -1

    def header(self, lines: list[str]) -> None:
        if self.enabled:
            self.out.write("\n".join(lines) + "\n\n")

    def update(self, docs: list[dict[str, Any]]) -> None:
        """Show what changed since the last call."""
        if not self.enabled:
            return
        pairs = list(zip(self.names, docs, strict=True))
        events = [line for name, doc in pairs for line in self._events(name, doc)]
        done = sum(1 for d in docs if d["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"))
        if self.tty:
            # One write per frame: erase the last table, add the new events, draw the table again.
            table = [self._bar(done, len(docs))] + [self._row(name, doc) for name, doc in pairs]
            erase = f"\x1b[{self._drawn}F\x1b[J" if self._drawn else ""
            self.out.write(erase + "".join(line + "\n" for line in events + table))
            self._drawn = len(table)
        else:
            if done != self._done:
                events.append(self._bar(done, len(docs)))
            if events:
                self.out.write("".join(line + "\n" for line in events))
        self._done = done
        self.out.flush()

    def finish(self, docs: list[dict[str, Any]]) -> None:
        """Draw the final state and leave it on screen."""
        self.update(docs)
        if self.enabled:
            self.out.write("\n")
            self._drawn = 0

    def _bar(self, done: int, total: int) -> str:
        full, empty = self.marks["bar"]
        filled = round(BAR_WIDTH * done / total) if total else BAR_WIDTH
        seconds = (now_ms() - self.started_ms) / 1000
        return f"[{full * filled}{empty * (BAR_WIDTH - filled)}] {done}/{total} finished  {seconds:4.1f}s"

    def _row(self, name: str, doc: dict[str, Any]) -> str:
        steps = "".join(self.marks.get(s["status"], "?") for s in doc["steps"])
        return f"  {name:<{self.width}}  {doc['status']:<9}  {steps}  {_detail(doc)}"

    def _events(self, name: str, doc: dict[str, Any]) -> list[str]:
        seen = self._seen.get(doc["_id"], 0)
        self._seen[doc["_id"]] = doc["event_seq"]
        lines = []
        for event in doc["events"]:
            if event["seq"] <= seen:
                continue
            text = _describe(event)
            if text:
                at = ((to_ms(event["at"]) or 0) - self.started_ms) / 1000
                lines.append(f"{max(at, 0):5.1f}s  {name:<{self.width}}  {text}")
        return lines


def _detail(doc: dict[str, Any]) -> str:
    for step in doc["steps"]:
        if step["status"] == "RUNNING":
            text = f"{step['name']} attempt {step['attempt']}"
            left_ms = (to_ms(step.get("lease_expires_at")) or 0) - now_ms()
            # The watchdog keeps at least 2/3 of the lease left; less means no heartbeat came.
            if left_ms < conf.get().LEASE_S * 500:
                text += (f", no heartbeat: lease runs out in {left_ms / 1000:.1f}s" if left_ms > 0
                         else ", lease ran out: waiting for the sweeper")
            return text
        if step["status"] == "RETRY_WAIT":
            wait = ((to_ms(step.get("next_retry_at")) or 0) - now_ms()) / 1000
            return f"{step['name']} retries in {max(wait, 0):.1f}s"
        if step["status"] == "FAILED":
            return f"failed at {step['name']}"
    return ""


def _describe(event: dict[str, Any]) -> str | None:
    """Say what a notable event means; ``None`` for the routine ones."""
    kind = event["type"]
    step = event.get("step", "")
    outcomes = {"retry": "a retry is scheduled", "failed": "the step fails for good"}
    then = outcomes.get(event.get("outcome", ""), "")
    if kind == "attempt_failed":
        return f"{step} attempt {event['attempt']} failed: {event.get('message')}; {then}"
    if kind == "attempt_lost":
        return (f"{step} attempt {event['attempt']} lost: its worker stopped before recording an "
                f"outcome, the sweeper saw the lease run out; {then}")
    if kind == "step_claimed" and event.get("attempt", 1) > 1:
        return f"{step} attempt {event['attempt']} started"
    if kind == "execution_succeeded":
        return "SUCCEEDED"
    if kind == "execution_failed":
        return "FAILED"
    return None


def summary_lines(summary: dict[str, Any], out: TextIO | None = None) -> list[str]:
    """Return the summary table, where the outputs are, and the demo's checks, as lines."""
    mark = marks(out) if out is not None else UNICODE
    rows = summary["executions"]
    width = max([len(r["file"]) for r in rows] + [4])
    lines = [f"{'file':<{width}}  {'status':<9}  {'attempts':<13}  {'time':>6}  {'failed step':<14}  reason"]
    for row in rows:
        attempts = str(row["attempts"])
        if row["recovered_crashes"]:
            attempts += f" ({row['recovered_crashes']} lost)"
        line = (f"{row['file']:<{width}}  {row['status']:<9}  {attempts:<13}  "
                f"{row['duration_s']:>5.1f}s  {row['failed_step'] or '':<14}  {row['error'] or ''}")
        lines.append(line.rstrip())
    base = Path(summary["workdir"])
    lines += ["", f"outputs, under {_short(base)}/:"]
    for row in rows:
        out_ = row["outputs"]
        where = [out_[k] for k in ("object", "derivative") if k in out_] or (
            [out_["inbox"] + "  (kept for inspection)"] if "inbox" in out_ else [])
        lines.append(f"  {row['file']:<{width}}  " + "  ".join(_short(Path(w), base) for w in where))
    lines.append(f"  notifications: {_short(Path(summary['outbox']), base)}")
    explained = [r for r in rows if r.get("postmortem")]
    if explained:
        lines += ["", "post-mortems of the failed executions:"]
        for row in explained:
            lines += postmortem_lines(row["file"], row["postmortem"])
    if summary.get("checks"):
        lines += ["", "checks:"]
        lines += [f"  {mark['ok'] if c['ok'] else mark['bad']} {c['check']}" for c in summary["checks"]]
    return lines


def postmortem_lines(name: str, postmortem: dict[str, Any]) -> list[str]:
    """Return a post-mortem as indented lines: summary, root cause, evidence, suggested actions."""
    lines = [f"  {name} (written by {postmortem['source']}): {postmortem['summary']}",
             f"    root cause: {postmortem['root_cause']}"]
    lines += [f"    event {e['event_seq']}: {e['shows']}" for e in postmortem["evidence"]]
    lines += [f"    suggested: {a['action'].replace('_', ' ')}: {a['detail']}"
              for a in postmortem["suggested_actions"]]
    return lines


def _short(path: Path, base: Path | None = None) -> str:
    for root in ([base] if base else []) + [Path.cwd()]:
        try:
            return str(path.relative_to(root))
        except ValueError:
            continue
    return str(path)
