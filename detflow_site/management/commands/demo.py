"""``manage.py demo``: real files through the file-processing workflow (or, with ``--workflow
payments``, orders through the payments workflow against a local payment gateway), in this process,
and the post-mortem of each execution that failed or was rolled back.

The command lives in the project package because it joins two apps: ``executions`` runs the demo,
``insights`` explains its failures, and ``executions`` may not import ``insights``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from detflow_site.demo import email, payments
from detflow_site.demo import run as demo
from detflow_site.errors import DetflowError
from insights import service


class Command(BaseCommand):
    help = ("Generate sample files (or take yours), process each through the file-processing workflow "
            "with worker threads in this process, inject a transient failure and a worker crash, "
            "and print a summary with the post-mortem of each failed execution. With --workflow "
            "payments: orders against a local payment gateway, with declines rolled back, an outage, "
            "a refused refund and a crash inside a compensation, checked against the gateway's ledger. With "
            "--workflow email: messages to a local SMTP server, with an outage, delivery reports, a "
            "bounce, a timed-out report and an approval as signals, checked against its mailbox.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--workflow", choices=("file-processing", "payments", "email"),
                            default="file-processing",
                            help="which built-in workflow to show (default file-processing)")
        parser.add_argument("--orders", type=int, default=20,
                            help=f"payments: orders to run, 5 to {payments.MAX_ORDERS} (default 20)")
        parser.add_argument("--messages", type=int, default=50,
                            help=f"email: messages to send, 5 to {email.MAX_MESSAGES} (default 50)")
        parser.add_argument("--files", type=Path, help="process the files of this directory instead "
                                                       "of the generated samples (no injected faults)")
        parser.add_argument("--json", action="store_true", help="print only a JSON summary")
        parser.add_argument("--serve", action="store_true",
                            help="keep the admin running afterwards, with a one-time login")
        parser.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")
        parser.add_argument("--threads", type=int, default=4, help="worker threads (default 4)")
        parser.add_argument("--workdir", type=Path,
                            help="where samples and outputs go (default: a new var/demo-* directory)")

    def handle(self, *args: Any, **options: Any) -> None:
        def explain(execution_id: str) -> dict[str, Any]:
            return service.compact(service.postmortem(execution_id))

        if options["workflow"] == "payments":
            if options["files"] or options["serve"]:
                raise CommandError("--files and --serve go with the file-processing demo, not payments")
            try:
                summary = payments.run(self.stdout, orders=options["orders"], threads=options["threads"],
                                       as_json=options["json"], explain=explain)
            except DetflowError as exc:
                raise CommandError(str(exc)) from None
            self._fail_on(summary)
            return
        if options["workflow"] == "email":
            if options["files"] or options["serve"]:
                raise CommandError("--files and --serve go with the file-processing demo, not email")
            try:
                summary = email.run(self.stdout, messages=options["messages"], threads=options["threads"],
                                    as_json=options["json"])
            except DetflowError as exc:
                raise CommandError(str(exc)) from None
            self._fail_on(summary)
            return
        then = None
        if options["serve"]:
            from detflow_site.demo.serve import check_port, serve

            port = check_port(options["port"])

            def then() -> None:
                serve(port, self.stdout)

        try:
            summary = demo.run(
                self.stdout, files=options["files"], workdir=options["workdir"],
                threads=options["threads"], as_json=options["json"], then=then, explain=explain,
            )
        except DetflowError as exc:
            raise CommandError(str(exc)) from None
        self._fail_on(summary)

    def _fail_on(self, summary: dict[str, Any]) -> None:
        failed = [c["check"] for c in summary["checks"] if not c["ok"]]
        if failed:
            raise CommandError(f"{len(failed)} demo check(s) failed: " + "; ".join(failed))
