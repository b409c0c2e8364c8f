"""What a post-mortem is: its fields, the JSON schema a model must answer in, and strict validation.

Both writers' answers go through :func:`validate`: a model's answer because it is untrusted, the
rules' answer so that both kinds are held to the same shape. Text is kept as plain text: control
characters (terminal escapes among them) are removed and lengths are capped; nothing is ever
rendered as HTML or run as code.
"""
from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from insights.errors import InvalidAnswer

#: Operator actions a suggestion maps to; ``other`` when none fits. ``compensate`` rolls a FAILED
#: or CANCELLED execution back; on a COMPENSATION_FAILED one, ``retry`` and ``skip`` act on its
#: failed compensation.
ACTIONS = ("retry", "retry_with_edited_input", "skip", "cancel", "compensate", "code_change", "other")
#: Actions an operator can take on an execution in each terminal status (``code_change`` and
#: ``other`` fit any): a suggestion of another action is kept as ``other``.
APPLICABLE = {
    "FAILED": frozenset({"retry", "retry_with_edited_input", "skip", "compensate"}),
    "SUCCEEDED": frozenset(),
    "CANCELLED": frozenset({"compensate"}),
    "COMPENSATED": frozenset(),
    "COMPENSATION_FAILED": frozenset({"retry", "skip"}),
}
CONFIDENCE = ("low", "medium", "high")
FIELDS = ("summary", "root_cause", "evidence", "impact", "suggested_actions", "confidence")
#: Longest text kept per field, in characters, and most items kept per list.
LIMITS = {"summary": 600, "root_cause": 2000, "impact": 800, "shows": 400, "detail": 800}
MAX_EVIDENCE = 12
MAX_ACTIONS = 6

#: The structured output asked of a model (OpenAI's strict JSON-schema mode).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": list(FIELDS),
    "properties": {
        "summary": {"type": "string", "description": "One or two sentences: what happened."},
        "root_cause": {"type": "string", "description": "Why, as far as the facts show."},
        "evidence": {
            "type": "array",
            "description": "Events that support the root cause, each by its sequence number.",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["event_seq", "shows"],
                "properties": {
                    "event_seq": {"type": "integer", "description": "The event's seq."},
                    "shows": {"type": "string", "description": "What this event shows."},
                },
            },
        },
        "impact": {"type": "string", "description": "What did not happen, or happened late."},
        "suggested_actions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["action", "detail"],
                "properties": {
                    "action": {"type": "string", "enum": list(ACTIONS)},
                    "detail": {"type": "string"},
                },
            },
        },
        "confidence": {"type": "string", "enum": list(CONFIDENCE)},
    },
}

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


@dataclass(frozen=True)
class Evidence:
    event_seq: int
    shows: str


@dataclass(frozen=True)
class Action:
    action: str
    detail: str


@dataclass(frozen=True)
class PostMortem:
    """A validated post-mortem, whoever wrote it."""

    summary: str
    root_cause: str
    evidence: tuple[Evidence, ...]
    impact: str
    suggested_actions: tuple[Action, ...]
    confidence: str
    #: Evidence items dropped because they cited an event that does not exist.
    dropped_evidence: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evidence"] = [dict(e) for e in data["evidence"]]
        data["suggested_actions"] = [dict(a) for a in data["suggested_actions"]]
        data["dropped_evidence"] = list(self.dropped_evidence)
        return data


def validate(answer: Any, event_seqs: Collection[int], status: str) -> PostMortem:
    """Return ``answer`` as a :class:`PostMortem`; raise :class:`InvalidAnswer` for any wrong shape.

    Evidence citing an event that the execution does not have is dropped (and counted), an action
    that does not apply to an execution in ``status`` becomes ``other``, text is made plain.
    """
    data = _mapping(answer, "the answer", FIELDS)
    evidence: list[Evidence] = []
    dropped: list[int] = []
    for i, item in enumerate(_list(data["evidence"], "evidence")):
        cited = _mapping(item, f"evidence[{i}]", ("event_seq", "shows"))
        seq = cited["event_seq"]
        if not isinstance(seq, int) or isinstance(seq, bool):
            raise InvalidAnswer(f"evidence[{i}].event_seq is not an integer")
        shows = plain(_text(cited["shows"], f"evidence[{i}].shows"), LIMITS["shows"])
        if seq not in event_seqs:
            dropped.append(seq)
        elif all(e.event_seq != seq for e in evidence) and len(evidence) < MAX_EVIDENCE:
            evidence.append(Evidence(seq, shows))
    actions = []
    allowed = APPLICABLE.get(status, frozenset())
    for i, item in enumerate(_list(data["suggested_actions"], "suggested_actions")[:MAX_ACTIONS]):
        suggested = _mapping(item, f"suggested_actions[{i}]", ("action", "detail"))
        action = suggested["action"]
        if action not in ACTIONS:
            raise InvalidAnswer(f"suggested_actions[{i}].action {str(action)[:40]!r} is not one of "
                                + ", ".join(ACTIONS))
        if action not in allowed and action not in ("code_change", "other"):
            action = "other"
        detail = plain(_text(suggested["detail"], f"suggested_actions[{i}].detail"), LIMITS["detail"])
        actions.append(Action(action, detail))
    confidence = data["confidence"]
    if confidence not in CONFIDENCE:
        raise InvalidAnswer(f"confidence is not one of {', '.join(CONFIDENCE)}")
    texts = {name: plain(_text(data[name], name), LIMITS[name])
             for name in ("summary", "root_cause", "impact")}
    if not texts["summary"]:
        raise InvalidAnswer("summary is empty")
    return PostMortem(evidence=tuple(evidence), suggested_actions=tuple(actions),
                      confidence=confidence, dropped_evidence=tuple(dropped), **texts)


def plain(text: str, limit: int) -> str:
    """Return ``text`` without control or bidirectional-override characters, cut to ``limit``."""
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\t", " ")).strip()
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "\u2026"


def _mapping(value: Any, what: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidAnswer(f"{what} is not an object")
    missing = [k for k in keys if k not in value]
    extra = sorted(str(k) for k in value if k not in keys)
    if missing or extra:
        raise InvalidAnswer(f"{what}: " + "; ".join(
            ([f"missing {', '.join(missing)}"] if missing else [])
            + ([f"unexpected {', '.join(extra)[:200]}"] if extra else [])))
    return value


def _list(value: Any, what: str) -> list[Any]:
    if not isinstance(value, list):
        raise InvalidAnswer(f"{what} is not a list")
    return value


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidAnswer(f"{what} is not a string")
    return value
