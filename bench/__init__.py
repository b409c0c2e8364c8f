"""`make bench`: detflow against a raw Dramatiq chain and a Celery chain, measured side by side."""
