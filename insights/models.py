"""The Insight document: the post-mortem of one execution, and the facts it was written from.

Insights write these documents and nothing else (DESIGN invariant 8). One per execution: writing
again replaces it. Every text field is plain text, stored and shown as text.
"""
from __future__ import annotations

import mongoengine as me


class Insight(me.Document):
    """The post-mortem of one finished execution."""

    #: The execution explained; one Insight per execution.
    execution_id = me.StringField(required=True, unique=True)
    workflow = me.StringField(required=True)
    workflow_version = me.IntField(required=True)
    #: The execution's status and ``version`` when this was written: a later change (an operator's
    #: retry that failed again) makes it out of date, and it is written again.
    execution_status = me.StringField(required=True)
    execution_version = me.IntField(required=True)
    #: Who wrote it: ``rules``, or ``llm:<model>``.
    source = me.StringField(required=True)
    summary = me.StringField(required=True)
    root_cause = me.StringField()
    #: ``{"event_seq", "shows"}`` items, each citing an event of the execution's history.
    evidence = me.ListField(me.DictField())
    impact = me.StringField()
    #: ``{"action", "detail"}`` items; ``action`` is one of ``insights.postmortem.ACTIONS``.
    suggested_actions = me.ListField(me.DictField())
    #: ``low``, ``medium`` or ``high``.
    confidence = me.StringField()
    #: Event seqs a model cited that the execution does not have (dropped from ``evidence``).
    dropped_evidence = me.ListField(me.IntField())
    #: When a model was configured but the rules wrote this: ``{"writer", "reason"}``.
    fallback = me.DictField()
    #: The fact sheet (``insights.facts.FactSheet.as_dict``), redacted.
    facts = me.DictField()
    created_at = me.DateTimeField(required=True)
    #: How long writing took, model call included, in milliseconds.
    took_ms = me.IntField()

    #: The unique index on ``execution_id`` is created by ``manage.py ensure_indexes``.
    meta = {"collection": "insights", "strict": False, "auto_create_index": False}

    def __str__(self) -> str:
        return f"post-mortem of {self.execution_id} by {self.source}"
