"""The demo: the sample set, the run with injected faults, its progress and summary, and the web
side of ``rundev`` and ``demo --serve``."""
