"""Workflow definitions, the handler registry, and the context a handler receives."""
