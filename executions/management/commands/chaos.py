"""``manage.py chaos``: a seeded fault run over the chaos workflow, checked; non-zero on violations."""
from __future__ import annotations

import json
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from executions.chaos.run import Options, prepare, run
from executions.chaos.schedule import GROUPS, KINDS, expand


class Command(BaseCommand):
    help = ("Run N executions of the chaos workflow on worker threads while seeded faults strike; "
            "check the invariants and exit non-zero on any violation.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--executions", type=int, default=200)
        parser.add_argument("--steps", type=int, default=5)
        parser.add_argument("--threads", type=int, default=8)
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--faults", default=",".join(KINDS),
                            help=f"comma-separated kinds (default all: {','.join(KINDS)}); "
                                 + "; ".join(f"{g}: every {g}_* kind" for g in GROUPS))
        parser.add_argument("--drain-timeout", type=float, default=180.0,
                            help="seconds to wait for every execution to finish (default 180)")
        parser.add_argument("--json", action="store_true", help="print only the JSON report")

    def handle(self, *args: Any, **options: Any) -> None:
        for name in ("executions", "steps", "threads"):
            if options[name] < 1:
                raise CommandError(f"--{name} must be at least 1")
        try:
            kinds = expand(tuple(k.strip() for k in options["faults"].split(",") if k.strip()))
            chaos = Options(executions=options["executions"], steps=options["steps"],
                            threads=options["threads"], seed=options["seed"], faults=kinds,
                            drain_timeout=options["drain_timeout"])
            prepare(chaos)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        report = run(chaos, progress=None if options["json"] else self.stdout.write)
        if options["json"]:
            self.stdout.write(json.dumps(report.as_dict(), indent=2))
        else:
            for line in report.lines():
                self.stdout.write(line)
        if not report.ok:
            raise CommandError(f"{len(report.findings.violations)} invariant violation(s)")
