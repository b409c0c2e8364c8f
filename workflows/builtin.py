"""The workflows detflow ships: ``file-processing``, which the demo and ``rundev`` register,
``payments``, which ``demo --workflow payments`` registers, and ``email`` and ``email-approved``."""
from __future__ import annotations

from typing import Any

from workflows import definitions
from workflows.email import EMAIL_APPROVED_DEFINITION, EMAIL_DEFINITION
from workflows.models import WorkflowDefinition
from workflows.payments import PAYMENTS_DEFINITION

#: Name of the built-in file-processing workflow.
FILE_PROCESSING = "file-processing"
#: Its retry policy: a failure waits about 1 s, then 4 s (transient trouble: disk, network).
_RETRY = {"max_attempts": 3, "initial_delay_s": 1.0, "multiplier": 4.0, "max_delay_s": 60.0, "jitter": 0.1}

#: The definition, version 1. Steps are named after their handlers, which find each other's
#: outputs under those names. Changing it here would register version 2 next to version 1.
FILE_PROCESSING_DEFINITION: dict[str, Any] = {
    "name": FILE_PROCESSING,
    "description": "Receive a file, check what it is, checksum, describe, thumbnail or compress, "
                   "store by content and notify",
    "steps": [
        {"name": "files.receive", "handler": "files.receive", "timeout_s": 600, "retry": _RETRY},
        {"name": "files.validate", "handler": "files.validate", "timeout_s": 600, "retry": _RETRY},
        {"name": "files.checksum", "handler": "files.checksum", "timeout_s": 600, "retry": _RETRY},
        {"name": "files.metadata", "handler": "files.metadata", "timeout_s": 600, "retry": _RETRY},
        {"name": "files.transform", "handler": "files.transform", "timeout_s": 600, "retry": _RETRY},
        {"name": "files.store", "handler": "files.store", "timeout_s": 600, "retry": _RETRY},
        {"name": "files.notify", "handler": "files.notify", "timeout_s": 60,
         "retry": {**_RETRY, "max_attempts": 5}},
    ],
}


def ensure_file_processing() -> WorkflowDefinition:
    """Register ``file-processing`` unless the same definition is stored already; return it."""
    stored, _ = definitions.register(FILE_PROCESSING_DEFINITION)
    return stored


def ensure_payments() -> WorkflowDefinition:
    """Register ``payments`` unless the same definition is stored already; return it."""
    stored, _ = definitions.register(PAYMENTS_DEFINITION)
    return stored


def ensure_email() -> tuple[WorkflowDefinition, WorkflowDefinition]:
    """Register ``email`` and ``email-approved`` unless the same definitions are stored; return them."""
    return definitions.register(EMAIL_DEFINITION)[0], definitions.register(EMAIL_APPROVED_DEFINITION)[0]
