"""The demo: real files through the ``file-processing`` workflow, with real worker threads in this
process, one injected transient failure and one injected worker crash that the sweeper recovers.

``manage.py demo`` is a thin wrapper over :func:`run`, which tests call directly.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from django.conf import settings as django_settings
from django.test.utils import override_settings

from detflow_site import conf, services
from detflow_site.demo.samples import Sample, generate
from detflow_site.demo.view import Progress, summary_lines
from detflow_site.errors import DetflowError
from executions import faults, operations, store
from workflows import storage
from workflows.builtin import FILE_PROCESSING, FILE_PROCESSING_DEFINITION, ensure_file_processing
from workflows.outbox import Outbox

#: Settings of the demo's own run: a short lease, so that the crashed attempt is recovered in
#: seconds rather than DETFLOW_LEASE_S's usual 30.
DEMO_SETTINGS = {"LEASE_S": 2.0, "SWEEP_INTERVAL_S": 0.25, "SWEEP_GRACE_S": 1.0}
#: Most files ``--files`` takes from a directory.
MAX_FILES = 200
#: Which sample fails once (and where), and which one's worker crashes (after which step ran).
TRANSIENT = ("orders.csv", "files.checksum")
CRASH = ("sunset.png", "files.notify")
TERMINAL = ("SUCCEEDED", "FAILED", "CANCELLED")


class DemoError(DetflowError):
    """The demo cannot run as asked (no files, no time left); the message says why."""


@dataclass
class Planned:
    """One file to process, what the demo expects of it, and what it injects into it."""

    path: Path
    expect: str | None = None
    simulate: dict[str, str] = field(default_factory=dict)
    crash_after: str | None = None
    execution_id: str = ""


def run(
    out: TextIO, files: Path | None = None, workdir: Path | None = None, threads: int = 4,
    as_json: bool = False, timeout_s: float = 120.0, then: Callable[[], None] | None = None,
    explain: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Run the demo and print its progress and summary (or only the JSON summary); return the summary.

    ``files`` processes the files of that directory instead of the generated sample set (without
    injected faults). ``then`` runs after the summary with the workers still running. ``explain``
    returns the post-mortem of a failed execution by id (the command passes the insights app's:
    executions cannot import it); each failed execution's row carries it as ``postmortem``.
    """
    from executions.workers import WorkerPool

    if threads < 1:
        raise DemoError("--threads must be at least 1")
    mine = _user_files(files) if files is not None else None
    workdir = Path(workdir) if workdir else _new_workdir()
    if mine is None:
        planned = [_inject(sample) for sample in generate(workdir / "samples")]
    else:
        planned = [Planned(path) for path in mine]
    overrides = {**django_settings.DETFLOW, **DEMO_SETTINGS, "STORAGE_DIR": str(workdir / "storage")}
    with override_settings(DETFLOW=overrides), quiet_logs():
        ensure_file_processing()
        _start(planned)
        view = Progress(out, [p.path.name for p in planned], enabled=not as_json)
        view.header(_context(workdir, planned))
        pool = WorkerPool(threads=threads).start()
        try:
            docs = _watch(planned, view, timeout_s)
            summary = summarize(planned, docs, workdir, explain)
            if as_json:
                out.write(json.dumps(summary, indent=2) + "\n")
            else:
                out.write("\n".join(summary_lines(summary, out)) + "\n")
            if then is not None:
                then()
        finally:
            pool.stop()
    return summary


def _new_workdir() -> Path:
    base = Path(django_settings.BASE_DIR) / "var"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="demo-", dir=base))


def _user_files(files: Path) -> list[Path]:
    folder = Path(files).expanduser()
    if not folder.is_dir():
        raise DemoError(f"--files {files}: not a directory")
    found = sorted(p.resolve() for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not found:
        raise DemoError(f"--files {files}: the directory holds no files (hidden ones are skipped)")
    if len(found) > MAX_FILES:
        raise DemoError(f"--files {files}: {len(found)} files; the demo takes at most {MAX_FILES}")
    return found


def _inject(sample: Sample) -> Planned:
    planned = Planned(sample.path.resolve(), expect=sample.expect)
    if sample.path.name == TRANSIENT[0]:
        planned.simulate = {"transient_failure": TRANSIENT[1]}
    if sample.path.name == CRASH[0]:
        planned.crash_after = CRASH[1]
    return planned


def _start(planned: list[Planned]) -> None:
    """Store every execution first, then arm the crash: no worker runs yet, so none can slip by."""
    names = [s["name"] for s in FILE_PROCESSING_DEFINITION["steps"]]
    for item in planned:
        data: dict[str, Any] = {"path": _hand_in(item.path), "name": item.path.name}
        if item.simulate:
            data["simulate"] = item.simulate
        doc, _ = operations.start(FILE_PROCESSING, data, by="demo")
        item.execution_id = doc["_id"]
        if item.crash_after is not None:
            # Crash right after that step's handler ran, before its outcome is stored.
            faults.arm("handled", execution_id=item.execution_id, skip=names.index(item.crash_after))


def _context(workdir: Path, planned: list[Planned]) -> list[str]:
    lines = [
        f"detflow demo: {len(planned)} file(s) through {FILE_PROCESSING} v1",
        f"  store: {services.store_description()}",
        f"  redis: {services.redis_description()}",
        f"  files and outputs: {_show(workdir)}",
    ]
    for item in planned:
        if item.simulate:
            lines.append(f"  injected: {item.path.name} fails once in {item.simulate['transient_failure']}"
                         " (a transient error; the retry succeeds)")
        if item.crash_after:
            lines.append(f"  injected: the worker running {item.crash_after} of {item.path.name} crashes "
                         "after the handler ran; the sweeper recovers the attempt once its lease "
                         f"({conf.get().LEASE_S:g} s) runs out")
    return lines


def _watch(planned: list[Planned], view: Progress, timeout_s: float) -> list[dict[str, Any]]:
    ids = [p.execution_id for p in planned]
    deadline = time.monotonic() + timeout_s
    while True:
        found = {d["_id"]: d for d in store.collection().find({"_id": {"$in": ids}})}
        docs = [found[i] for i in ids]
        view.update(docs)
        if all(d["status"] in TERMINAL and not d.get("due_at") for d in docs):
            view.finish(docs)
            return docs
        if time.monotonic() > deadline:
            raise DemoError(f"executions still running after {timeout_s:g} s; is another worker "
                            "consuming the same queue?")
        time.sleep(0.1)


def summarize(
    planned: list[Planned], docs: list[dict[str, Any]], workdir: Path,
    explain: Callable[[str], dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Return the machine-readable summary of finished executions, with the demo's checks."""
    executions = []
    for item, doc in zip(planned, docs, strict=True):
        outputs = {s["name"]: json.loads(s["output_json"]) for s in doc["steps"] if "output_json" in s}
        failed = next((s for s in doc["steps"] if s["status"] == "FAILED"), None)
        finished = store.to_ms(doc.get("finished_at")) or store.to_ms(doc["updated_at"]) or 0
        executions.append({
            "id": doc["_id"],
            "file": item.path.name,
            "status": doc["status"],
            "attempts": sum(s["attempt"] for s in doc["steps"]),
            "failed_step": doc.get("failed_step"),
            "error": (failed.get("error") or {}).get("message") if failed else None,
            "recovered_crashes": sum(1 for e in doc["events"] if e["type"] == "attempt_lost"),
            "outputs": _outputs(outputs),
            "duration_s": round((finished - (store.to_ms(doc["created_at"]) or 0)) / 1000, 2),
            "steps": {s["name"]: {"status": s["status"], "attempts": s["attempt"]} for s in doc["steps"]},
            "expected": item.expect,
            "injected": ({"transient_failure": item.simulate.get("transient_failure"),
                          "crash_after": item.crash_after}
                         if item.simulate or item.crash_after else None),
        })
        if explain is not None and doc["status"] == "FAILED":
            executions[-1]["postmortem"] = explain(doc["_id"])
    outbox = workdir / "storage" / "outbox" / "notifications.jsonl"
    return {
        "executions": executions,
        "store": services.store_description(),
        "redis": services.redis_description(),
        "workdir": str(workdir),
        "outbox": str(outbox),
        "checks": checks(planned, executions, Outbox(outbox)),
    }


def checks(planned: list[Planned], rows: list[dict[str, Any]], box: Outbox) -> list[dict[str, Any]]:
    """Check the outcome against what the demo expects; return ``{"ok", "check"}`` items."""
    found: list[dict[str, Any]] = []

    def check(ok: bool, text: str) -> None:
        found.append({"ok": bool(ok), "check": text})

    notified = Counter(r.get("execution_id") for r in box.records())
    succeeded = [(p, r) for p, r in zip(planned, rows, strict=True) if r["status"] == "SUCCEEDED"]
    stored_ok = [r["file"] for p, r in succeeded if _stored_intact(p.path, r["outputs"])]
    check(len(stored_ok) == len(succeeded),
          f"{len(stored_ok)} of {len(succeeded)} succeeded file(s) are stored with a SHA-256 that "
          "matches the original, and their derivatives are on disk")
    once = [r["file"] for _, r in succeeded if notified[r["id"]] == 1]
    check(len(once) == len(succeeded) and sum(notified.values()) == len(succeeded),
          f"the outbox holds {sum(notified.values())} notification(s): one for each of the "
          f"{len(succeeded)} succeeded file(s), none twice")
    valid = [r for p, r in zip(planned, rows, strict=True) if p.expect == "valid"]
    if valid:
        good = [r for r in valid if r["status"] == "SUCCEEDED"]
        check(len(good) == len(valid), f"{len(good)} of {len(valid)} valid sample(s) SUCCEEDED")
    refused = [r for p, r in zip(planned, rows, strict=True) if p.expect not in (None, "valid")]
    if refused:
        good = [r for r in refused if r["status"] == "FAILED" and r["failed_step"] == "files.validate"
                and r["steps"]["files.validate"]["attempts"] == 1]
        check(len(good) == len(refused),
              f"{len(good)} of {len(refused)} broken or disallowed sample(s) FAILED at files.validate "
              "after exactly one attempt")
    for item, row in zip(planned, rows, strict=True):
        if item.simulate:
            step = item.simulate["transient_failure"]
            check(row["status"] == "SUCCEEDED" and row["steps"][step]["attempts"] == 2,
                  f"{row['file']} SUCCEEDED after 2 attempts of {step} (one injected transient failure)")
        if item.crash_after:
            check(row["status"] == "SUCCEEDED" and row["recovered_crashes"] >= 1
                  and notified[row["id"]] == 1,
                  f"{row['file']} SUCCEEDED after {row['recovered_crashes']} recovered crash(es) in "
                  f"{item.crash_after}, and its notification appears once")
    return found


def _stored_intact(original: Path, outputs: dict[str, Any]) -> bool:
    obj = Path(outputs.get("object", ""))
    derivative = outputs.get("derivative")
    if not obj.is_file() or (derivative and not Path(derivative).is_file()):
        return False
    return _sha256(obj) == _sha256(original) == outputs.get("sha256")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _hand_in(path: Path) -> str:
    """Copy a file under the storage directory's ``uploads/``, as ``POST files/`` does; return its name."""
    with open(path, "rb") as source:
        return storage.keep_upload(lambda out: storage.copy(source, out))


def _outputs(outputs: dict[str, Any]) -> dict[str, Any]:
    """Where a file's results are: the stored object, the derivative, the notification.

    The handlers' outputs name files relative to the storage directory; the demo, on the machine
    that holds it, shows where they are.
    """
    root = storage.storage_dir()
    result: dict[str, Any] = {}
    if "files.store" in outputs:
        result["object"] = str(root / outputs["files.store"]["object"])
        result["sha256"] = outputs["files.store"]["sha256"]
    elif "files.receive" in outputs:
        result["inbox"] = str(root / outputs["files.receive"]["inbox"])
    if "files.validate" in outputs:
        result["type"] = outputs["files.validate"]["type"]
    derived = outputs.get("files.transform") or {}
    if derived.get("path"):
        result["derivative"] = str(root / derived["path"])
    if "files.notify" in outputs:
        result["notification"] = {"outbox": str(root / outputs["files.notify"]["outbox"]),
                                  "offset": outputs["files.notify"]["offset"]}
    return result


def _show(path: Path) -> str:
    with contextlib.suppress(ValueError):
        return str(path.relative_to(Path.cwd()))
    return str(path)


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """Keep worker chatter (and the injected crash's traceback) out of the demo's output."""
    levels = {name: logging.getLogger(name).level for name in ("dramatiq", "detflow")}
    logging.getLogger("dramatiq").setLevel(logging.CRITICAL)
    logging.getLogger("detflow").setLevel(logging.ERROR)
    try:
        yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
