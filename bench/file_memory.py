"""Peak memory of the file-processing workflow: a 1 MB file against a 200 MB one.

Each file runs through the whole workflow (the real engine, worker threads, the embedded store and
Redis) in a fresh child process, which reports its peak resident set size (``ru_maxrss``). The
handlers stream, so the peak should hardly move with the file's size; the script fails (exit 1)
when the large file's peak exceeds the small one's by ``--bound`` MB or more (default 64).

    .venv/bin/python bench/file_memory.py [--sizes 1 200] [--kind csv|text|json] [--save]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MB = 1000 * 1000


def peak_rss_mb() -> float:
    """This process's peak RSS in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / MB if sys.platform == "darwin" else peak * 1024 / MB


def write_file(path: Path, size: int, kind: str) -> None:
    """Write ``size`` bytes of CSV, plain text or a JSON array, about 1 MB at a time."""
    with open(path, "w", encoding="ascii", newline="\n") as out:
        written, n = 0, 0
        if kind == "csv":
            written += out.write("id,when,customer,amount,status\n")
        elif kind == "json":
            written += out.write("[\n")
        while written < size - 64:
            block = []
            for _ in range(10_000):
                if kind == "csv":
                    block.append(f"{n},2025-{1 + n % 12:02d}-{1 + n % 28:02d},customer-{n % 977},"
                                 f"{(n * 7919) % 100000 / 100:.2f},{('paid', 'shipped')[n % 2]}\n")
                elif kind == "json":
                    block.append(f'{{"id": {n}, "name": "item-{n % 977}", "ok": true}},\n')
                else:
                    block.append(f"line {n}: the quick brown fox jumps over the lazy dog {n % 977}\n")
                n += 1
            text = "".join(block)[: max(size - 64 - written, 0)]
            whole = text.rfind("\n") + 1  # whole lines only
            if whole == 0:
                break
            written += out.write(text[:whole])
        if kind == "json":
            out.write(f'{{"id": {n}}}\n]\n')


def child(path: Path, storage: Path) -> dict[str, object]:
    """Run one file through the workflow in this process; return its outcome and peak RSS."""
    os.environ["DJANGO_SETTINGS_MODULE"] = "detflow_site.settings"
    os.environ["DETFLOW_STORAGE_DIR"] = str(storage)
    os.environ.setdefault("DETFLOW_LOG_LEVEL", "WARNING")
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from executions import operations, store
    from executions.workers import WorkerPool
    from workflows.builtin import FILE_PROCESSING, ensure_file_processing

    ensure_file_processing()
    before = peak_rss_mb()
    pool = WorkerPool(threads=2).start()
    started = time.monotonic()
    try:
        doc, _ = operations.start(FILE_PROCESSING, {"path": f"uploads/{path.name}", "name": path.name})
        while True:
            current = store.load(doc["_id"])
            assert current is not None
            if current["status"] in ("SUCCEEDED", "FAILED") and not current.get("due_at"):
                break
            if time.monotonic() - started > 900:
                raise SystemExit("the workflow did not finish within 15 minutes")
            time.sleep(0.05)
    finally:
        pool.stop()
    return {"status": current["status"], "seconds": round(time.monotonic() - started, 2),
            "peak_rss_mb": round(peak_rss_mb(), 1), "rss_before_run_mb": round(before, 1),
            "failed_step": current.get("failed_step"),
            "step_seconds": {s["name"]: round(s["attempts"][-1]["duration_ms"] / 1000, 2)
                             for s in current["steps"] if s.get("attempts")}}


def measure(sizes: tuple[float, float], kind: str = "csv", bound: float = 64) -> dict[str, Any] | None:
    """Run the workflow on a file of each size in a fresh child process; ``None`` if a child failed."""
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="detflow-bench-") as tmp:
        for size_mb in sizes:
            storage = Path(tmp) / f"storage-{size_mb:g}"
            # Handed in as POST files/ does: under the storage directory's uploads/.
            path = storage / "uploads" / f"{size_mb:g}MB.{kind}"
            path.parent.mkdir(parents=True)
            write_file(path, int(size_mb * MB), kind)
            # The embedded store and Redis: each child starts its own.
            env = {k: v for k, v in os.environ.items()
                   if k not in ("DETFLOW_MONGODB_URL", "DETFLOW_REDIS_URL")}
            run = subprocess.run([sys.executable, __file__, "--child", str(path), str(storage)],
                                 capture_output=True, text=True, env=env, cwd=ROOT)
            if run.returncode != 0:
                print(run.stderr, file=sys.stderr)
                return None
            outcome = json.loads(run.stdout.strip().splitlines()[-1])
            results.append({"file_mb": round(path.stat().st_size / MB, 1), "kind": kind, **outcome})

    small, large = results
    growth = large["peak_rss_mb"] - small["peak_rss_mb"]
    ok = growth < bound and all(r["status"] == "SUCCEEDED" for r in results)
    return {"results": results, "growth_mb": round(growth, 1), "bound_mb": bound, "ok": ok}


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs=2, type=float, default=(1, 200), metavar=("SMALL", "LARGE"),
                        help="file sizes in MB (default 1 200)")
    parser.add_argument("--kind", choices=("csv", "text", "json"), default="csv")
    parser.add_argument("--bound", type=float, default=64, help="largest allowed growth in MB (default 64)")
    parser.add_argument("--save", action="store_true", help="also write bench/results.file_memory.json")
    parser.add_argument("--child", nargs=2, metavar=("FILE", "STORAGE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))
        return 0

    report = measure(tuple(args.sizes), args.kind, args.bound)
    if report is None:
        return 1
    results: list[dict[str, Any]] = report["results"]
    print(f"{'file':>10}  {'status':<9}  {'time':>7}  {'peak RSS':>9}  {'RSS before the run':>18}")
    for r in results:
        print(f"{r['file_mb']:>7.1f} MB  {r['status']:<9}  {r['seconds']:>6.1f}s  "
              f"{r['peak_rss_mb']:>6.1f} MB  "
              f"{r['rss_before_run_mb']:>15.1f} MB")
    for r in results:
        steps = ", ".join(f"{name.split('.')[-1]} {sec:g}s" for name, sec in r["step_seconds"].items())
        print(f"  {r['file_mb']:g} MB steps: {steps}")
    small, large = results
    growth, ok = report["growth_mb"], report["ok"]
    ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
    times = large["file_mb"] / small["file_mb"]
    print(f"peak RSS grows by {growth:+.1f} MB (x{ratio:.2f}) for a file {times:.0f} "
          f"times larger; the bound is {args.bound:g} MB: {'OK' if ok else 'FAILED'}")
    if args.save:
        target = ROOT / "bench" / "results.file_memory.json"
        target.write_text(json.dumps(report, indent=2))
        print(f"saved {target.relative_to(ROOT)}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
