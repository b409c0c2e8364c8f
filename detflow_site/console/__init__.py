"""The admin console of executions and workflows: queries, aggregates and pictures."""
