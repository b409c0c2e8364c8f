"""Executions: the stored runs, the pure engine, the workers that advance them, and recovery."""
