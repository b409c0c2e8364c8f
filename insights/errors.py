"""Errors of insights, under the root in ``detflow_site.errors``."""
from __future__ import annotations

from detflow_site.errors import Conflict, DetflowError


class NotFinished(Conflict):
    """The execution has not finished: a post-mortem is written once it is terminal."""

    default_code = "not_finished"


class WriterFailed(DetflowError):
    """A model could not write a post-mortem (no answer, an error, a timeout, an invalid answer);
    the message says why in one line, and the rules write it instead."""


class InvalidAnswer(WriterFailed):
    """A model's answer is not a post-mortem of the required shape."""
