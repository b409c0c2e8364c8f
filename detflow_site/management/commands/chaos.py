"""``manage.py chaos``: a seeded fault run over the chaos workflow, checked; non-zero on violations.

With ``--processes N`` the workers are N real ``runworker`` processes, SIGKILLed on the seeded
schedule (``detflow_site.chaos.fleet``); without ``DETFLOW_MONGODB_URL`` the command first starts its
own ``runstore`` and redis-server (``detflow_site.chaos.hosted``).
"""
from __future__ import annotations

import json
import signal
import sys
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from detflow_site import services
from detflow_site.chaos import fleet, hosted
from detflow_site.chaos.run import Options, prepare, run
from detflow_site.chaos.schedule import GROUPS, KINDS, expand


class Command(BaseCommand):
    help = ("Run N executions of the chaos workflow on worker threads (or, with --processes, on "
            "real worker processes that it SIGKILLs) while seeded faults strike; check the "
            "invariants and exit non-zero on any violation.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--executions", type=int, default=200)
        parser.add_argument("--steps", type=int, default=5)
        parser.add_argument("--threads", type=int,
                            help="worker threads (default 8), or threads per worker process (default 8)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--faults",
                            help=f"comma-separated kinds (default all: {','.join(KINDS)}; with "
                                 f"--processes: {','.join(fleet.KINDS)}); "
                                 + "; ".join(f"{g}: every {g}_* kind" for g in GROUPS))
        parser.add_argument("--drain-timeout", type=float, default=180.0,
                            help="seconds to wait for every execution to finish (default 180)")
        parser.add_argument("--processes", type=int, default=0,
                            help="run on this many real worker processes (manage.py runworker), "
                                 "SIGKILLed on the seeded schedule and started again")
        parser.add_argument("--kills", type=int,
                            help="with --processes: SIGKILLs (default one per 22 executions, at least 3)")
        parser.add_argument("--step-work", type=float, default=fleet.FleetOptions.work_s,
                            help="with --processes: seconds each step works (default 0.1)")
        parser.add_argument("--kill-interval", type=float, default=fleet.FleetOptions.kill_interval_s,
                            help="with --processes: mean seconds between kills (default 4)")
        parser.add_argument("--lease", type=float, default=fleet.FleetOptions.lease_s,
                            help="with --processes: the workers' lease in seconds (default 5)")
        parser.add_argument("--in-flight", type=int,
                            help="with --processes: executions unfinished at once (default: half "
                                 "the threads of all workers but one)")
        parser.add_argument("--json", action="store_true", help="print only the JSON report")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["processes"] < 0:
            raise CommandError("--processes must be at least 1 (or left out for worker threads)")
        if options["processes"]:
            self._processes(options)
            return
        for name in ("kills", "in_flight"):
            if options[name] is not None:
                raise CommandError(f"--{name.replace('_', '-')} needs --processes")
        for name in ("executions", "steps", "threads"):
            if (options[name] if options[name] is not None else 1) < 1:
                raise CommandError(f"--{name} must be at least 1")
        try:
            kinds = expand(_kinds(options["faults"]) if options["faults"] else KINDS)
            chaos = Options(executions=options["executions"], steps=options["steps"],
                            threads=options["threads"] or 8, seed=options["seed"], faults=kinds,
                            drain_timeout=options["drain_timeout"])
            prepare(chaos)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        report = run(chaos, progress=None if options["json"] else self.stdout.write)
        self._print(report, options["json"])
        if not report.ok:
            raise CommandError(f"{len(report.findings.violations)} invariant violation(s)")

    def _processes(self, options: dict[str, Any]) -> None:
        chaos = fleet.FleetOptions(
            processes=options["processes"], threads=options["threads"] or fleet.FleetOptions.threads,
            executions=options["executions"], steps=options["steps"], seed=options["seed"],
            faults=_kinds(options["faults"]) if options["faults"] else fleet.KINDS,
            kills=options["kills"], work_s=options["step_work"],
            kill_interval_s=options["kill_interval"], lease_s=options["lease"],
            in_flight=options["in_flight"], drain_timeout=options["drain_timeout"])
        try:
            fleet.check(chaos)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        # SIGTERM (or SIGINT) ends the run as an exception does: the workers and services started
        # are stopped, and the signal that reaches the run too (a terminal's or a supervisor's
        # process group) does not cut that short.
        signal.signal(signal.SIGTERM, _terminated)
        signal.signal(signal.SIGINT, _terminated)
        say = (lambda line: print(line, file=sys.stderr, flush=True)) if options["json"] \
            else self.stdout.write
        if services.is_embedded_store():
            code = hosted.run(_arguments(chaos, options["json"]), say)
            if code:
                sys.exit(code)  # the run over the started services has said what went wrong
            return
        report = fleet.run(chaos, say)
        self._print(report, options["json"])
        if not report.ok:
            raise CommandError(f"{len(report.findings.violations)} invariant violation(s), "
                               f"{len(report.unexpected_exits)} worker exit(s) on their own, "
                               f"worst recovery {report.as_dict()['recovery_ms']['max']} ms "
                               f"(bound {report.bound_ms} ms)")

    def _print(self, report: Any, as_json: bool) -> None:
        if as_json:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            for line in report.lines():
                self.stdout.write(line)


def _terminated(signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def _kinds(text: str) -> tuple[str, ...]:
    return tuple(k.strip() for k in text.split(",") if k.strip())


def _arguments(chaos: fleet.FleetOptions, as_json: bool) -> list[str]:
    """Return the command line that runs ``chaos`` again (over the services started for it)."""
    args = ["--processes", str(chaos.processes), "--threads", str(chaos.threads),
            "--executions", str(chaos.executions), "--steps", str(chaos.steps),
            "--seed", str(chaos.seed), "--faults", ",".join(chaos.faults),
            "--kills", str(chaos.kill_count()), "--step-work", f"{chaos.work_s:g}",
            "--kill-interval", f"{chaos.kill_interval_s:g}", "--lease", f"{chaos.lease_s:g}",
            "--in-flight", str(chaos.in_flight_limit()), "--drain-timeout", f"{chaos.drain_timeout:g}"]
    return args + (["--json"] if as_json else [])
