"""`make bench`: detflow, a raw Dramatiq chain and a Celery 5 chain, measured side by side.

Writes ``bench/results.json`` and ``bench/results.png`` and prints a table with each goal and
whether it holds. Every comparison runs the contenders in this one process, on the same Redis,
interleaved (A B C A B C ...), and reports the median of the repetitions and the ratios.

On the embedded store (mongomock), the timings are this process's CPU cost, mongomock's own
emulation included, not a MongoDB server's; with ``DETFLOW_MONGODB_URL`` (and ``DETFLOW_REDIS_URL``)
set, the same command runs against those servers (it empties the MongoDB database it uses,
``detflow_bench`` unless ``DETFLOW_MONGODB_DB`` says otherwise, and the Redis database: pass
``--allow-flush``).

    .venv/bin/python -m bench.run [--quick]
        [--only throughput,latency,signal,bulk,cost,store,wire,scaling,memory,files]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from bench.environment import ROOT, external_services, prepare

SECTIONS = ("throughput", "latency", "signal", "bulk", "cost", "store", "wire", "scaling", "memory",
            "files")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repetitions", type=int, default=5, help="per comparison (default 5)")
    parser.add_argument("--executions", type=int, default=50, help="chains per throughput run (50)")
    parser.add_argument("--steps", type=int, default=10, help="no-op steps per chain (10)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4, 8],
                        help="worker thread counts for throughput (1 2 4 8)")
    parser.add_argument("--main-threads", type=int, default=4,
                        help="thread count the throughput goals are read at (4)")
    parser.add_argument("--latency-chains", type=int, default=10,
                        help="chains run one at a time per contender and repetition (10)")
    parser.add_argument("--signal-samples", type=int, default=200,
                        help="executions signalled one at a time for signal -> next step claimed (200)")
    parser.add_argument("--slow-threads", type=int, default=16,
                        help="worker threads of the slow-store throughput (16)")
    parser.add_argument("--slow-latency-ms", type=float, nargs="+", default=[1.0],
                        help="latency injected per store command in the slow-store throughput, in "
                             "ms (1); the goal is read at the first, the others are shown beside")
    parser.add_argument("--slow-executions", type=int, default=100,
                        help="chains per slow-store throughput run (100)")
    parser.add_argument("--history-events", type=int, default=10_000,
                        help="events of history of the long execution of the per-step cost (10,000)")
    parser.add_argument("--wire-processes", type=int, nargs="+", default=[1, 2, 4],
                        help="runworker process counts of the process-scaling section (1 2 4)")
    parser.add_argument("--wire-process-threads", type=int, default=4,
                        help="threads per process of the process-scaling section (4)")
    parser.add_argument("--wire-process-executions", type=int, default=200,
                        help="chains per process-scaling run (200)")
    parser.add_argument("--scaling-repetitions", type=int, default=3,
                        help="runs per worker process set in the process-scaling section (3)")
    parser.add_argument("--bulk-executions", type=int, default=10_000,
                        help="FAILED executions one bulk retry dispatches (10,000)")
    parser.add_argument("--memory-executions", type=int, default=10_000)
    parser.add_argument("--memory-batch", type=int, default=100)
    parser.add_argument("--file-sizes", type=float, nargs=2, default=(1, 200), metavar=("SMALL", "LARGE"))
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections to run ({','.join(SECTIONS)})")
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 2 repetitions, small sizes (not for the README)")
    parser.add_argument("--output", type=Path, default=ROOT / "bench" / "results.json",
                        help="where the JSON goes; the plot goes beside it (.png)")
    parser.add_argument("--allow-flush", action="store_true",
                        help="confirm that the configured MongoDB database and Redis may be emptied")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a goal does not hold")
    args = parser.parse_args(argv)
    args.only = tuple(s.strip() for s in args.only.split(",") if s.strip())
    unknown = set(args.only) - set(SECTIONS)
    if unknown:
        parser.error(f"--only: unknown section(s) {', '.join(sorted(unknown))}; known: {', '.join(SECTIONS)}")
    if args.main_threads not in args.threads:
        parser.error(f"--main-threads {args.main_threads} must be one of --threads {args.threads}")
    if args.quick:
        args.repetitions, args.executions, args.latency_chains = 2, 20, 3
        args.signal_samples = 40
        args.slow_executions = 50
        args.wire_processes, args.wire_process_executions = [1, 2], 20
        args.scaling_repetitions = 1
        args.memory_executions, args.file_sizes = 1000, (1, 20)
        args.bulk_executions = 500
    if args.repetitions < 1 or args.executions < 1 or args.steps < 2:
        parser.error("--repetitions and --executions must be at least 1, --steps at least 2")
    return args


def progress(line: str) -> None:
    print(f"  {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    external = external_services()
    if external and not args.allow_flush:
        print(f"bench: it empties {' and '.join(external)} between runs; pass --allow-flush to "
              "confirm (use a database of its own, e.g. redis://host:6379/15)", file=sys.stderr)
        return 2
    prepare()
    from bench import (
        bulk_rate,
        contenders,
        cost,
        file_memory,
        history,
        latency,
        memory,
        meters,
        report,
        signal_latency,
        slow_store,
        throughput,
        wire,
    )
    from detflow_site import services

    started = time.monotonic()
    results: dict[str, Any] = {
        "machine": report.machine(), "store": services.store_description(),
        "redis": services.redis_description(), "versions": report.versions(),
        "repetitions": args.repetitions, "quick": args.quick,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    where = {"store": results["store"], "redis": results["redis"]}
    print(f"detflow bench: {results['machine']['cores']} cores, {results['machine']['cpu']}", flush=True)
    print(f"  store: {results['store']}\n  redis: {results['redis']}", flush=True)
    # Built only for the sections that run them side by side (Celery is a bench extra: the
    # scaling, cost, signal and bulk sections run without it).
    every: list[contenders.Contender] = []
    if {"throughput", "latency", "store"} & set(args.only):
        every = [contenders.Detflow(), contenders.DetflowPerMessage(), contenders.RawDramatiq(),
                 contenders.CeleryChain()]

    if "throughput" in args.only:
        results["throughput"] = {**where, "main_threads": args.main_threads, **throughput.scaling(
            every, args.threads, args.executions, args.steps, args.repetitions, progress,
            counted_threads=args.main_threads)}
    if "latency" in args.only:
        results["latency"] = {**where, **latency.measure(
            every, args.main_threads, args.latency_chains, args.steps, args.repetitions, progress)}
    if "signal" in args.only:
        results["signal"] = {**where, **signal_latency.measure(args.signal_samples, args.main_threads,
                                                               progress)}
    if "bulk" in args.only:
        results["bulk"] = {**where, **bulk_rate.measure(args.bulk_executions, args.main_threads, progress)}
    if "cost" in args.only:
        configs = [
            cost.Config("1 step", 1), cost.Config("10 steps", 10), cost.Config("100 steps", 100),
            cost.Config("10 steps, a message each", 10, inline=1),
            cost.Config("10 steps, 0 retries", 10, flaky=1, fail=0, executions=3),
            cost.Config("10 steps, 25 retries", 10, flaky=1, fail=25, executions=3),
            cost.Config("10 steps, 99 retries", 10, flaky=1, fail=99, executions=3),
        ]
        configs_out = cost.measure(configs, args.repetitions, progress)
        results["cost"] = {
            **where, "repetitions": args.repetitions, "configs": configs_out,
            "growth": {
                "100 steps / 10 steps": report.growth_ratios(configs_out, "100 steps", "10 steps"),
                "99 retries / 0 retries": report.growth_ratios(
                    configs_out, "10 steps, 99 retries", "10 steps, 0 retries"),
            },
            "method": " ".join(f"{cost.__doc__} {meters.__doc__}".split()),
        }
    if "store" in args.only:
        slow = [slow_store.measure(every[:2], args.slow_threads, args.slow_executions, args.steps,
                                   args.repetitions, ms / 1000, progress) for ms in args.slow_latency_ms]
        results["slow_store"] = {**where, **slow[0],
                                 "other_latencies": {f"{s['latency_ms']:g}": s for s in slow[1:]}}
        results["history"] = {**where, **history.measure(args.repetitions, args.history_events,
                                                         progress)}
    if "wire" in args.only:
        progress("over the wire: a runstore server, the bench's contenders in a child process over it")
        results["wire"] = wire.measure(args.main_threads, args.executions, args.steps,
                                       args.repetitions, [], args.wire_process_threads,
                                       args.wire_process_executions)
    if "scaling" in args.only:
        progress(f"process scaling: a runstore server, {'/'.join(map(str, args.wire_processes))} "
                 f"runworker processes x {args.wire_process_threads} threads (and raw Dramatiq's "
                 "dramatiq command beside)")
        scaled = wire.measure(args.main_threads, args.executions, args.steps, args.repetitions,
                              args.wire_processes, args.wire_process_threads,
                              args.wire_process_executions, in_process_part=False,
                              process_repetitions=args.scaling_repetitions)
        results["scaling"] = {"store": scaled["store"], **scaled["processes"],
                              "limit": report.scaling_limit(scaled["processes"])}
    if "memory" in args.only:
        progress(f"memory: {args.memory_executions:,} executions in a fresh worker process")
        results["memory"] = {**where, **memory.run(args.memory_executions, args.memory_batch, 1,
                                                  args.main_threads)}
    if "files" in args.only:
        progress(f"file workflow: {args.file_sizes[0]:g} MB and {args.file_sizes[1]:g} MB files, "
                 "one fresh process each")
        files = file_memory.measure(tuple(args.file_sizes))
        if files is None:
            print("bench: the file workflow run failed (see above)", file=sys.stderr)
            return 1
        results["file_memory"] = {"store": "embedded mongomock (bench/file_memory.py runs each file "
                                           "in a child on the embedded store and Redis)", **files}

    results["duration_s"] = round(time.monotonic() - started, 1)
    results["goals"] = rows = report.evaluate(results)
    results["table"] = report.table(rows)
    output: Path = args.output
    report.write_json(results, output)
    try:
        report.plot(results, output.with_suffix(".png"))
    except ModuleNotFoundError as exc:  # matplotlib is a bench extra (make bench installs it)
        print(f"no chart drawn: {exc.name} is not installed (make bench installs it)", flush=True)
    print()
    print(report.details(results))
    print()
    print(results["table"])
    print(f"\n{sum(r['holds'] is True for r in rows)} of {len(rows)} goals hold; "
          f"{results['duration_s']:.0f} s; wrote {_relative(output)} and "
          f"{_relative(output.with_suffix('.png'))}")
    return 1 if args.strict and any(r["holds"] is False for r in rows) else 0


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


if __name__ == "__main__":
    sys.exit(main())
