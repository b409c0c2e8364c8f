"""Validation of a post-mortem answer: strict shape, evidence that exists, actions that apply, plain text."""
from __future__ import annotations

from typing import Any

import pytest

from insights.errors import InvalidAnswer
from insights.postmortem import LIMITS, validate

SEQS = {1, 2, 3, 4}


def answer(**changes: Any) -> dict[str, Any]:
    base = {"summary": "s", "root_cause": "r", "impact": "i", "confidence": "medium",
            "evidence": [{"event_seq": 3, "shows": "x"}],
            "suggested_actions": [{"action": "retry", "detail": "d"}]}
    return {**base, **changes}


def test_validate__a_good_answer_passes_unchanged() -> None:
    result = validate(answer(), SEQS, "FAILED")

    assert result.as_dict() == {**answer(), "dropped_evidence": []}


@pytest.mark.parametrize(("bad", "reason"), [
    ("not an object", "the answer is not an object"),
    (answer(extra="x"), "unexpected extra"),
    ({k: v for k, v in answer().items() if k != "impact"}, "missing impact"),
    (answer(summary=3), "summary is not a string"),
    (answer(summary="  "), "summary is empty"),
    (answer(evidence={"event_seq": 1}), "evidence is not a list"),
    (answer(evidence=[{"event_seq": "3", "shows": "x"}]), "evidence[0].event_seq is not an integer"),
    (answer(evidence=[{"event_seq": True, "shows": "x"}]), "evidence[0].event_seq is not an integer"),
    (answer(evidence=[{"event_seq": 3}]), "evidence[0]: missing shows"),
    (answer(suggested_actions=[{"action": "rm -rf", "detail": "d"}]), "is not one of retry"),
    (answer(confidence="certain"), "confidence is not one of low, medium, high"),
])
def test_validate__refuses_a_wrong_shape(bad: Any, reason: str) -> None:
    with pytest.raises(InvalidAnswer, match=None) as caught:
        validate(bad, SEQS, "FAILED")
    assert reason in str(caught.value)


def test_validate__drops_evidence_that_cites_no_event_and_duplicates() -> None:
    result = validate(answer(evidence=[{"event_seq": s, "shows": "x"} for s in (3, 99, 3, 0, 1)]),
                      SEQS, "FAILED")

    assert [e.event_seq for e in result.evidence] == [3, 1]
    assert result.dropped_evidence == (99, 0)


@pytest.mark.parametrize(("status", "action", "kept"), [
    ("FAILED", "skip", "skip"), ("FAILED", "cancel", "other"), ("SUCCEEDED", "retry", "other"),
    ("CANCELLED", "retry_with_edited_input", "other"), ("SUCCEEDED", "code_change", "code_change"),
    ("FAILED", "compensate", "compensate"), ("CANCELLED", "compensate", "compensate"),
    ("COMPENSATION_FAILED", "retry", "retry"), ("COMPENSATION_FAILED", "skip", "skip"),
    ("COMPENSATION_FAILED", "retry_with_edited_input", "other"),
    ("COMPENSATION_FAILED", "compensate", "other"), ("COMPENSATED", "retry", "other"),
    ("COMPENSATED", "compensate", "other"),
])
def test_validate__an_action_that_does_not_apply_becomes_other(status: str, action: str, kept: str) -> None:
    result = validate(answer(suggested_actions=[{"action": action, "detail": "d"}]), SEQS, status)

    assert [a.action for a in result.suggested_actions] == [kept]


def test_validate__text_is_plain_and_capped() -> None:
    result = validate(answer(summary="\x1b[2J<b>bold</b>\u202etxt\r\nnext\x00", root_cause="r" * 5000),
                      SEQS, "FAILED")

    assert result.summary == "[2J<b>bold</b>txt\nnext"
    assert len(result.root_cause) == LIMITS["root_cause"] and result.root_cause.endswith("\u2026")
