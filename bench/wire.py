"""Over the wire: the contenders again, with detflow's store behind ``manage.py runstore``.

The in-process figures (``bench/throughput.py``) charge mongomock's CPU to the worker's process and
pay no round trip. Here the store is the same strict embedded store served over the MongoDB wire
protocol by a ``runstore`` process (``detflow_site/wire.py``), which the bench starts, so detflow
pays a round trip (a pymongo request on a TCP socket to 127.0.0.1) for every MongoDB command, and
the store's CPU is another process's, reported beside. Raw Dramatiq and Celery store nothing:
they run as in the in-process section, on the same Redis, interleaved with detflow.

Two parts, each in a child process of the bench (``python -m bench.wire``) whose
``DETFLOW_MONGODB_URL`` names the server (a process's store is chosen when Django is set up):

- ``in_process``: the four contenders of the throughput section at one thread count, their
  workers in the child process, as there; the MongoDB commands (round trips) of the timed window
  counted by a pymongo command listener (``bench/meters.py``), per step; the server's CPU time
  over the window, per step.
- ``processes``: detflow's real topology, ``manage.py runworker --processes N --threads T
  --no-sweeper`` (the production command; the handlers come by ``DETFLOW_HANDLER_MODULES``), and
  raw Dramatiq run by the ``dramatiq`` command with N processes x T threads
  (``bench/raw_worker.py``), for each N. The child launches the chains (inside the timed window)
  and polls Redis for the end every 20 ms (one worker set per contender and N, for every
  repetition, the store emptied between them): each chain's last step counts it there (raw Dramatiq's
  actor, detflow's ``bench.noop`` handler), then detflow's executions are counted SUCCEEDED in
  the store (once their last steps ran: a count on the test server copies every document). CPU
  beside: the worker processes' (every process of the set), the store server's, Redis's (``INFO
  cpu``), this launcher's; and a store probe (one ``_id`` lookup by the launcher at each poll, its
  median time): on the idle server (raw Dramatiq's runs) against under detflow's load, it shows
  the commands queueing before the server, which runs one at a time; the Redis server's commands
  per step (``INFO commandstats``, every client: the launcher's polls too). The bench's ``scaling``
  section runs this part alone (``--no-in-process``).

On this 2-core machine the worker processes, the store server, Redis and the launcher share two
cores: the figures say where the limit is, not what more cores would give.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.environment import ROOT

if TYPE_CHECKING:
    from bench.contenders import Contender, RawDramatiq

#: The database the child uses on the server (the server starts empty and stops with the bench).
DATABASE = "detflow_bench"
#: How often the process-set runs look for the end, in seconds.
POLL_S = 0.02
#: Longest a worker process set may take to say it is ready, in seconds.
READY_TIMEOUT_S = 90.0
_READY = "Worker process is ready for action"


# --- the parent side: start the server, run the child, stop the server ---------------------------

@dataclass
class Server:
    process: subprocess.Popen[str]
    url: str

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()


def start_server(directory: Path, timeout_s: float = 60.0) -> Server:
    """Start ``manage.py runstore --port 0`` (``detflow_site.processes.start_store``, no fail
    points) and return when it says where it listens."""
    from detflow_site.processes import start_store

    return Server(*start_store(directory, faults=False, timeout_s=timeout_s))


#: The contenders of the in-process part, by name.
CONTENDERS = ("detflow", "detflow-msg", "dramatiq", "celery")


def measure(threads: int, executions: int, steps: int, repetitions: int, processes: Sequence[int],
            process_threads: int, process_executions: int,
            contenders: Sequence[str] = CONTENDERS, in_process_part: bool = True,
            process_repetitions: int | None = None) -> dict[str, Any]:
    """Start a ``runstore``, run both parts in a child process over it, and return their figures
    (without ``in_process_part``, the process sets alone, ``repetitions`` of them unless
    ``process_repetitions`` says otherwise)."""
    with tempfile.TemporaryDirectory(prefix="detflow-bench-wire-") as tmp:
        directory = Path(tmp)
        server = start_server(directory)
        try:
            output = directory / "wire.json"
            env = {k: v for k, v in os.environ.items() if not k.startswith("DETFLOW_")}
            env.update(DETFLOW_MONGODB_URL=server.url, DETFLOW_MONGODB_DB=DATABASE,
                       DJANGO_SETTINGS_MODULE="detflow_site.settings", PYTHONUNBUFFERED="1")
            for name in ("DETFLOW_LOG_LEVEL", "DETFLOW_INSIGHTS_AUTO"):
                if name in os.environ:
                    env[name] = os.environ[name]
            command = [sys.executable, "-m", "bench.wire", "--output", str(output),
                       "--server-pid", str(server.process.pid), "--threads", str(threads),
                       "--executions", str(executions), "--steps", str(steps),
                       "--repetitions", str(repetitions), "--process-threads", str(process_threads),
                       "--process-executions", str(process_executions),
                       "--contenders", ",".join(contenders),
                       "--process-repetitions", str(process_repetitions or repetitions),
                       *([] if in_process_part else ["--no-in-process"]),
                       "--processes", *(str(n) for n in processes)]
            subprocess.run(command, cwd=ROOT, env=env, check=True)
            found: dict[str, Any] = json.loads(output.read_text())
        finally:
            server.stop()
    return {"store": f"runstore over the MongoDB wire protocol ({server.url})", **found}


# --- CPU time of other processes, from /proc ------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float:
    """Return the CPU time process ``pid``'s threads have run so far, in seconds (0 when it is gone).

    Read from each thread's ``schedstat`` (nanoseconds; ``stat`` counts in clock ticks, 10 ms here,
    too coarse for a short run); a thread that ended takes its time with it, and the worker sets'
    and the server's threads live as long as the window. ``stat``'s ticks where there is no
    ``schedstat``."""
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
        total = 0
        for task in tasks:
            with contextlib.suppress(OSError):
                total += int((task / "schedstat").read_text().split()[0])
        if total:
            return total / 1e9
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree(pid: int) -> list[int]:
    """Return ``pid`` and every process below it."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, []))
    return found


# --- the child side --------------------------------------------------------------------------------

@dataclass
class Window:
    """One timed run over the wire: steps/s and what each party spent."""

    contender: str
    steps: int
    seconds: float
    cpu_seconds: float
    server_cpu_seconds: float
    workers_cpu_seconds: float | None = None
    redis_cpu_seconds: float | None = None
    #: Median time of the launcher's store probe (an ``_id`` lookup) over the window, in ms.
    probe_ms: float | None = None
    #: Commands the Redis server ran over the window, every client (``INFO commandstats``).
    redis_commands: dict[str, int] | None = None

    @property
    def steps_per_s(self) -> float:
        return self.steps / self.seconds


def in_process(every: Sequence[Contender], threads: int, executions: int, steps: int,
               repetitions: int, server_pid: int, progress: Callable[[str], None]) -> dict[str, Any]:
    """The throughput comparison at ``threads`` threads, the workers in this process."""
    from bench import meters, stats, throughput

    runs: dict[str, list[Window]] = {c.name: [] for c in every}
    for rep in range(repetitions):
        line = []
        for contender in every:
            edge: dict[str, float] = {}

            def window(opening: bool, edge: dict[str, float] = edge) -> None:
                edge["opening" if opening else "closing"] = cpu_seconds(server_pid)

            run = throughput.timed(contender, threads, executions, steps, window)
            runs[contender.name].append(Window(contender.name, executions * steps, run.seconds,
                                               run.cpu_seconds, edge["closing"] - edge["opening"]))
            line.append(f"{contender.name} {run.steps_per_s:,.0f}")
        progress(f"over the wire rep {rep + 1}/{repetitions}, {threads} threads: "
                 + ", ".join(line) + " steps/s")
    # The round trips, counted in one more run of each detflow contender, apart from the timed
    # ones: pymongo's command listener costs detflow's process CPU (about a third more per step
    # here), which the others would not pay.
    counted: dict[str, tuple[meters.Tally, meters.Tally]] = {}
    with meters.StoreMeter().installed() as meter, meters.RedisMeter().installed() as redis_meter:
        for contender in every:
            if contender.name.startswith("detflow"):
                tallies: list[tuple[meters.Tally, meters.Tally]] = []

                def counting(opening: bool,
                             tallies: list[tuple[meters.Tally, meters.Tally]] = tallies) -> None:
                    tallies.append((meter.tally.take(), redis_meter.tally.take()))

                throughput.timed(contender, threads, executions, steps, counting)
                counted[contender.name] = tallies[-1]
    throughput.reset()
    out: dict[str, Any] = {name: _summary(ws) for name, ws in runs.items()}
    for name, entry in out.items():
        mongo, redis = counted.get(name, (meters.Tally(), meters.Tally()))
        found = throughput.per_step(mongo, redis, executions * steps)
        entry["mongodb_round_trips_per_step"] = found["mongodb_per_step"]
        entry["mongodb_round_trips"] = found["mongodb"]
        entry["mongodb_reads_per_step"] = found["mongodb_reads_per_step"]
        entry["mongodb_writes_per_step"] = found["mongodb_writes_per_step"]
        entry["engine_redis_per_step"] = found["engine_redis_per_step"]
        entry["engine_redis"] = found["engine_redis"]
    ratios = {}
    for ours in (n for n in runs if n.startswith("detflow")):
        for other in (n for n in runs if not n.startswith("detflow")):
            ratios[f"{ours}/{other}"] = stats.rounded(stats.paired_ratio(
                [w.steps_per_s for w in runs[ours]], [w.steps_per_s for w in runs[other]]))
    cpu = throughput.cpu_ratios({name: [w.cpu_seconds / w.steps for w in ws]
                                 for name, ws in runs.items()})
    # With the store server's CPU added to detflow's (raw Dramatiq and Celery have no store).
    with_server = throughput.cpu_ratios(
        {name: [(w.cpu_seconds + (w.server_cpu_seconds if name.startswith("detflow") else 0))
                / w.steps for w in ws] for name, ws in runs.items()})
    return {"threads": threads, "executions": executions, "steps": steps, "repetitions": repetitions,
            "contenders": out, "ratios": ratios, "cpu_ratios": cpu,
            "cpu_ratios_with_server": with_server}


def _summary(windows: list[Window]) -> dict[str, Any]:
    from bench import stats

    entry: dict[str, Any] = {
        "steps_per_s": stats.rounded(stats.median([w.steps_per_s for w in windows]), 1),
        "steps_per_s_runs": [round(w.steps_per_s, 1) for w in windows],
        "cpu_ms_per_step": stats.rounded(stats.median([w.cpu_seconds / w.steps * 1000 for w in windows])),
        "server_cpu_ms_per_step": stats.rounded(stats.median(
            [w.server_cpu_seconds / w.steps * 1000 for w in windows])),
        "server_cpu_share": stats.rounded(stats.median(
            [w.server_cpu_seconds / w.seconds for w in windows])),
    }
    if windows and windows[0].workers_cpu_seconds is not None:
        entry["workers_cpu_ms_per_step"] = stats.rounded(stats.median(
            [(w.workers_cpu_seconds or 0) / w.steps * 1000 for w in windows]))
        entry["workers_cpu_share"] = stats.rounded(stats.median(
            [(w.workers_cpu_seconds or 0) / w.seconds for w in windows]))
        entry["launcher_cpu_share"] = stats.rounded(stats.median(
            [w.cpu_seconds / w.seconds for w in windows]))
    counted = [w for w in windows if w.redis_commands is not None]
    if counted:
        steps = sum(w.steps for w in counted)
        total: dict[str, int] = {}
        for w in counted:
            for name, n in (w.redis_commands or {}).items():
                total[name] = total.get(name, 0) + n
        entry["redis_commands_per_step"] = round(sum(total.values()) / steps, 2)
        entry["redis_commands"] = {k: round(v / steps, 2)
                                   for k, v in sorted(total.items(), key=lambda kv: -kv[1])}
    probes = [w.probe_ms for w in windows if w.probe_ms is not None]
    if probes:
        entry["store_probe_ms"] = stats.rounded(stats.median(probes))
    if windows and windows[0].redis_cpu_seconds is not None:
        entry["redis_cpu_share"] = stats.rounded(stats.median(
            [(w.redis_cpu_seconds or 0) / w.seconds for w in windows]))
        # Every party's CPU over the window, in cores: what this machine's cores had to give.
        entry["total_cpu_share"] = stats.rounded(stats.median(
            [((w.workers_cpu_seconds or 0) + w.server_cpu_seconds + w.cpu_seconds
              + (w.redis_cpu_seconds or 0)) / w.seconds for w in windows]))
    return entry


@contextlib.contextmanager
def worker_set(command: list[str], processes: int, env: dict[str, str], log: Path) -> Iterator[int]:
    """Run a worker process set until the block ends; yield its pid once every process is ready."""
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while log.read_text(errors="replace").count(_READY) < processes:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{' '.join(command[:4])}: {processes} process(es) not ready: "
                                   + log.read_text(errors="replace")[-2000:])
            time.sleep(0.1)
        yield process.pid
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def processes_part(raw: RawDramatiq, counts: Sequence[int], threads: int, executions: int,
                   steps: int, repetitions: int, server_pid: int, progress: Callable[[str], None]
                   ) -> dict[str, Any]:
    """detflow under ``runworker`` and raw Dramatiq under ``dramatiq``, N processes x T threads."""
    from bench import contenders, handlers, meters, stats, throughput
    from detflow_site import services
    from executions import operations, store

    redis_url = services.redis_url()
    env = {**os.environ, "DETFLOW_REDIS_URL": redis_url, "DETFLOW_HANDLER_MODULES": "bench.handlers",
           "PYTHONUNBUFFERED": "1", "dramatiq_worker_timeout": str(contenders.DRAMATIQ_WORKER_TIMEOUT_MS)}
    name = handlers.noop_workflow(steps)
    client = services.redis_client()
    logs = Path(tempfile.mkdtemp(prefix="detflow-bench-workers-"))
    runs: dict[str, dict[int, list[Window]]] = {"detflow": {}, "dramatiq": {}}
    for count in counts:
        line = []
        for contender in ("detflow", "dramatiq"):
            throughput.reset()
            if contender == "detflow":
                command = [sys.executable, "manage.py", "runworker", "--processes", str(count),
                           "--threads", str(threads), "--no-sweeper"]
            else:
                command = [sys.executable, "-m", "dramatiq", "bench.raw_worker", "--processes",
                           str(count), "--threads", str(threads), "--queues", contenders.RAW_QUEUE]
            # One worker set for the repetitions (starting one costs more than a run); the store
            # is emptied between them, the Redis keys are the run's own.
            with worker_set(command, count, env, logs / f"{contender}-{count}.log") as pid:
                pids = tree(pid)
                for rep in range(repetitions):
                    if rep:
                        store.collection().delete_many({})
                    run = secrets.token_hex(6)
                    before = {p: cpu_seconds(p) for p in pids}
                    server, mine = cpu_seconds(server_pid), time.process_time()
                    redis_cpu = meters.redis_cpu_seconds(client)
                    commands_before = meters.server_commands(client)
                    started = time.perf_counter()
                    done: Callable[[], bool]
                    if contender == "detflow":
                        for _ in range(executions):
                            operations.start(name, {"run": run, "count_last": steps - 1})
                        done = functools.partial(_succeeded, store.collection(), client,
                                                 f"bench:last-step:{run}", executions)
                    else:
                        for _ in range(executions):
                            raw.actor.send(run, secrets.token_hex(8), 0, steps, 0.0)
                        done = functools.partial(_counted, client, f"bench:raw-done:{run}", executions)
                    deadline = time.monotonic() + throughput.RUN_TIMEOUT_S
                    probes: list[float] = []
                    while not done():
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{contender} x{count}: not done within "
                                               f"{throughput.RUN_TIMEOUT_S:g}s")
                        probes.append(_probe(store.collection()))
                        time.sleep(POLL_S)
                    seconds = time.perf_counter() - started
                    commands = meters.server_commands(client)
                    commands.subtract(commands_before)
                    window = Window(contender, executions * steps, seconds,
                                    time.process_time() - mine, cpu_seconds(server_pid) - server,
                                    sum(cpu_seconds(p) - before[p] for p in pids),
                                    meters.redis_cpu_seconds(client) - redis_cpu,
                                    stats.median(probes) if probes else None, dict(+commands))
                    runs[contender].setdefault(count, []).append(window)
            line.append(f"{contender} " + "/".join(f"{w.steps_per_s:,.0f}" for w in runs[contender][count]))
        progress(f"over the wire, worker processes, {count} x {threads} threads, {repetitions} "
                 "run(s) each: " + ", ".join(line) + " steps/s")
    throughput.reset()
    by: dict[str, Any] = {}
    for count in counts:
        entry: dict[str, Any] = {c: _summary(runs[c][count]) for c in runs}
        entry["ratios"] = {"detflow/dramatiq": stats.rounded(stats.paired_ratio(
            [w.steps_per_s for w in runs["detflow"][count]],
            [w.steps_per_s for w in runs["dramatiq"][count]]))}
        entry["cpu_ratios"] = {"detflow/dramatiq": stats.rounded(stats.paired_ratio(
            [(w.workers_cpu_seconds or 0) / w.steps for w in runs["detflow"][count]],
            [(w.workers_cpu_seconds or 0) / w.steps for w in runs["dramatiq"][count]]))}
        by[str(count)] = entry
    return {"processes": list(counts), "threads": threads, "executions": executions, "steps": steps,
            "repetitions": repetitions, "cores": os.cpu_count(), "by_processes": by}


def _probe(collection: Any) -> float:
    """Time one store command from this lightly loaded process, in ms: an ``_id`` lookup (served by
    the ``_id`` index) that finds nothing. Under load, what it waits beyond its time on an idle
    server (raw Dramatiq's runs, which store nothing) is the store server's queue."""
    started = time.perf_counter()
    collection.find_one({"_id": "bench-probe"}, {"_id": 1})
    return (time.perf_counter() - started) * 1000


def _succeeded(collection: Any, client: Any, key: str, executions: int) -> bool:
    """Whether every execution SUCCEEDED: asked of the store only once every last step ran (a count
    on the test server copies every document, and every 20 ms it would load the server)."""
    if not _counted(client, key, executions):
        return False
    return bool(collection.count_documents({"status": "SUCCEEDED"}) >= executions)


def _counted(client: Any, key: str, executions: int) -> bool:
    return int(client.get(key) or 0) >= executions


def child(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.wire")
    parser.add_argument("--output", type=Path, required=True)
    parser.add_argument("--server-pid", type=int, required=True)
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--executions", type=int, default=50)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--contenders", default=",".join(CONTENDERS),
                        help="the in-process part's contenders; raw Dramatiq always runs")
    parser.add_argument("--processes", type=int, nargs="*", default=[1, 2, 4])
    parser.add_argument("--process-threads", type=int, default=4)
    parser.add_argument("--process-executions", type=int, default=200)
    parser.add_argument("--process-repetitions", type=int, default=None,
                        help="repetitions of the process sets (default: --repetitions)")
    parser.add_argument("--no-in-process", action="store_true",
                        help="the process sets alone (the bench's scaling section)")
    args = parser.parse_args(argv)
    from bench.environment import prepare

    prepare()
    from detflow_site import services

    if services.is_embedded_store():
        parser.error("DETFLOW_MONGODB_URL must name the runstore server")

    def progress(line: str) -> None:
        print(f"  {line}", flush=True)

    from bench import contenders

    # The raw chain's actor is declared once: the processes part sends its first messages with it.
    raw = contenders.RawDramatiq()
    known: dict[str, Callable[[], Contender]] = {
        "detflow": contenders.Detflow, "detflow-msg": contenders.DetflowPerMessage,
        "dramatiq": lambda: raw, "celery": contenders.CeleryChain}
    chosen = args.contenders.split(",")
    if "dramatiq" not in chosen or set(chosen) - set(known):
        parser.error(f"--contenders: some of {', '.join(known)}, dramatiq among them")
    found: dict[str, Any] = {}
    if not args.no_in_process:
        every = [known[name]() for name in chosen]
        found["in_process"] = in_process(every, args.threads, args.executions, args.steps,
                                         args.repetitions, args.server_pid, progress)
    if args.processes:
        found["processes"] = processes_part(raw, args.processes, args.process_threads,
                                            args.process_executions, args.steps,
                                            args.process_repetitions or args.repetitions,
                                            args.server_pid, progress)
    found["method"] = " ".join((__doc__ or "").split())
    args.output.write_text(json.dumps(found, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(child())
