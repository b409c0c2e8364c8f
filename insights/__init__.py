"""Insights: facts and post-mortems computed from finished executions; reads executions only."""
