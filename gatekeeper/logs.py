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

from gatekeeper.settings import LogFormat

__all__ = ["JsonFormatter", "configure_logging"]


class JsonFormatter(logging.Formatter):
    def __init__(self, role: str) -> None:
        super().__init__()
        self._role = role

    def format(self, record: logging.LogRecord) -> str:
        seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        line = {
            "time": f"{seconds}.{int(record.msecs):03d}Z",
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
