"""The bench's process set-up: Django settings, quiet logs, its own database, the handlers."""
from __future__ import annotations

import dataclasses
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def prepare() -> None:
    """Set the environment the bench runs in, then set Django up (idempotent)."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "detflow_site.settings")
    os.environ.setdefault("DETFLOW_LOG_LEVEL", "WARNING")
    # On a real MongoDB the bench empties the executions of the database it uses: its own.
    os.environ.setdefault("DETFLOW_MONGODB_DB", "detflow_bench")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from detflow_site import conf

    # Post-mortems are an insights feature, not part of running a step: a message per finished
    # execution that no bench worker consumes. They stay off unless the caller turns them on.
    if "INSIGHTS_AUTO" in {f.name for f in dataclasses.fields(conf.DetflowSettings)}:
        os.environ.setdefault("DETFLOW_INSIGHTS_AUTO", "0")
    import django

    django.setup()
    import bench.handlers  # noqa: F401  (registers bench.noop and bench.flaky)


def external_services() -> list[str]:
    """Name the configured services that are not embedded (the bench empties what it uses)."""
    found = []
    if os.environ.get("DETFLOW_MONGODB_URL"):
        found.append(f"MongoDB database {os.environ.get('DETFLOW_MONGODB_DB', 'detflow_bench')!r}")
    if os.environ.get("DETFLOW_REDIS_URL"):
        found.append("the Redis database of DETFLOW_REDIS_URL")
    return found


def rss_mb() -> float:
    """Return this process's resident set size now, in MB (10^6 bytes)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6
