"""The admin API's HTTP layer: :class:`AdminRunner`, an aiohttp ``AppRunner`` whose connections
answer unparseable requests with problem documents and whose access log holds no secrets.

aiohttp answers a request it cannot parse (a header line over the limit, a broken request line)
before any handler or middleware runs, as ``text/plain`` quoting up to 100 bytes of the offending
line, a bearer token say, and logs that same text; it offers no hook for it (aiohttp#3287). So
the runner's connections are a :class:`web.RequestHandler` subclass with its own
:meth:`~web.RequestHandler.handle_error`.
"""

from __future__ import annotations

import logging
from typing import Any, Final

from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from admin_api.errors import problem_response

__all__ = ["MAX_FIELD_BYTES", "AdminAccessLogger", "AdminRunner", "safe_target"]

_log = logging.getLogger(__name__)

# One header line (name and value). Large enough for the longest bearer token the verifier
# accepts (16 KiB), so such a token gets the API's own 401, not a parser error.
MAX_FIELD_BYTES: Final = 16 * 1024 + 256

# Query parameters of the API whose values are logged; others (and unknown names, which could
# be a secret themselves: `?eyJhbGciOi…`) are masked. See docs/decisions.md.
_LOGGED_NAMES: Final = frozenset({"q", "blocked", "limit", "cursor"})
_LOGGED_VALUES: Final = frozenset({"blocked", "limit"})
_MASK: Final = "***"


def safe_target(request: web.BaseRequest) -> str:
    """The request's path and a query string that can go to a log: values only of ``blocked``
    and ``limit``; the other names of the API with their values masked; any other name masked."""
    try:
        path, query = request.rel_url.raw_path, request.rel_url.query
    except ValueError:  # a target even yarl cannot split
        return _MASK
    parts = []
    for name, value in query.items():
        if name not in _LOGGED_NAMES:
            parts.append(f"{_MASK}={_MASK}")
        else:
            parts.append(f"{name}={value if name in _LOGGED_VALUES else _MASK}")
    return path + ("?" + "&".join(parts) if parts else "")


class AdminAccessLogger(AbstractAccessLogger):
    """One line per request: client, method, path with :func:`safe_target`'s query, status,
    size, seconds. No Referer (it may carry another site's tokens), no query values."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info(
            '%s "%s %s HTTP/%d.%d" %d %d %.3f "%s"',
            request.remote,
            request.method,
            safe_target(request),
            request.version.major,
            request.version.minor,
            response.status,
            response.body_length,
            time,
            request.headers.get("User-Agent", "-")[:200],
        )

    @property
    def enabled(self) -> bool:
        return self.logger.isEnabledFor(logging.INFO)


def _describe(status: int, exc: BaseException | None) -> tuple[int, str, str, str]:
    """Status, title, detail and type slug for an error found before any handler ran."""
    if isinstance(exc, LineTooLong):
        # The same exception for the request line (8,190 bytes) and a header line
        # (MAX_FIELD_BYTES); its message, which would tell them apart, quotes the input.
        return (
            431,
            "Request header fields too large",
            "The request line or a header field is too long",
            "header-too-large",
        )
    if isinstance(exc, HttpProcessingError) and 400 <= exc.code < 500:
        return exc.code, "Bad request", "The request is not valid HTTP/1.1", "bad-request"
    if 400 <= status < 500:
        return status, "Bad request", "The request could not be read", "bad-request"
    return 500, "Internal server error", "An unexpected error occurred", "internal"


class _ProblemRequestHandler(web.RequestHandler):
    """A connection of the admin API: errors outside any handler are problem documents."""

    __slots__ = ()

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """Like aiohttp's, but neither the answer nor the log quotes the request."""
        if isinstance(exc, HttpProcessingError):
            _log.info("refused a malformed request from %s: %s", request.remote, type(exc).__name__)
        else:
            _log.error("error handling a request from %s", request.remote, exc_info=exc)
        if request.writer.output_size > 0:  # as aiohttp: a response is half sent already
            raise ConnectionError("response already started; cannot send the error")
        code, title, detail, type_ = _describe(status, exc)
        response = problem_response(code, title, detail, type_=type_)
        response.force_close()  # the stream's framing cannot be trusted any more
        return response


class _ProblemServer(web.Server):
    """aiohttp's low-level server, making :class:`_ProblemRequestHandler` connections."""

    def __call__(self) -> web.RequestHandler:
        return _ProblemRequestHandler(self, loop=self._loop, **self._kwargs)


class AdminRunner(web.AppRunner):
    """``web.AppRunner`` for the admin app: problem documents for unparseable requests, and
    :class:`AdminAccessLogger` unless another access log class is given."""

    def __init__(self, app: web.Application, **kwargs: Any) -> None:
        kwargs.setdefault("access_log_class", AdminAccessLogger)
        super().__init__(app, **kwargs)

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # The app builds its Server itself (Application._make_handler) with no class hook;
        # the subclass only changes which RequestHandler each new connection gets.
        server.__class__ = _ProblemServer
        return server
