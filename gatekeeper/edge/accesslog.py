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
import re
import time

from gatekeeper.edge.http.request import Request
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.logs import current_format, current_role, json_time, text_time

__all__ = ["AccessLog"]

_LOGGER = "gatekeeper.access"
_MAX_WAITING = 64
_FLUSH_AFTER = 0.2
_PLAIN = re.compile(r'[^\s"=\\]+')


def _text_value(value: str) -> str:
    """As is when it is one printable word, else JSON-quoted: a client cannot start a new line
    or forge a field with what it sends."""
    if _PLAIN.fullmatch(value) and value.isprintable():
        return value
    return json.dumps(value)


class AccessLog:
    """Formats and writes access log lines for one proxy process (to file descriptor ``fd``)."""

    def __init__(self, fd: int = 1) -> None:
        self._fd = fd
        self._json = current_format() == "json"
        self._role = current_role()
        self._pid = os.getpid()
        self._tag = self._role if self._role == "gatekeeper" else f"{self._role}[{self._pid}]"
        self._waiting: list[bytes] = []
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1  # the whole second self._stamp was formatted for
        self._stamp = ""
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
        """What one line says, by name (the JSON keys; the text format's ``key=value`` pairs,
        without those that are None)."""
        request_id = request.request_id or request.lookup.get(b"x-request-id", b"")
        body = request.body
        upstream_seconds = request.upstream_seconds
        return {
            "request_id": request_id.decode("latin-1") or None,
            "client": conn.client_ip or None,
            "method": request.method,
            "path": request.target.partition("?")[0],
            "status": request.status or None,
            "outcome": request.outcome or "aborted",
            "upstream_status": request.upstream_status or None,
            "duration_ms": round(seconds * 1000, 3),
            "upstream_ms": round(upstream_seconds * 1000, 3) if upstream_seconds >= 0 else None,
            "bytes_in": body.received if body is not None else 0,
            "bytes_out": conn.bytes_sent - request.sent_mark,
            "tenant": request.tenant or None,
            "device_id": request.device or None,
        }

    def _time(self, json_form: bool) -> str:
        # strftime once a second, not once a line: it is most of a line's cost otherwise.
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            # Both forms end in three digits of milliseconds and a separator ("000Z" or ",000").
            stamp = json_time(second)[:-5] if json_form else text_time(second)[:-4]
            self._stamp = stamp
        millis = int(now * 1000) % 1000
        return f"{self._stamp}.{millis:03d}Z" if json_form else f"{self._stamp},{millis:03d}"

    def _as_json(self, fields: dict[str, object]) -> str:
        line: dict[str, object] = {
            "time": self._time(True),
            "level": "INFO",
            "logger": _LOGGER,
            "message": f"{fields['method']} {fields['path']} {fields['status'] or '-'}",
            "process": self._role,
            "pid": self._pid,
        }
        line.update(fields)
        return json.dumps(line, ensure_ascii=False)

    def _as_text(self, fields: dict[str, object]) -> str:
        words = []
        for name, value in fields.items():
            if value is None:
                continue
            words.append(f"{name}={_text_value(value) if type(value) is str else value}")
        return f"{self._time(False)} {self._tag} INFO {_LOGGER}: {' '.join(words)}"

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
