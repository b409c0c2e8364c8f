"""The :class:`Client`: one method per API call, each returning the API's JSON as a ``dict``."""
from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import requests

from detflow_client.errors import (
    ApiError,
    ClientError,
    ConnectionFailed,
    InvalidRequest,
    Timeout,
    from_response,
)
from detflow_client.statuses import TERMINAL

__all__ = ["Client"]

#: Stands for an argument not given (``None`` is a JSON value the caller may mean).
_UNSET: Any = object()


class Client:
    """A client of one detflow API, signed in with one token.

    ``base_url`` is the API's root, such as ``http://127.0.0.1:8000/api/v1``; ``token`` an API token
    (``manage.py apiuser NAME --role operator`` prints one), sent as ``Authorization: Token <token>``;
    ``timeout`` the seconds each HTTP request may take. A client keeps its connections open: close it,
    or use it in a ``with`` block. One client is not meant to be shared between threads.
    """

    def __init__(self, base_url: str, token: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._session = requests.Session()
        self._session.headers.update({
            "Authorization": f"Token {token}",
            "Accept": "application/json",
            "User-Agent": "detflow-client",
        })

    def __enter__(self) -> Client:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Close the client's connections."""
        self._session.close()

    # Executions.

    def start(self, workflow: str, input: Any = None, idempotency_key: str | None = None,
              version: int | None = None) -> dict[str, Any]:
        """Start ``workflow`` (its latest version, or ``version``) on ``input``; return the execution.

        With ``idempotency_key`` the same call again returns the same execution (scoped to the
        workflow), so a start that failed with :class:`ConnectionFailed` is safe to send again; the
        same key with another input or version raises :class:`Conflict` (``idempotency_conflict``).
        """
        body: dict[str, Any] = {"workflow": workflow, "input": input}
        if version is not None:
            body["version"] = version
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        return self._call("POST", "executions/", json=body, headers=headers)

    def get(self, execution_id: str) -> dict[str, Any]:
        """Return the execution: its status, input, steps (with their attempts) and signals."""
        return self._call("GET", f"executions/{_segment(execution_id)}/")

    def wait(self, execution_id: str, timeout: float, poll: float = 0.5) -> dict[str, Any]:
        """Read the execution every ``poll`` seconds until its status is terminal; return it.

        Terminal: ``SUCCEEDED``, ``FAILED``, ``CANCELLED``, ``COMPENSATED`` or ``COMPENSATION_FAILED``
        (:data:`detflow_client.TERMINAL`). Raise :class:`Timeout`, naming the last status seen,
        when ``timeout`` seconds pass first. An error reading it (a 503 while MongoDB is away, say)
        is raised as it comes; call ``wait`` again to go on waiting.
        """
        if poll <= 0:
            raise ValueError(f"poll must be more than 0 seconds, not {poll!r}")
        started = time.monotonic()
        deadline = started + timeout
        while True:
            execution = self.get(execution_id)
            if execution["status"] in TERMINAL:
                return execution
            left = deadline - time.monotonic()
            if left <= 0:
                raise Timeout(execution_id, execution["status"], time.monotonic() - started, execution)
            time.sleep(min(poll, left))

    def events(self, execution_id: str, after: int = 0, page_size: int | None = None) -> list[dict[str, Any]]:
        """Return the execution's history after the event ``after`` (a ``seq``), oldest first,
        reading every page (``page_size`` events a page: 1 to 1000; the server's default, 100)."""
        return list(self.iter_events(execution_id, after, page_size))

    def iter_events(self, execution_id: str, after: int = 0,
                    page_size: int | None = None) -> Iterator[dict[str, Any]]:
        """Yield the execution's history as :meth:`events` returns it, one page read at a time."""
        path = f"executions/{_segment(execution_id)}/events/"
        params: dict[str, str] = {"after": str(after)}
        if page_size is not None:
            params["limit"] = str(page_size)
        while True:
            page = self._call("GET", path, params=params)
            yield from page["results"]
            if not page.get("next"):
                return
            # The next page's parameters, asked of this client's base URL (the link names the host
            # the server saw, which a proxy may have rewritten).
            following = dict(parse_qsl(urlsplit(page["next"]).query))
            if not page["results"] or int(following.get("after", -1)) <= int(params["after"]):
                raise ClientError(f"the events page after {params['after']} links no later page: "
                                  f"{page['next']!r}")
            params = following

    # Operator actions: each answers {execution_id, action, dry_run, changes, event, execution}.

    def cancel(self, execution_id: str, reason: str, dry_run: bool = False) -> dict[str, Any]:
        """Cancel the execution: no further step starts (a running attempt may finish).

        :class:`Conflict` unless it is ``PENDING`` or ``RUNNING``."""
        return self._act(execution_id, "cancel", {"reason": reason, "dry_run": dry_run})

    def pause(self, execution_id: str, reason: str, dry_run: bool = False) -> dict[str, Any]:
        """Hold the execution: no further step, sleep, wait or compensation starts until :meth:`resume`.

        :class:`Conflict` when it is paused already or has ended."""
        return self._act(execution_id, "pause", {"reason": reason, "dry_run": dry_run})

    def resume(self, execution_id: str, reason: str, dry_run: bool = False) -> dict[str, Any]:
        """Lift the execution's own hold: it goes on from its next step. :class:`Conflict` if not paused."""
        return self._act(execution_id, "resume", {"reason": reason, "dry_run": dry_run})

    def retry(self, execution_id: str, reason: str, input: Any = _UNSET,
              dry_run: bool = False) -> dict[str, Any]:
        """Run the failed step again with a new attempt budget (on ``COMPENSATION_FAILED``, the
        failed compensation).

        ``input``, when given (``None`` included: it is JSON null), is the failed step's new input.
        :class:`Conflict` unless the execution is ``FAILED`` or ``COMPENSATION_FAILED``.
        """
        body: dict[str, Any] = {"reason": reason, "dry_run": dry_run}
        if input is not _UNSET:
            body["input"] = input
        return self._act(execution_id, "retry", body)

    def skip(self, execution_id: str, reason: str, output: Any = None, step: str | None = None,
             dry_run: bool = False) -> dict[str, Any]:
        """Skip the failed step, ``output`` standing in for its result (``step``, if given, is
        checked to be the failed one). :class:`Conflict` unless ``FAILED`` or ``COMPENSATION_FAILED``."""
        body: dict[str, Any] = {"reason": reason, "dry_run": dry_run, "output": output}
        if step is not None:
            body["step"] = step
        return self._act(execution_id, "skip", body)

    def signal(self, execution_id: str, name: str, payload: Any = None, reason: str = "",
               idempotency_key: str | None = None) -> dict[str, Any]:
        """Send the signal ``name``; the wait step for it takes ``payload`` as its output.

        Return ``{execution_id, name, signal_index, created, consumed_by, execution}``. The same
        ``idempotency_key`` again returns the first signal with ``created`` false and stores nothing.
        :class:`BadRequest` naming ``name`` when no step waits for it; :class:`Conflict` for an
        execution that has ended.
        """
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key is not None else {}
        return self._call("POST", f"executions/{_segment(execution_id)}/signals/{_segment(name)}/",
                          json={"payload": payload, "reason": reason}, headers=headers)

    # The wire.

    def _act(self, execution_id: str, action: str, body: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", f"executions/{_segment(execution_id)}/{action}/", json=body)

    def _call(self, method: str, path: str, *, json: Any = None, params: dict[str, str] | None = None,
              headers: dict[str, str] | None = None) -> dict[str, Any]:
        """Send one request; return the answer's JSON object, or raise what the answer means."""
        url = f"{self.base_url}/{path}"
        try:
            response = self._session.request(method, url, json=json, params=params, headers=headers,
                                             timeout=self.timeout, allow_redirects=False)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL) as exc:
            raise InvalidRequest(f"{method} {url}: cannot be sent ({exc})") from exc
        except requests.Timeout as exc:
            raise ConnectionFailed(f"{method} {url}: no answer within {self.timeout}s ({exc})") from exc
        except requests.RequestException as exc:
            raise ConnectionFailed(f"{method} {url}: cannot reach the server ({exc})") from exc
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.status_code >= 300:
            raise from_response(response.status_code, body, response.text, response.headers)
        if not isinstance(body, dict):
            raise ApiError(response.status_code, "invalid_response",
                           f"{method} {url} answered {response.status_code} without a JSON object: "
                           f"{response.text.strip()[:200]!r}")
        return body


def _segment(value: str) -> str:
    """Return ``value`` quoted as one path segment (a ``/`` or ``?`` in an id cannot leave it)."""
    return quote(value, safe="")
