"""The stored workflow definitions: one immutable document per (name, version)."""
from __future__ import annotations

import mongoengine as me


class WorkflowDefinition(me.Document):
    """One version of a workflow; never modified after it is inserted."""

    #: Workflow name, shared by all its versions.
    name = me.StringField(required=True)
    #: 1 for the first definition of a name, then one more for each changed definition.
    version = me.IntField(required=True, min_value=1)
    description = me.StringField(default="")
    #: The steps as plain data (``WorkflowSpec.to_dict()["steps"]``).
    steps = me.ListField(me.DictField(), required=True)
    #: Input fields (dotted paths) shown as ``[secret]`` everywhere but to handlers.
    secret_inputs = me.ListField(me.StringField(), default=list)
    #: What a step failing for good leads to: ``stop`` or ``compensate`` (``workflows.spec.ON_FAILURE``).
    on_failure = me.StringField(default="stop")
    #: Longest time an execution may take (seconds; ``None``: none), and what it does past it.
    deadline_s = me.FloatField()
    on_deadline = me.StringField(default="fail")
    #: Days a finished execution is kept (``None``: the ``DETFLOW_RETENTION_DAYS`` setting).
    retention_days = me.IntField()
    #: The JSON Schema a start's input must match, as JSON text (a schema's keys, ``$ref`` or
    #: ``a.b``, may not be field names in MongoDB); ``None``: any input.
    input_schema_json = me.StringField()
    #: Hash of the content: equal definitions have equal fingerprints.
    fingerprint = me.StringField(required=True)
    created_at = me.DateTimeField(required=True)

    meta = {
        "collection": "workflow_definitions",
        # Created by ``manage.py ensure_indexes``, never on first access. Every read is by name,
        # newest version first (one version, the latest, every version, the latest of each name).
        "auto_create_index": False,
        "indexes": [{"fields": ["name", "-version"], "unique": True}],
    }

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"
