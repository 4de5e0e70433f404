"""The proxy's access log: one line a request, on stdout (every other log line goes to stderr,
as nginx's and Envoy's container images split them).

Which requests are logged is the handler's call (:class:`gatekeeper.edge.handler.EdgeHandler`,
from ``access_log`` and ``access_log_sample``); this module only writes. Lines are buffered and
written together, at most 0.2 s after the first of them or once 64 are waiting, so a logged
request costs a formatted string and no system call of its own.

A line has the shape of every other log line of the process (``log_format``: text with
``key=value`` fields, or one JSON object) and never holds a secret: the path is logged without
its query string (tokens travel there), and no header but X-Request-Id is logged.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from gatekeeper.edge.http.request import Request
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.logs import current_format, current_role, json_time, text_time

__all__ = ["AccessLog"]

_LOGGER = "gatekeeper.access"
_MAX_WAITING = 64
_FLUSH_AFTER = 0.2


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def _text_value(value: str) -> str:
    """As is when it is one printable word, else JSON-quoted: a client cannot start a new line
    or forge a field with what it sends."""
    if value and value.isprintable() and not any(c in value for c in ' "=\\'):
        return value
    return json.dumps(value)


class AccessLog:
    """Formats and writes access log lines for one proxy process (to file descriptor ``fd``)."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._json = current_format() == "json"
        self._role = current_role()
        self._pid = os.getpid()
        self._waiting: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self.lost = 0  # lines that could not be written (stdout closed)

    def write(self, request: Request, conn: ClientConnection, seconds: float) -> None:
        fields = self.fields(request, conn, seconds)
        line = self._as_json(fields) if self._json else self._as_text(fields)
        self._waiting.append(line.encode("utf-8", "backslashreplace") + b"\n")
        if len(self._waiting) >= _MAX_WAITING:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(_FLUSH_AFTER, self.flush)

    @staticmethod
    def fields(request: Request, conn: ClientConnection, seconds: float) -> dict[str, object]:
        """What one line says, by name (the JSON keys)."""
        request_id = request.request_id or request.lookup.get(b"x-request-id", b"")
        body = request.body
        return {
            "request_id": request_id.decode("latin-1") or None,
            "client": conn.client_ip or None,
            "method": request.method,
            "path": request.target.partition("?")[0],
            "status": request.status or None,
            "outcome": request.outcome or "aborted",
            "upstream_status": request.upstream_status or None,
            "duration_ms": _ms(seconds),
            "upstream_ms": _ms(request.upstream_seconds) if request.upstream_seconds >= 0 else None,
            "bytes_in": body.received if body is not None else 0,
            "bytes_out": conn.bytes_sent - request.sent_mark,
            "tenant": request.tenant or None,
            "device_id": request.device or None,
        }

    def _as_json(self, fields: dict[str, object]) -> str:
        line: dict[str, object] = {
            "time": json_time(time.time()),
            "level": "INFO",
            "logger": _LOGGER,
            "message": f"{fields['method']} {fields['path']} {fields['status'] or '-'}",
            "process": self._role,
            "pid": self._pid,
        }
        line.update(fields)
        return json.dumps(line, ensure_ascii=False)

    def _as_text(self, fields: dict[str, object]) -> str:
        tag = self._role if self._role == "gatekeeper" else f"{self._role}[{self._pid}]"
        words = " ".join(
            f"{name}={_text_value(str(value))}"
            for name, value in fields.items()
            if value is not None
        )
        return f"{text_time(time.time())} {tag} INFO {_LOGGER}: {words}"

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiting:
            return
        data = b"".join(self._waiting)
        self._waiting.clear()
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            # stdout is gone (a closed pipe), or non-blocking and full: drop the lines rather
            # than stop serving or wait.
            self.lost += data.count(b"\n")
