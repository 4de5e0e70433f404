"""How every command and process of the gatekeeper writes its log: ``text`` for people, ``json``
for Loki or ELK (one object per line), chosen by the ``log_format`` setting.

A JSON line holds ``time`` (RFC 3339, UTC, milliseconds), ``level``, ``logger``, ``message``,
``process`` (the role: ``gatekeeper``, ``worker``, ``recorder``), ``pid``, and ``exception`` when
there is one. Nothing here may log a secret: callers mask URLs (:func:`mask_url`) themselves.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from gatekeeper.settings import LogFormat

__all__ = [
    "JsonFormatter",
    "Throttled",
    "configure_logging",
    "current_format",
    "current_role",
    "json_time",
    "text_time",
]

# What configure_logging chose for this process, for lines written without the logging module
# (the proxy's access log) that must look like every other line.
_current: tuple[LogFormat, str] = ("text", "gatekeeper")


def current_format() -> LogFormat:
    return _current[0]


def current_role() -> str:
    return _current[1]


def json_time(created: float) -> str:
    """RFC 3339, UTC, milliseconds: ``2026-11-22T05:00:00.123Z``."""
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created * 1000) % 1000:03d}Z"


def text_time(created: float) -> str:
    """The text format's local time, as logging's ``%(asctime)s``: ``2026-11-22 05:00:00,123``."""
    seconds = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
    return f"{seconds},{int(created * 1000) % 1000:03d}"


class Throttled:
    """Warnings about a condition that can repeat on every request (an upstream that refuses
    connections): the first is logged, then at most one per ``interval`` seconds for each key,
    saying how many were held back meanwhile."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, key: str, message: str, *args: Any) -> None:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held[key] = self._held.get(key, 0) + 1
            return
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held and last is not None:
            message += f" ({held} more like this in the last {now - last:.0f} s)"
        self._logger.warning(message, *args)


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": json_time(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self._role,
            "pid": record.process,
        }
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(level: str, fmt: LogFormat, role: str) -> None:
    """The root logger of this process: ``level``, ``fmt``, and ``role`` in every line."""
    global _current
    _current = (fmt, role)
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(role))
    else:
        tag = role if role == "gatekeeper" else f"{role}[%(process)d]"
        handler.setFormatter(
            logging.Formatter(f"%(asctime)s {tag} %(levelname)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
