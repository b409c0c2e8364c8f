"""The goals, the table that marks each, the machine it ran on, and the plot."""
from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import stats
from bench.environment import ROOT


@dataclass(frozen=True)
class Goal:
    """One line of the issue's table: what is measured, its bound, and how to read it."""

    key: str
    text: str
    bound: str
    holds: Callable[[float], bool]
    unit: str = ""


GOALS = (
    Goal("dramatiq_ratio", "detflow / raw Dramatiq steps per second", ">= 0.7", lambda v: v >= 0.7),
    Goal("celery_ratio", "detflow / Celery chain steps per second", ">= 1.5", lambda v: v >= 1.5),
    Goal("cpu_msg_ratio", "CPU per step (the process's own CPU time over the run): detflow with a "
         "message per step / raw Dramatiq chain", "<= 2.0", lambda v: v <= 2.0),
    Goal("cpu_default_ratio", "CPU per step: detflow by default (steps back to back) / raw "
         "Dramatiq chain", "<= 1.2", lambda v: v <= 1.2),
    Goal("signal_to_claim", "signal -> next step claimed at low load, p50 (operations.signal to the "
         "step_claimed event)", "<= 50 ms", lambda v: v <= 50, " ms"),
    Goal("bulk_retry_rate", "bulk retry of 10,000 FAILED executions: executions retried (and their "
         "messages sent) per second", ">= 500", lambda v: v >= 500, "/s"),
    Goal("mongo_per_attempt", "MongoDB commands per step attempt (happy path)", "<= 3", lambda v: v <= 3),
    Goal("redis_per_attempt", "Redis commands per step attempt, broker excluded", "<= 6", lambda v: v <= 6),
    Goal("mongo_reads_per_message_step", "MongoDB reads per message-step (a message per step; the "
         "mean, a cached read's share counted, to 2 places)", "<= 1", lambda v: v <= 1),
    Goal("mongo_writes_per_message_step", "MongoDB writes per message-step (the most of any step)",
         "<= 2", lambda v: v <= 2),
    Goal("mongo_read_after_write", "MongoDB reads after a write to the same collection in the same "
         "message (every message of the cost section)", "0", lambda v: v == 0),
    Goal("redis_per_message_step", "engine Redis commands per message-step, uncontended (lock set "
         "+ release; a poke or a slot only when contended)", "<= 2", lambda v: v <= 2),
    Goal("steps_100_vs_10", "per-step cost, 100-step vs 10-step workflow", "<= 1.5", lambda v: v <= 1.5),
    Goal("slow_store", "steps/s at 16 threads, 1 ms per store command, of the lower of threads / "
         "(commands per step x 1 ms) and the steps/s without the latency in the same run", ">= 0.8",
         lambda v: v >= 0.8),
    Goal("wire_dramatiq_ratio", "over the wire (store behind runstore): detflow / raw Dramatiq "
         "steps per second", ">= 0.5", lambda v: v >= 0.5),
    Goal("wire_cpu_msg_ratio", "over the wire: CPU per step of the workers' process, detflow with "
         "a message per step / raw Dramatiq (the store server's beside)", "<= 2.0",
         lambda v: v <= 2.0),
    Goal("wire_cpu_default_ratio", "over the wire: CPU per step of the workers' process, detflow "
         "by default / raw Dramatiq", "<= 1.2", lambda v: v <= 1.2),
    Goal("long_history", "per-step cost, 10,000 events of history vs none", "<= 1.2", lambda v: v <= 1.2),
    Goal("rss_growth", "worker RSS from 1,000 to 10,000 executions, store excluded",
         "flat (< 10% growth)", lambda v: v < 0.10, "%"),
    Goal("file_peak", "peak RSS, 200 MB file vs 1 MB file", "< +64 MB", lambda v: v < 64, " MB"),
)


def machine() -> dict[str, Any]:
    """Describe the machine and the code the bench ran on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                      if line.startswith("MemTotal"))
        memory = f"{mem_kb / 1024 / 1024:.1f} GiB"
    except (OSError, StopIteration):
        memory = "unknown"

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, cwd=ROOT,
                                  check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return {
        "cpu": cpu or platform.processor() or "unknown", "cores": os.cpu_count(), "memory": memory,
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": git("rev-parse", "--short", "HEAD"),
        "uncommitted_changes": bool(git("status", "--porcelain", "--untracked-files=no")),
    }


def versions() -> dict[str, str]:
    from importlib import metadata

    from detflow_site import services

    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:  # celery is a bench extra: a section may run without it
            return "not installed"

    found = {name: version(name) for name in
             ("dramatiq", "celery", "kombu", "redis", "pymongo", "mongomock", "mongoengine")}
    found["redis-server"] = services.redis_client().info("server").get("redis_version", "?")
    return found


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per goal: the measured value (``None`` when not measured) and whether it holds."""
    measured: dict[str, tuple[float | None, str]] = {}
    tp = results.get("throughput")
    if tp:
        main = tp["by_threads"][str(tp["main_threads"])]
        for key, other in (("dramatiq_ratio", "dramatiq"), ("celery_ratio", "celery")):
            if other not in main:
                continue
            note = (f"{main['detflow']['steps_per_s']:,.0f} vs "
                    f"{main[other]['steps_per_s']:,.0f} steps/s")
            per_message = main["ratios"].get(f"detflow-msg/{other}")
            if per_message is not None:
                note += f"; a message per step: {per_message:.2f}"
            measured[key] = (main["ratios"].get(f"detflow/{other}"), note)
        cpu = main.get("cpu_ratios", {})
        for key, ours in (("cpu_msg_ratio", "detflow-msg"), ("cpu_default_ratio", "detflow")):
            if ours in main and "dramatiq" in main:
                note = (f"{tp['main_threads']} threads: {main[ours]['cpu_ms_per_step']:.3f} vs "
                        f"{main['dramatiq']['cpu_ms_per_step']:.3f} ms/step "
                        f"({main[ours]['steps_per_s']:,.0f} vs "
                        f"{main['dramatiq']['steps_per_s']:,.0f} steps/s)")
                if f"{ours}/celery" in cpu:
                    note += f"; vs Celery {cpu[f'{ours}/celery']:.2f}"
                note += "; at " + ", ".join(
                    f"{n} threads {e['cpu_ratios'][f'{ours}/dramatiq']:.2f}"
                    for n, e in tp["by_threads"].items() if n != str(tp["main_threads"])
                    and e.get("cpu_ratios", {}).get(f"{ours}/dramatiq") is not None)
                measured[key] = (cpu.get(f"{ours}/dramatiq"), note)
    sig = results.get("signal")
    if sig:
        measured["signal_to_claim"] = (sig["p50_ms"], f"p95 {sig['p95_ms']} ms, max {sig['max_ms']} ms "
                                                      f"over {sig['samples']} signals, one at a time")
    bulk = results.get("bulk")
    if bulk:
        measured["bulk_retry_rate"] = (bulk["per_s"], f"{bulk['acted']:,} of {bulk['executions']:,} in "
                                                      f"{bulk['seconds']} s; dry run count exact: "
                                                      f"{bulk['count_exact']}")
    cost = results.get("cost")
    if cost:
        # The costliest way to run (a message per step) against the bound; the default's mean beside.
        worst = cost["configs"].get("10 steps, a message each", cost["configs"]["10 steps"])
        happy = cost["configs"]["10 steps"]
        measured["mongo_per_attempt"] = (
            worst["mongodb_commands_max_per_attempt"],
            f"max per attempt, a message per step (the pause view's refresh, a read a second, "
            f"apart); back to back (default) mean {happy['mongodb_commands_per_attempt']:g}")
        measured["redis_per_attempt"] = (
            worst["redis_commands_max_per_attempt"],
            f"max per attempt, a message per step; back to back (default) mean "
            f"{happy['redis_commands_per_attempt']:g}")
        msg = cost["configs"].get("10 steps, a message each")
        if msg and "mongodb_reads_max_per_attempt" in msg:
            measured["mongo_reads_per_message_step"] = (
                round(msg["mongodb_reads_per_attempt"], 2),
                f"most of any step {msg['mongodb_reads_max_per_attempt']:g}; reads by collection: "
                f"{_counts(msg.get('mongodb_reads_by_collection', {}))}; by command: "
                f"{_counts(msg['mongodb_commands'])}")
            measured["mongo_writes_per_message_step"] = (
                msg["mongodb_writes_max_per_attempt"], f"mean {msg['mongodb_writes_per_attempt']:g}")
            after = sum(c.get("mongodb_reads_after_write", 0) for c in cost["configs"].values())
            measured["mongo_read_after_write"] = (
                after, f"a message per step: {msg['mongodb_reads_after_write']}, over "
                       f"{msg['attempts_measured']} step attempts; every configuration: {after}")
            measured["redis_per_message_step"] = (
                msg["redis_commands_max_per_attempt"], f"mean by kind: {_counts(msg['redis_kinds'])}")
        growth = cost["growth"]["100 steps / 10 steps"]
        measured["steps_100_vs_10"] = (
            growth["wall"], f"time per attempt; store excluded x{growth['outside_store']:.2f}")
    slow = results.get("slow_store")
    if slow:
        ours, msg = slow["contenders"]["detflow"], slow["contenders"].get("detflow-msg")

        def against(c: dict[str, Any]) -> str:
            return (f"{c['steps_per_s']:,.0f} vs {c['bound_steps_per_s']:,.0f} steps/s "
                    f"({c['delayed_commands_per_step']:.2f} cmd/step)")

        note = (f"{slow['threads']} threads, {slow['latency_ms']:g} ms: {against(ours)}, "
                f"{ours['of_bound']:.2f} of the latency bound; without the latency "
                f"{ours['no_latency_steps_per_s']:,.0f} steps/s (one process's CPU, "
                f"{ours['no_latency_cpu_ms_per_step']:.2f} ms/step)")
        if msg:
            note += (f"; a message per step: {msg['of_lower_of_bound_and_ceiling']:.2f}, "
                     f"{against(msg)}, without the latency {msg['no_latency_steps_per_s']:,.0f}")
        measured["slow_store"] = (ours["of_lower_of_bound_and_ceiling"], note)
    wire = results.get("wire")
    if wire:
        part = wire["in_process"]
        c = part["contenders"]
        note = (f"{part['threads']} threads: {c['detflow']['steps_per_s']:,.0f} vs "
                f"{c['dramatiq']['steps_per_s']:,.0f} steps/s, "
                f"{c['detflow']['mongodb_round_trips_per_step']:.2f} round trips/step, store server "
                f"{c['detflow']['server_cpu_ms_per_step']:.2f} ms CPU/step")
        if "detflow-msg" in c:
            note += (f"; a message per step: {part['ratios']['detflow-msg/dramatiq']:.2f} "
                     f"({c['detflow-msg']['mongodb_round_trips_per_step']:.2f} round trips/step)")
        procs = wire.get("processes") or results.get("scaling")
        if procs:
            note += "; runworker processes x " + str(procs["threads"]) + " threads: " + ", ".join(
                f"{n}: {e['ratios']['detflow/dramatiq']:.2f}" for n, e in procs["by_processes"].items())
        measured["wire_dramatiq_ratio"] = (part["ratios"]["detflow/dramatiq"], note)
        cpu, with_server = part.get("cpu_ratios", {}), part.get("cpu_ratios_with_server", {})
        for key, ours in (("wire_cpu_msg_ratio", "detflow-msg"), ("wire_cpu_default_ratio", "detflow")):
            if ours in c and f"{ours}/dramatiq" in cpu:
                measured[key] = (cpu[f"{ours}/dramatiq"], (
                    f"{part['threads']} threads: {c[ours]['cpu_ms_per_step']:.3f} vs "
                    f"{c['dramatiq']['cpu_ms_per_step']:.3f} ms/step; with the store server's "
                    f"{c[ours]['server_cpu_ms_per_step']:.3f} ms/step: "
                    f"{with_server[f'{ours}/dramatiq']:.2f}"))
    hist = results.get("history")
    if hist:
        growth = hist["growth"]["long / fresh"]
        per_msg = hist["growth"].get("long / fresh, a message each")
        long_cfg = next(c for label, c in hist["configs"].items() if label.endswith(" events"))
        note = (f"time per attempt, {long_cfg['events_before']:,} events vs none; CPU "
                f"x{growth['cpu']:.2f}; store excluded x{growth['outside_store']:.2f}")
        if per_msg:
            note += f"; a message per step: x{per_msg['wall']:.2f}"
        note += f"; document {long_cfg['document_bytes_before']:,} B"
        measured["long_history"] = (growth["wall"], note)
    memory = results.get("memory")
    if memory and memory.get("growth") is not None:
        (first, rss_first), *_, (last, rss_last) = memory["rss_mb_at"].items()
        measured["rss_growth"] = (memory["growth"], f"{rss_first} MB after {int(first):,} -> "
                                                    f"{rss_last} MB after {int(last):,}")
    files = results.get("file_memory")
    if files:
        small, large = files["results"]
        measured["file_peak"] = (files["growth_mb"], f"{small['peak_rss_mb']} -> {large['peak_rss_mb']} MB")
    rows = []
    for goal in GOALS:
        value, note = measured.get(goal.key, (None, "not measured"))
        holds = None if value is None or (isinstance(value, float) and math.isnan(value)) \
            else goal.holds(value)
        rows.append({"goal": goal.text, "bound": goal.bound, "measured": value, "note": note,
                     "holds": holds, "unit": goal.unit})
    return rows


def _net(entry: dict[str, Any], idle: float | None) -> float:
    """CPU per step less the idle CPU of the run's duration, in ms."""
    rate = entry["steps_per_s"] or 0
    return entry["cpu_ms_per_step"] - ((idle or 0) * 1000 / rate if rate else 0)


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in counts.items()) or "none"


def scaling_limit(procs: dict[str, Any]) -> str:
    """Say, from the process-scaling numbers, what limits detflow's steps/s on this machine: the
    test store server (a Python process: about one core at most; its commands one at a time, so a
    queue before it when its CPU is not the limit), the machine's cores, or detflow."""
    by = procs["by_processes"]
    counts = sorted(int(n) for n in by)
    low, high = by[str(counts[0])], by[str(counts[-1])]
    ours = high["detflow"]
    loaded, idle = ours.get("store_probe_ms"), high["dramatiq"].get("store_probe_ms")
    queued = bool(loaded and idle and loaded >= 3 * idle)
    cores = procs.get("cores") or os.cpu_count() or 1

    def gain(name: str) -> float:
        first = low[name]["steps_per_s"] or 0
        return high[name]["steps_per_s"] / first if first else math.nan

    server, total = ours["server_cpu_share"] or 0, ours.get("total_cpu_share") or 0
    grew = (f"detflow's steps/s goes x{gain('detflow'):.2f} from {counts[0]} to {counts[-1]} "
            f"process(es) (raw Dramatiq's, which stores nothing, x{gain('dramatiq'):.2f})")
    busy = (f"at {counts[-1]} process(es) the test store server is busy {server:.2f} of a core and "
            f"every party together (workers {ours['workers_cpu_share']:.2f}, store server, Redis "
            f"{ours.get('redis_cpu_share') or 0:.2f}, launcher {ours.get('launcher_cpu_share') or 0:.2f})"
            f" {total:.2f} of this machine's {cores} cores")
    if loaded and idle:
        busy += (f", and a store command from the launcher takes {loaded:.2f} ms against {idle:.2f} "
                 "ms on the idle server")
    if server >= 0.8 and total >= 0.85 * cores:
        limit = (f"Both the test store server (one Python process: one core at most) and this "
                 f"machine's {cores} cores are at their limit")
    elif server >= 0.8:
        limit = "The test store server is the limit (one Python process: one core at most)"
    elif total >= 0.85 * cores:
        limit = f"This machine's {cores} cores are the limit"
    elif queued:
        limit = ("The test store server is the limit, though not its CPU: it runs one command at a "
                 "time (one lock in one Python process), and the commands queue before it")
    else:
        limit = "Neither the test store server nor the cores are saturated: detflow itself is the limit"
        threads = counts[-1] * int(procs.get("threads") or 1)
        if ours["steps_per_s"] and "workers_cpu_ms_per_step" in ours:
            held = threads * 1000 / ours["steps_per_s"]
            cpu = ours["workers_cpu_ms_per_step"] + (ours.get("server_cpu_ms_per_step") or 0)
            grew += (f"; each of the {threads} worker threads spends {held:.1f} ms per step, of which "
                     f"{cpu:.2f} ms of CPU (workers {ours['workers_cpu_ms_per_step']:.2f}, store "
                     f"server {ours.get('server_cpu_ms_per_step') or 0:.2f}): the rest it waits")
    return f"{limit}: {busy}; {grew}."


def shown(row: dict[str, Any]) -> str:
    value = row["measured"]
    if value is None:
        return "-"
    if row["unit"] == "%":
        return f"{value * 100:+.1f}%"
    if row["unit"] == " MB":
        return f"{value:+.1f} MB"
    if row["unit"] == " ms":
        return f"{value:.1f} ms"
    return f"{value:g}" if isinstance(value, int) else f"{value:.2f}"


def table(rows: list[dict[str, Any]]) -> str:
    """Return the goals table as Markdown (what the README's Performance section shows)."""
    lines = ["| goal | bound | measured | holds | |", "|---|---|---|---|---|"]
    for row in rows:
        mark = {True: "yes", False: "**no**", None: "-"}[row["holds"]]
        lines.append(f"| {row['goal']} | {row['bound']} | {shown(row)} | {mark} | {row['note']} |")
    return "\n".join(lines)


def details(results: dict[str, Any]) -> str:
    """Return the measured numbers behind the goals, as plain text."""
    out = []
    tp = results.get("throughput")
    if tp:
        out.append(f"throughput, steps/s ({tp['executions']} chains x {tp['steps']} no-op steps, "
                   f"median of {tp['repetitions']}):")
        names = [n for n in ("detflow", "detflow-msg", "dramatiq", "celery")
                 if n in next(iter(tp["by_threads"].values()))]
        pairs = [r for r in ("detflow/dramatiq", "detflow/celery", "detflow-msg/dramatiq",
                             "detflow-msg/celery") if r in next(iter(tp["by_threads"].values()))["ratios"]]
        out.append(f"  {'threads':>7}  " + "  ".join(f"{n:>11}" for n in names) + "  "
                   + "  ".join(f"{r:>20}" for r in pairs) + f"  {'CPU ms/step':>24}")
        for count, entry in tp["by_threads"].items():
            cpu = "/".join(f"{entry[n]['cpu_ms_per_step']:.2f}" for n in names)
            rates = "  ".join(f"{entry[n]['steps_per_s']:>11,.0f}" for n in names)
            ratios = "  ".join(f"{entry['ratios'][r]:>20.2f}" for r in pairs)
            out.append(f"  {count:>7}  {rates}  {ratios}  {cpu:>24}")
        out.append("  (CPU ms/step in the order of the columns)")
        main = tp["by_threads"][str(tp["main_threads"])]
        out.append(f"  Redis server commands per step at {tp['main_threads']} threads, every client and "
                   "the commands inside scripts: "
                   + ", ".join(f"{n} {main[n]['redis_commands_per_step']:.1f}" for n in names))
        cpu_pairs = [r for r in ("detflow/dramatiq", "detflow-msg/dramatiq", "detflow/celery",
                                 "detflow-msg/celery") if r in main.get("cpu_ratios", {})]
        if cpu_pairs:
            out.append("CPU per step, ms (this process's own CPU time over the run / steps run; "
                       "Redis's not included), beside steps/s; detflow's over the others' (lower is "
                       "better):")
            out.append(f"  {'threads':>7}  " + "  ".join(f"{n:>19}" for n in names) + "  "
                       + "  ".join(f"{r:>20}" for r in cpu_pairs))
            for count, entry in tp["by_threads"].items():
                cells = "  ".join(f"{entry[n]['cpu_ms_per_step']:>6.3f} ({entry[n]['steps_per_s']:>6,.0f}/s)"
                                  for n in names)
                out.append(f"  {count:>7}  {cells}  "
                           + "  ".join(f"{entry['cpu_ratios'][r]:>20.2f}" for r in cpu_pairs))
        counted = tp.get("commands")
        if counted and all("idle_cpu_share" in c for c in counted["contenders"].values()):
            idle = {n: c["idle_cpu_share"] for n, c in counted["contenders"].items()}
            out.append("  idle CPU of this process with each contender's workers started and nothing "
                       "to do, cores: " + ", ".join(f"{n} {v:.3f}" for n, v in idle.items())
                       + "; CPU per step net of it, ms: " + "; ".join(
                           f"{count} threads " + ", ".join(
                               f"{n} {_net(entry[n], idle.get(n)):.3f}" for n in names if n in idle)
                           for count, entry in tp["by_threads"].items()))
        if counted:
            out.append(f"commands per step by kind ({counted['threads']} threads, one counted run "
                       "each; MongoDB: reads + writes; Redis outside the broker, by kind):")
            for name, c in counted["contenders"].items():
                out.append(f"  {name:<12} MongoDB {c['mongodb_reads_per_step']:g} reads + "
                           f"{c['mongodb_writes_per_step']:g} writes ({_counts(c['mongodb'])}); "
                           f"engine Redis {c['engine_redis_per_step']:g} ({_counts(c['engine_redis'])})"
                           + (f"; every Redis command, broker's included: "
                              f"{main[name]['redis_commands_per_step']:.1f}" if name in main else ""))
    lat = results.get("latency")
    if lat:
        out.append(f"latency at low load, ms (one chain at a time, {lat['threads']} threads, "
                   f"{lat['steps']}-step chains):")
        rows = dict(lat["contenders"])
        if "detflow_outcome_to_claim" in lat:
            rows["detflow outcome->claim"] = lat["detflow_outcome_to_claim"]
        for name, r in rows.items():
            out.append(f"  {name:<23} p50 {r['p50_ms']:>7.2f}  p95 {r['p95_ms']:>7.2f}  "
                       f"p99 {r['p99_ms']:>7.2f}  ({r['samples']} samples)")
        busy = lat.get("after_busy_step")
        if busy:
            out.append(f"  after a step of {busy['step_s'] * 1000:g} ms (Dramatiq worker_timeout "
                       f"{busy['worker_timeout_ms']} ms):")
            for name, r in busy["contenders"].items():
                out.append(f"  {name:<23} p50 {r['p50_ms']:>7.2f}  p95 {r['p95_ms']:>7.2f}  "
                           f"p99 {r['p99_ms']:>7.2f}  ({r['samples']} samples)")
    sig = results.get("signal")
    if sig:
        out.append(f"signal -> next step claimed, ms (one waiting execution at a time, {sig['threads']} "
                   f"threads): p50 {sig['p50_ms']}  p95 {sig['p95_ms']}  max {sig['max_ms']}  "
                   f"({sig['samples']} samples)")
    cost = results.get("cost")
    if cost:
        out.append("cost per step attempt (one execution driven at a time; ms split: store / engine "
                   "Redis / send / rest):")
        for label, c in cost["configs"].items():
            out.append(
                f"  {label:<24} {c['wall_ms_per_attempt']:>7.2f} ms = {c['store_ms_per_attempt']:.2f} / "
                f"{c['engine_redis_ms_per_attempt']:.2f} / {c['send_ms_per_attempt']:.2f} / "
                f"{c['other_ms_per_attempt']:.2f};  MongoDB {c['mongodb_commands_per_attempt']:g} cmd "
                f"{c['mongodb_bytes_written_per_attempt']:,} B written, "
                f"Redis {c['redis_commands_per_attempt']:g}, messages {c['messages_per_attempt']:g}; "
                f"{c['advance_calls_per_execution']:g} calls; document {c['document_bytes_after']:,} B")
        msg = cost["configs"].get("10 steps, a message each")
        if msg and "mongodb_reads_per_attempt" in msg:
            out.append(f"  per message-step (a message per step): MongoDB "
                       f"{msg['mongodb_reads_per_attempt']:g} reads + "
                       f"{msg['mongodb_writes_per_attempt']:g} writes (most of any step "
                       f"{msg['mongodb_reads_max_per_attempt']:g} + "
                       f"{msg['mongodb_writes_max_per_attempt']:g}),"
                       f" {msg['mongodb_reads_after_write']} reads after a write; engine Redis by kind: "
                       f"{_counts(msg['redis_kinds'])}")
        for label, g in cost["growth"].items():
            out.append(f"  growth {label}: x{g['wall']:.2f} per attempt (outside the store "
                       f"x{g['outside_store']:.2f}, bytes written x{g['bytes_written']:.2f})")
    first = results.get("slow_store")
    for slow in [first, *first.get("other_latencies", {}).values()] if first else []:
        out.append(f"slow store: {slow['threads']} threads, {slow['latency_ms']:g} ms injected per "
                   f"command on the executions collection ({slow['executions']} chains x "
                   f"{slow['steps']} steps, median of {slow['repetitions']}):")
        for name, c in slow["contenders"].items():
            out.append(
                f"  {name:<12} {c['steps_per_s']:>7,.0f} steps/s, bound {c['bound_steps_per_s']:,.0f} "
                f"({c['delayed_commands_per_step']:.2f} delayed cmd/step; MongoDB "
                f"{c['mongodb_commands_per_step']:.2f} cmd/step in all): {c['of_bound']:.2f} of it; "
                f"without the latency {c['no_latency_steps_per_s']:,.0f} steps/s "
                f"({c['no_latency_cpu_ms_per_step']:.2f} ms CPU/step), {c['of_ceiling']:.2f} of that; "
                f"{c['of_lower_of_bound_and_ceiling']:.2f} of the lower of the two")
    wire = results.get("wire")
    if wire:
        part = wire["in_process"]
        out.append(f"over the wire ({wire['store']}), the workers in the bench's process, "
                   f"{part['threads']} threads, {part['executions']} chains x {part['steps']} steps, "
                   f"median of {part['repetitions']}:")
        for name, c in part["contenders"].items():
            out.append(f"  {name:<12} {c['steps_per_s']:>7,.0f} steps/s, CPU {c['cpu_ms_per_step']:.2f} "
                       f"ms/step here + {c['server_cpu_ms_per_step']:.2f} in the store server "
                       f"(server busy {c['server_cpu_share']:.2f} of a core); MongoDB round trips "
                       f"{c['mongodb_round_trips_per_step']:.2f}/step"
                       + (" (" + ", ".join(f"{k} {v:g}" for k, v in c["mongodb_round_trips"].items())
                          + ")" if c["mongodb_round_trips"] else ""))
        out.append("  ratios: " + ", ".join(f"{k} {v:.2f}" for k, v in part["ratios"].items()))
        if "cpu_ratios" in part:
            out.append("  CPU per step of this process, detflow's over the others': " + ", ".join(
                f"{k} {v:.2f}" for k, v in part["cpu_ratios"].items()) + "; with the store server's "
                "CPU added to detflow's: " + ", ".join(
                f"{k} {v:.2f}" for k, v in part["cpu_ratios_with_server"].items()))
            for name, c in part["contenders"].items():
                if name.startswith("detflow"):
                    out.append(f"  {name:<12} per step: MongoDB {c['mongodb_reads_per_step']:g} reads + "
                               f"{c['mongodb_writes_per_step']:g} writes; engine Redis "
                               f"{c['engine_redis_per_step']:g} ({_counts(c['engine_redis'])})")
        procs = wire.get("processes")
        if procs:
            out.append(f"over the wire, worker process sets (detflow: manage.py runworker --no-sweeper;"
                       f" raw Dramatiq: the dramatiq command), N processes x {procs['threads']} threads,"
                       f" {procs['executions']} chains x {procs['steps']} steps, median of "
                       f"{procs['repetitions']}; CPU in cores busy (workers / store server / launcher):")
            for count, e in procs["by_processes"].items():
                out.append(f"  {count} process(es): " + "; ".join(
                    f"{name} {e[name]['steps_per_s']:,.0f} steps/s, CPU {e[name]['workers_cpu_share']:.2f}"
                    f" / {e[name]['server_cpu_share']:.2f} / "
                    f"{e[name]['cpu_ms_per_step'] * e[name]['steps_per_s'] / 1000:.2f}, "
                    f"{e[name]['workers_cpu_ms_per_step']:.2f} + {e[name]['server_cpu_ms_per_step']:.2f}"
                    f" ms/step (workers + server)" for name in ("detflow", "dramatiq"))
                    + f"; detflow/dramatiq {e['ratios']['detflow/dramatiq']:.2f}")
    scaling = results.get("scaling")
    if scaling:
        out.append(f"process scaling ({scaling['store']}; detflow: manage.py runworker --processes N "
                   f"--threads {scaling['threads']} --no-sweeper; raw Dramatiq: the dramatiq command, "
                   f"the same N x {scaling['threads']}), {scaling['executions']} chains x "
                   f"{scaling['steps']} steps, median of {scaling['repetitions']}, on "
                   f"{scaling['cores']} cores; CPU in cores busy over the run:")
        out.append(f"  {'processes':>9}  {'detflow steps/s':>15}  {'workers':>7}  {'store server':>12}  "
                   f"{'Redis':>5}  {'launcher':>8}  {'all':>5}  {'ms CPU/step (workers)':>21}  "
                   f"{'store probe ms':>14}  {'dramatiq steps/s':>16}  {'workers':>7}  {'all':>5}  "
                   f"{'ms CPU/step':>11}  {'store probe ms':>14}")
        for count, e in scaling["by_processes"].items():
            d, r = e["detflow"], e["dramatiq"]
            out.append(f"  {count:>9}  {d['steps_per_s']:>15,.0f}  {d['workers_cpu_share']:>7.2f}  "
                       f"{d['server_cpu_share']:>12.2f}  {d.get('redis_cpu_share') or 0:>5.2f}  "
                       f"{d.get('launcher_cpu_share') or 0:>8.2f}  {d.get('total_cpu_share') or 0:>5.2f}  "
                       f"{d['workers_cpu_ms_per_step']:>21.3f}  {d.get('store_probe_ms') or 0:>14.2f}  "
                       f"{r['steps_per_s']:>16,.0f}  "
                       f"{r['workers_cpu_share']:>7.2f}  {r.get('total_cpu_share') or 0:>5.2f}  "
                       f"{r['workers_cpu_ms_per_step']:>11.3f}  {r.get('store_probe_ms') or 0:>14.2f}")
        out.append("  (CPU in cores busy over the run; the store probe: one _id lookup by the launcher "
                   "every 20 ms, median; raw Dramatiq's runs leave the server idle)")
        for count, e in scaling["by_processes"].items():
            if "redis_commands" in e["detflow"]:
                out.append(f"  Redis server commands per step, {count} process(es), every client (the "
                           "launcher's polls too): " + "; ".join(
                               f"{name} {e[name]['redis_commands_per_step']:g} "
                               f"({_counts(dict(list(e[name]['redis_commands'].items())[:6]))})"
                               for name in ("detflow", "dramatiq")))
        out.append(f"  {scaling['limit']}")
    hist = results.get("history")
    if hist:
        made = hist["made"]
        out.append(f"long history: {made['events']:,} events made by {made['operator_retries']} "
                   f"operator retries ({made['attempts']:,} attempts) in {made['seconds']:g} s; "
                   f"{hist['steps']} no-op steps measured after it (ms split: store / engine Redis / "
                   "send / rest):")
        for label, c in hist["configs"].items():
            out.append(
                f"  {label:<30} {c['wall_ms_per_attempt']:>7.2f} ms = {c['store_ms_per_attempt']:.2f} / "
                f"{c['engine_redis_ms_per_attempt']:.2f} / {c['send_ms_per_attempt']:.2f} / "
                f"{c['other_ms_per_attempt']:.2f};  MongoDB {c['mongodb_commands_per_attempt']:g} cmd "
                f"{c['mongodb_bytes_written_per_attempt']:,} B written; document "
                f"{c['document_bytes_before']:,} -> {c['document_bytes_after']:,} B")
        for label, g in hist["growth"].items():
            out.append(f"  growth {label}: x{g['wall']:.2f} per attempt (CPU x{g['cpu']:.2f}, outside "
                       f"the store x{g['outside_store']:.2f}, store x{g['store']:.2f})")
    mem = results.get("memory")
    if mem:
        out.append("memory: worker RSS after " + ", ".join(
            f"{int(n):,}: {v:.1f} MB" for n, v in mem["rss_mb_at"].items())
            + f"; the store, reported apart: {mem['store']['python_bytes_per_execution']:,} B per "
              f"execution as Python objects ({mem['store']['bson_bytes_per_execution']:,} B BSON), "
              f"{list(mem['store']['mb_if_kept'].values())[-1]} MB had all "
              f"{mem['executions']:,} been kept")
    files = results.get("file_memory")
    if files:
        out.append("file workflow, peak RSS: " + ", ".join(
            f"{r['file_mb']:g} MB {r['kind']}: {r['peak_rss_mb']} MB ({r['seconds']} s)"
            for r in files["results"]))
    return "\n".join(out)


def write_json(results: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(results, indent=2, default=str) + "\n")


def plot(results: dict[str, Any], path: Path) -> None:
    """Draw the four views (throughput, latency, cost per step, memory) into one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(14, 10))
    colors = {"detflow": "tab:blue", "detflow-msg": "tab:purple", "dramatiq": "tab:orange",
              "celery": "tab:green"}
    store = results.get("store", "")
    fig.suptitle(f"detflow bench on {results['machine']['cores']} cores, {store}", fontsize=11)

    ax = axes[0][0]
    tp = results.get("throughput")
    if tp:
        threads = [int(t) for t in tp["by_threads"]]
        for name, color in colors.items():
            if name not in tp["by_threads"][str(threads[0])]:
                continue
            ax.plot(threads, [tp["by_threads"][str(t)][name]["steps_per_s"] for t in threads],
                    marker="o", color=color, label=name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(threads, [str(t) for t in threads])
        ax.set_xlabel("worker threads")
        ax.set_ylabel("steps per second (median)")
        ax.set_title(f"Throughput: {tp['executions']} chains x {tp['steps']} no-op steps")
        ax.legend()
        ax.grid(alpha=0.3)

    ax = axes[0][1]
    lat = results.get("latency")
    if lat:
        rows = dict(lat["contenders"])
        if "detflow_outcome_to_claim" in lat:
            rows["detflow\noutcome->claim"] = lat["detflow_outcome_to_claim"]
        names = list(rows)
        width = 0.25
        for k, q in enumerate(("p50", "p95", "p99")):
            ax.bar([i + (k - 1) * width for i in range(len(names))],
                   [rows[n][f"{q}_ms"] for n in names], width, label=q)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("ms, step end to next step start")
        ax.set_title("Latency at low load (one chain in flight)")
        ax.legend()
        ax.grid(alpha=0.3, axis="y")

    ax = axes[1][0]
    cost = results.get("cost")
    if cost:
        labels = list(cost["configs"])
        parts = (("store_ms_per_attempt", "store (MongoDB)"), ("engine_redis_ms_per_attempt", "engine Redis"),
                 ("send_ms_per_attempt", "message send"), ("other_ms_per_attempt", "engine Python, handler"))
        bottom = [0.0] * len(labels)
        for key, text in parts:
            values = [max(cost["configs"][label][key] or 0, 0) for label in labels]
            ax.bar(range(len(labels)), values, bottom=bottom, label=text)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        ax.set_xticks(range(len(labels)), [label.replace(", ", ",\n") for label in labels], fontsize=8)
        ax.set_ylabel("ms per step attempt")
        ax.set_title("detflow cost per step attempt, by workflow length and history")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3, axis="y")

    ax = axes[1][1]
    mem = results.get("memory")
    if mem:
        xs = [row["executions"] for row in mem["series"]]
        ax.plot(xs, [row["rss_mb"] for row in mem["series"]], color="tab:blue",
                label="worker RSS (store deleted after each batch)")
        each = (mem["store"]["python_bytes_per_execution"] or 0) / 1e6
        ax.plot(xs, [x * each for x in xs], color="tab:gray", linestyle="--",
                label="embedded store, had it been kept")
        files = results.get("file_memory")
        if files:
            small, large = files["results"]
            ax.axhline(large["peak_rss_mb"], color="tab:red", linestyle=":",
                       label=f"file workflow, peak RSS of its own process: {large['file_mb']:g} MB "
                             f"file {large['peak_rss_mb']} MB, {small['file_mb']:g} MB file "
                             f"{small['peak_rss_mb']} MB")
        ax.set_xlabel("executions run")
        ax.set_ylabel("MB")
        ax.set_title("Memory")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def growth_ratios(configs: dict[str, Any], a: str, b: str) -> dict[str, float | None]:
    """Ratios of configuration ``a``'s per-attempt cost to ``b``'s (time paired per repetition)."""
    ca, cb = configs[a], configs[b]

    def outside(c: dict[str, Any]) -> float:
        return c["wall_ms_per_attempt"] - c["store_ms_per_attempt"]

    return {
        "wall": stats.rounded(stats.paired_ratio(ca["wall_ms_per_attempt_runs"],
                                                 cb["wall_ms_per_attempt_runs"])),
        "outside_store": stats.rounded(outside(ca) / outside(cb)),
        "store": stats.rounded(ca["store_ms_per_attempt"] / cb["store_ms_per_attempt"]),
        "bytes_written": stats.rounded(ca["mongodb_bytes_written_per_attempt"]
                                       / cb["mongodb_bytes_written_per_attempt"]),
        "document_bytes": stats.rounded(ca["document_bytes_after"] / cb["document_bytes_after"]),
    }
