"""The strict embedded store served over the MongoDB wire protocol (``manage.py runstore``).

This is the store of the test topology: one process holds the store (mongomock made strict by
``embedded.serialize_mongomock()``, see ``wirestore``) and many processes (workers, gunicorn, the
management commands) reach it through the ordinary pymongo client, as they reach a real MongoDB.
State lives in this process's memory and is gone when it stops: a store for tests and local
multi-process runs, not for data anyone keeps.

The protocol is OP_MSG (opcode 2013) framed with pymongo's own ``bson``; pymongo 4.20 sends
nothing else (it shakes hands with OP_MSG too), and an older opcode closes the connection. The
server is a standalone: no replica set is emulated, so pymongo does not retry writes by itself.

Wire faults, for tests and chaos, with ``--faults`` (as ``enableTestCommands`` on a server): the
``configureFailPoint`` command with MongoDB's ``failCommand`` fail point, a subset of it, so the
same test runs against a real server:
``{configureFailPoint: "failCommand", mode: "alwaysOn" | "off" | {times: n} | {forSeconds: s},
data: {failCommands: [...], closeConnection: true, errorCode: 10107, blockConnection: true,
blockTimeMS: 500, closeAfterApplying: true, appName: "worker"}}``. ``forSeconds`` and
``closeAfterApplying`` (drop the connection after the command was applied, before its answer: an
ambiguous write) are this server's own; the rest is MongoDB's.
"""
from __future__ import annotations

import contextlib
import itertools
import logging
import signal
import socket
import socketserver
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import IO, Any

import bson

from detflow_site.wirestore import MAX_MESSAGE_SIZE, CommandFailed, Store, error_entry

logger = logging.getLogger("detflow.wire")

#: The opcode of OP_MSG, the only message format this server speaks.
OP_MSG = 2013
#: OP_MSG flag bits: a CRC-32C checksum ends the message; the sender wants no answer.
CHECKSUM_PRESENT, MORE_TO_COME = 1 << 0, 1 << 1
_HEADER = struct.Struct("<iiii")
#: What ``answer`` returns to close the connection without answering.
CLOSE: Any = object()


class ProtocolError(Exception):
    """A message this server cannot read: the connection is closed."""


def parse_op_msg(body: bytes) -> tuple[int, dict[str, Any]]:
    """Return the flags and the command of an OP_MSG body (the message less its header), with
    its document sequences (``documents``, ``updates``, ``deletes``) merged into the command."""
    (flags,) = struct.unpack_from("<I", body, 0)
    end = len(body) - (4 if flags & CHECKSUM_PRESENT else 0)
    at, command, sequences = 4, None, {}
    while at < end:
        kind = body[at]
        (size,) = struct.unpack_from("<i", body, at + 1)
        if kind == 0:
            command = bson.decode(body[at + 1:at + 1 + size])
            at += 1 + size
        elif kind == 1:
            nul = body.index(b"\0", at + 5)
            sequences[body[at + 5:nul].decode()] = bson.decode_all(body[nul + 1:at + 1 + size])
            at += 1 + size
        else:
            raise ProtocolError(f"unknown OP_MSG section kind {kind}")
    if command is None:
        raise ProtocolError("an OP_MSG without a body section")
    command.update(sequences)
    return flags, command


def frame_op_msg(reply: dict[str, Any], request_id: int, response_to: int) -> bytes:
    """Return the OP_MSG that carries ``reply`` as its one body section."""
    payload = struct.pack("<IB", 0, 0) + bson.encode(reply)
    return _HEADER.pack(_HEADER.size + len(payload), request_id, response_to, OP_MSG) + payload


@dataclass
class FailPoint:
    """MongoDB's ``failCommand`` fail point (a subset, and two fields of this server's own)."""

    commands: frozenset[str] = frozenset()
    #: Answers left to fail; ``None``: no count (always on, or until ``until``).
    times: int | None = 0
    until: float | None = None
    close_connection: bool = False
    close_after_applying: bool = False
    error_code: int | None = None
    block_ms: int = 0
    #: Fail only the connections of clients that gave this ``appName`` (MongoDB's ``appName``).
    app_name: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def configure(self, command: dict[str, Any]) -> None:
        """Set the fail point as ``configureFailPoint: "failCommand"`` says; raise ``CommandFailed``."""
        if command.get("configureFailPoint") != "failCommand":
            raise CommandFailed(2, f"unknown fail point {command.get('configureFailPoint')!r}: "
                                   "the test store knows 'failCommand'")
        mode, data = command.get("mode"), command.get("data") or {}
        times: int | None
        until = None
        if mode == "off":
            times = 0
        elif mode == "alwaysOn":
            times = None
        elif isinstance(mode, dict) and "times" in mode:
            times = int(mode["times"])
        elif isinstance(mode, dict) and "forSeconds" in mode:
            times, until = None, time.monotonic() + float(mode["forSeconds"])
        else:
            raise CommandFailed(2, f"unsupported fail point mode {mode!r}: 'off', 'alwaysOn', "
                                   "{times: n} or {forSeconds: s}")
        unknown = set(data) - {"failCommands", "closeConnection", "errorCode", "blockConnection",
                               "blockTimeMS", "closeAfterApplying", "appName"}
        if unknown:
            raise CommandFailed(2, f"fail point data {sorted(unknown)} not supported by the test store")
        with self.lock:
            self.commands = frozenset(data.get("failCommands") or ())
            self.times, self.until = times, until
            self.close_connection = bool(data.get("closeConnection"))
            self.close_after_applying = bool(data.get("closeAfterApplying"))
            self.error_code = int(data["errorCode"]) if "errorCode" in data else None
            self.block_ms = int(data.get("blockTimeMS") or 0) if data.get("blockConnection") else 0
            self.app_name = str(data["appName"]) if data.get("appName") is not None else None

    def take(self, name: str, app_name: str | None) -> FailPoint | None:
        """Return a copy of the fail point when it fails this command of a client of ``app_name``
        (and count it), else ``None``."""
        with self.lock:
            if name not in self.commands or self.times == 0:
                return None
            if self.app_name is not None and app_name != self.app_name:
                return None
            if self.until is not None and time.monotonic() >= self.until:
                self.times, self.until = 0, None
                return None
            if self.times is not None:
                self.times -= 1
            return FailPoint(self.commands, None, None, self.close_connection,
                             self.close_after_applying, self.error_code, self.block_ms)


@dataclass
class Client:
    """What the server knows of one connection: its id, and the ``appName`` its handshake gave."""

    id: int
    app_name: str | None = None


class WireServer(socketserver.ThreadingTCPServer):
    """The store's server: a thread per connection, one store, one fail point."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, host: str = "127.0.0.1", port: int = 27018, faults: bool = False) -> None:
        super().__init__((host, port), _Connection)
        self.store = Store()
        self.faults_enabled = faults
        self.fail_point = FailPoint()
        self._ids = itertools.count(1)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    @property
    def url(self) -> str:
        host = self.server_address[0]
        return f"mongodb://{host.decode() if isinstance(host, bytes) else host}:{self.port}/"

    def next_connection_id(self) -> int:
        return next(self._ids)

    @contextlib.contextmanager
    def tracked(self, sock: socket.socket) -> Iterator[None]:
        with self._open_lock:
            self._open.add(sock)
        try:
            yield
        finally:
            with self._open_lock:
                self._open.discard(sock)

    def close_connections(self) -> None:
        """Close every client connection (at shutdown: their threads end at once)."""
        with self._open_lock:
            for sock in self._open:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def answer(self, command: dict[str, Any], connection: Client) -> Any:
        """Return the reply to ``command``, or ``CLOSE`` when a fault drops the connection."""
        name = next(iter(command), "")
        if name.lower() in ("hello", "ismaster") and isinstance(command.get("client"), dict):
            application = command["client"].get("application") or {}
            connection.app_name = application.get("name") if isinstance(application, dict) else None
        if name == "configureFailPoint" and self.faults_enabled:
            try:
                self.fail_point.configure(command)
            except CommandFailed as exc:
                return exc.reply()
            return {"ok": 1.0}
        fault = self.fail_point.take(name, connection.app_name)
        if fault is not None:
            if fault.block_ms:
                time.sleep(fault.block_ms / 1000)  # the fault itself: a slow answer
            if fault.close_connection:
                return CLOSE
            if fault.error_code is not None:
                return CommandFailed(fault.error_code, "Failing command via 'failCommand' failpoint "
                                                       "(runstore)").reply()
        if name.lower() in ("hello", "ismaster"):
            reply = {**self.store.hello(connection.id), "ok": 1.0}
        else:
            reply = self._run(name, command)
        return CLOSE if fault is not None and fault.close_after_applying else reply

    def _run(self, name: str, command: dict[str, Any]) -> dict[str, Any]:
        try:
            return self.store.run(name, str(command.get("$db", "admin")), command)
        except CommandFailed as exc:
            return exc.reply()
        except Exception as exc:
            code, message, extra = error_entry(exc)
            if code == 1:
                logger.exception("runstore: %s failed", name)
            return CommandFailed(code, message, **extra).reply()


class _Connection(socketserver.StreamRequestHandler):
    """One client connection: read a message, answer it, until the client closes."""

    server: WireServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        connection = Client(self.server.next_connection_id())
        replies = itertools.count(1)
        with self.server.tracked(sock):
            while True:
                header = self.rfile.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    return
                length, request_id, _, opcode = _HEADER.unpack(header)
                if not _HEADER.size + 5 <= length <= MAX_MESSAGE_SIZE or opcode != OP_MSG:
                    logger.warning("runstore: closing a connection that sent opcode %s, %s bytes "
                                   "(only OP_MSG is spoken)", opcode, length)
                    return
                body = self.rfile.read(length - _HEADER.size)
                if len(body) < length - _HEADER.size:
                    return
                try:
                    flags, command = parse_op_msg(body)
                except (ProtocolError, bson.errors.BSONError, struct.error, ValueError) as exc:
                    logger.warning("runstore: closing a connection after an unreadable message: %s",
                                   exc)
                    return
                reply = self.server.answer(command, connection)
                if reply is CLOSE:
                    return
                if flags & MORE_TO_COME:
                    continue
                try:
                    message = frame_op_msg(reply, next(replies), request_id)
                except (bson.errors.BSONError, TypeError, ValueError) as exc:
                    logger.exception("runstore: an answer to %s could not be encoded", next(iter(command)))
                    message = frame_op_msg(CommandFailed(1, f"the answer could not be encoded: {exc}")
                                           .reply(), next(replies), request_id)
                try:
                    sock.sendall(message)
                except OSError:  # the client went away: nothing to answer
                    return


def serve(host: str, port: int, faults: bool, out: IO[str]) -> None:
    """Serve the store until SIGINT or SIGTERM; print ``listening on mongodb://host:port/`` first."""
    server = WireServer(host, port, faults)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1},
                              name="runstore", daemon=True)
    thread.start()
    try:
        out.write(f"listening on {server.url}\n")
        out.write("runstore: the strict embedded store, in this process's memory: for tests and local "
                  "multi-process runs, not for data anyone keeps"
                  + (" (fail points on: configureFailPoint)" if faults else "") + "\n")
        out.flush()
        stop.wait()
    finally:
        server.shutdown()
        server.close_connections()
        server.server_close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
