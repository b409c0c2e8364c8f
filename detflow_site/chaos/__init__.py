"""Chaos: seeded fault runs that check the engine's invariants under many faults at once.

``schedule`` draws the faults from a seed, ``handlers`` is the workflow's step with its ledger,
``nemesis`` injects the faults that come from outside a handler, ``checker`` reads what happened,
and ``run`` puts them together for ``manage.py chaos`` on this process's worker threads.
``fleet`` runs the same workflow on real ``runworker`` processes that it SIGKILLs (``report`` is
what it prints), over the services ``hosted`` starts when none is configured.
"""
