"""Memory of a worker process after 1,000, 5,000 and 10,000 executions, its store excluded.

A fresh child process runs the engine's worker (``bench.contenders.Detflow``: a Dramatiq worker on
the engine's queue) and feeds it executions in batches, starting them in the same process. After each batch
has finished, the child measures the BSON size of what the store holds (the batch's documents),
deletes them, collects garbage and reads its resident set size. After the last reading, one more
batch is kept and measured as Python objects by ``pympler.asizeof`` (the embedded store's own size
in memory; measured last, so that pympler's own allocations stay out of the RSS series). The store
is therefore excluded by deletion: the RSS series is the worker's own memory, and the store's
size, which grows with every execution kept (by design: it is the state), is reported apart, per
execution.

    .venv/bin/python -m bench.memory [--executions 10000] [--batch 100] [--steps 1] [--threads 4]
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from typing import Any

from bench.environment import ROOT, prepare, rss_mb


def checkpoints(executions: int) -> tuple[int, int, int]:
    """Where the RSS is read: a tenth, half and all of the run (1,000, 5,000, 10,000 by default)."""
    return executions // 10, executions // 2, executions


def store_size(detailed: bool) -> dict[str, Any]:
    """Return the size of the documents the store holds now."""
    import bson

    from detflow_site import services
    from executions import store

    docs = list(store.collection().find({}))
    sizes: dict[str, Any] = {"documents": len(docs), "bson_bytes": sum(len(bson.encode(d)) for d in docs)}
    if detailed and services.is_embedded_store():
        from pympler import asizeof

        kept: list[Any] = list(store.collection()._store._documents.values())  # mongomock's own copies
        sizes["python_bytes"] = asizeof.asizeof(kept)
    return sizes


def _batch(detflow: Any, count: int, steps: int) -> None:
    """Start ``count`` executions and wait until every one has SUCCEEDED."""
    from bench import handlers
    from executions import store

    run = secrets.token_hex(6)
    handlers.FINISH.arm(run, count)
    detflow.launch(run, count, steps)
    if not handlers.FINISH.wait(300):
        raise RuntimeError(f"{handlers.FINISH.done} of {count} executions finished in 300 s")
    succeeded = store.collection().count_documents({"status": "SUCCEEDED"})
    if succeeded != count:
        raise RuntimeError(f"{succeeded} of {count} executions SUCCEEDED")


def child(executions: int, batch: int, steps: int, threads: int) -> dict[str, Any]:
    """Run ``executions`` executions in batches; return the RSS series and the store's size."""
    prepare()
    from bench import handlers
    from bench.contenders import Detflow
    from executions import store

    detflow = Detflow()
    detflow.workflow(steps)
    detflow.start(threads)
    gc.collect()
    series = [{"executions": 0, "rss_mb": round(rss_mb(), 2), "objects": len(gc.get_objects()),
               "threads": threading.active_count()}]
    store_sizes = []
    done, started = 0, time.perf_counter()
    try:
        while done < executions:
            count = min(batch, executions - done)
            _batch(detflow, count, steps)
            done += count
            store_sizes.append({"executions": done, **store_size(detailed=False)})
            store.collection().delete_many({})
            handlers.MARKS.clear()
            gc.collect()
            series.append({"executions": done, "rss_mb": round(rss_mb(), 2),
                           "objects": len(gc.get_objects()), "threads": threading.active_count()})
        # The Python size of the documents, on one more batch measured after the last RSS reading
        # (pympler's own allocations would otherwise show in the worker's RSS).
        _batch(detflow, min(batch, executions), steps)
        probe = store_size(detailed=True)
    finally:
        detflow.stop()
    per_doc = [s["bson_bytes"] / s["documents"] for s in store_sizes if s["documents"]]
    python = [probe["python_bytes"] / probe["documents"]] if "python_bytes" in probe else []
    return {
        "executions": executions, "batch": batch, "steps": steps, "threads": threads,
        "seconds": round(time.perf_counter() - started, 1), "series": series,
        "store": {
            "bson_bytes_per_execution": round(sum(per_doc) / len(per_doc)) if per_doc else None,
            "python_bytes_per_execution": round(sum(python) / len(python)) if python else None,
        },
    }


def run(executions: int, batch: int, steps: int, threads: int) -> dict[str, Any]:
    """Run :func:`child` in a fresh process; return its report with the checkpoints picked out."""
    command = [sys.executable, "-m", "bench.memory", "--child", "--executions", str(executions),
               "--batch", str(batch), "--steps", str(steps), "--threads", str(threads)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=dict(os.environ))
    if done.returncode != 0:
        raise RuntimeError(f"the memory child failed:\n{done.stderr[-3000:]}")
    report = json.loads(done.stdout.strip().splitlines()[-1])
    # Each checkpoint is read at the end of the first batch that reaches it.
    at = {row["executions"]: row["rss_mb"] for row in report["series"]}
    marks = [min(n for n in at if n >= mark) for mark in checkpoints(executions)]
    report["rss_mb_at"] = {str(n): at[n] for n in marks}
    first, last = marks[0], marks[-1]
    report["growth"] = round(at[last] / at[first] - 1, 4) if first < last else None
    bson_each = report["store"]["bson_bytes_per_execution"] or 0
    python_each = report["store"]["python_bytes_per_execution"] or bson_each
    report["store"]["mb_if_kept"] = {str(n): round(n * python_each / 1e6, 1) for n in marks}
    report["method"] = (
        "fresh child process; executions run in batches on the engine's worker; after each batch its "
        "documents are measured (BSON) then deleted, garbage collected, and RSS read from "
        "/proc/self/statm: the RSS is the worker's own; the store's size is reported apart, per "
        "execution (Python objects by pympler.asizeof, on one more batch after the last RSS "
        "reading), and mb_if_kept is what the embedded store would hold had every execution been "
        "kept")
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executions", type=int, default=10000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--steps", type=int, default=1)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.executions, args.batch, args.steps, args.threads)))
        return 0
    print(json.dumps(run(args.executions, args.batch, args.steps, args.threads), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
