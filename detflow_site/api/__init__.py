"""The REST API under ``/api/v1/``: workflows, handlers, executions, uploads, operator actions."""
