"""A real SMTP server on 127.0.0.1 for the e-mail demo and tests: aiosmtpd in a thread, a mailbox
in memory.

It deduplicates by Message-ID as a receiving MTA does: a second message with a Message-ID the
mailbox holds is accepted (250) and dropped, so a sender that ran again after a crash delivers once;
the mailbox counts every message it was handed, dropped or not. It can refuse a recipient with a
given reply (a 4xx to try later, a 5xx for good), and stop for a few seconds and start again on the
same port (a connection refused meanwhile).
"""
from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller


@dataclass(frozen=True)
class Held:
    """One message in the mailbox."""

    message_id: str
    mail_from: str
    rcpt_tos: tuple[str, ...]
    message: EmailMessage
    #: When it arrived (``time.time()``).
    at: float


class Mailbox:
    """The messages the server holds, once per Message-ID; safe to use from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, Held] = {}
        self._handed: dict[str, int] = {}
        self._refusals: dict[str, str] = {}

    def take(self, mail_from: str, rcpt_tos: list[str], content: bytes) -> str:
        """Hold a message unless its Message-ID is held already; return the SMTP reply."""
        message = message_from_bytes(content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        mid = str(message.get("Message-ID", "")).strip()
        if not mid:
            return "550 5.6.0 a message needs a Message-ID header"
        with self._lock:
            self._handed[mid] = self._handed.get(mid, 0) + 1
            if mid in self._held:
                return "250 2.0.0 duplicate Message-ID: dropped"
            self._held[mid] = Held(mid, mail_from, tuple(rcpt_tos), message, time.time())
        return "250 2.0.0 OK: queued"

    def refusal(self, address: str) -> str | None:
        with self._lock:
            return self._refusals.get(address.lower())

    def refuse(self, address: str, reply: str | None) -> None:
        """Answer ``reply`` (such as ``"451 4.3.0 try later"``) to RCPT TO ``address``; ``None``: stop."""
        with self._lock:
            if reply is None:
                self._refusals.pop(address.lower(), None)
            else:
                self._refusals[address.lower()] = reply

    def get(self, message_id: str) -> Held | None:
        with self._lock:
            return self._held.get(message_id)

    def handed(self, message_id: str) -> int:
        """How many times a message with this Message-ID was handed over (held once, the rest dropped)."""
        with self._lock:
            return self._handed.get(message_id, 0)

    def held(self) -> list[Held]:
        with self._lock:
            return list(self._held.values())

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)


class _Handler:
    """aiosmtpd's hooks, answering from the mailbox."""

    def __init__(self, mailbox: Mailbox) -> None:
        self.mailbox = mailbox

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        refusal = self.mailbox.refusal(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return self.mailbox.take(envelope.mail_from, envelope.rcpt_tos, envelope.content)


class _Controller(Controller):
    """aiosmtpd's controller, learning the port it was given when asked for port 0."""

    def _trigger_server(self) -> None:
        if self.port == 0:
            assert isinstance(self.server, asyncio.Server)
            self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


class SmtpServer:
    """An SMTP server on 127.0.0.1 with a :class:`Mailbox`."""

    def __init__(self, port: int = 0) -> None:
        self.mailbox = Mailbox()
        self.port = port
        self._controller: _Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def start(self) -> str:
        """Serve on 127.0.0.1 (``port`` 0 the first time: any free port; later: the same one); return
        the ``smtp://`` URL."""
        if self._controller is not None:
            raise RuntimeError("the SMTP server is running already")
        controller = _Controller(_Handler(self.mailbox), hostname="127.0.0.1", port=self.port)
        controller.start()
        self._controller, self.port = controller, controller.port
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket (connections are refused); the mailbox stays readable."""
        if self._controller is None:
            return
        self._controller.stop()
        self._controller = None

    def down_for(self, seconds: float) -> None:
        """Stop, stay down ``seconds``, then start again on the same port (blocks meanwhile)."""
        self.stop()
        time.sleep(seconds)
        self.start()

    @property
    def running(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
