"""What the edge answers by itself, and the outcome counters it bumps doing so.

Denials are pre-encoded (status line, then the Date, then the rest): the hot path for a blocked
device is a set look-up and one write. Problem documents for every other refusal are built on
demand (they are rare). Counters are :class:`gatekeeper.edge.metrics.HotCounter` children bound
once, so a request pays an integer increment.
"""

from __future__ import annotations

from gatekeeper.edge import metrics
from gatekeeper.edge.http.request import Request, simple_response
from gatekeeper.edge.http.server import ClientConnection
from gatekeeper.problem import PROBLEM_CONTENT_TYPE, problem_body

__all__ = [
    "BLOCKED_RESPONSES",
    "COUNT_BLOCKED",
    "COUNT_DISABLED",
    "COUNT_FORWARDED",
    "COUNT_INVALID",
    "COUNT_RATE_LIMITED",
    "COUNT_SHADOW_BLOCKED",
    "COUNT_TOO_LARGE",
    "COUNT_UNAUTHORIZED",
    "COUNT_UNAVAILABLE",
    "COUNT_UPSTREAM_ERROR",
    "COUNT_UPSTREAM_TIMEOUT",
    "DENIAL_STATUS_LINE",
    "DISABLED_RESPONSES",
    "REQUEST_DURATION",
    "UPSTREAM_CODE_CLASSES",
    "UPSTREAM_DURATION",
    "Outcome",
    "body_too_large",
    "problem",
    "rate_limited",
    "unauthorized",
    "unavailable",
]


class Outcome:
    """One outcome of gatekeeper_requests_total: counted (a plain integer, see
    :class:`gatekeeper.edge.metrics.HotCounter`) and written on the request for the access log."""

    __slots__ = ("_counter", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._counter = metrics.HotCounter(metrics.REQUESTS.labels(name))

    def hit(self, request: Request) -> None:
        self._counter.count += 1
        request.outcome = self.name


COUNT_FORWARDED = Outcome("forwarded")
COUNT_BLOCKED = Outcome("blocked")
COUNT_DISABLED = Outcome("disabled")
COUNT_UNAUTHORIZED = Outcome("unauthorized")
COUNT_INVALID = Outcome("invalid")
COUNT_UPSTREAM_ERROR = Outcome("upstream_error")
COUNT_UPSTREAM_TIMEOUT = Outcome("upstream_timeout")
COUNT_UNAVAILABLE = Outcome("unavailable")
COUNT_TOO_LARGE = Outcome("too_large")
COUNT_RATE_LIMITED = Outcome("rate_limited")
# Forwarded, but the device is blocked in shadow mode: counted instead of "forwarded" (one
# outcome per request), when the upstream answers (gatekeeper.edge.relay).
COUNT_SHADOW_BLOCKED = Outcome("shadow_blocked")
# Indexed by the status's first digit less one: 1xx to 5xx.
UPSTREAM_CODE_CLASSES = [
    metrics.HotCounter(metrics.UPSTREAM_RESPONSES.labels(c)) for c in metrics.CODE_CLASSES
]
REQUEST_DURATION = metrics.HotHistogram(metrics.REQUEST_DURATION)
UPSTREAM_DURATION = metrics.HotHistogram(metrics.UPSTREAM_DURATION)
_PROBLEM = PROBLEM_CONTENT_TYPE.encode()
_RATE_LIMITED_BODY = problem_body(
    429, "Too many requests", "This device sent more requests than its rate limit allows."
)


def problem(
    conn: ClientConnection,
    request: Request,
    status: int,
    title: str,
    detail: str,
    extra: bytes = b"",
    *,
    close: bool = False,
) -> None:
    request.status = status
    conn.write(
        simple_response(
            status,
            title,
            problem_body(status, title, detail),
            _PROBLEM,
            extra,
            close=close or not request.keep_alive,
            date=conn.date_header,
        )
    )
    if close:
        request.keep_alive = False


def body_too_large(conn: ClientConnection, request: Request, limit: int) -> None:
    """413, by its declared length or by what arrived; the connection closes (the rest of the
    body is never read)."""
    COUNT_TOO_LARGE.hit(request)
    problem(
        conn,
        request,
        413,
        "Request body too large",
        f"The body limit is {limit} bytes.",
        close=True,
    )


def unauthorized(conn: ClientConnection, request: Request, detail: str) -> None:
    """401 with the challenge (enforce mode)."""
    COUNT_UNAUTHORIZED.hit(request)
    problem(conn, request, 401, "Unauthorized", detail, b"WWW-Authenticate: Bearer\r\n")


def rate_limited(conn: ClientConnection, request: Request, retry_after: int) -> None:
    """429 for a device over its rate limit; ``retry_after`` is whole seconds until a token is
    back (gatekeeper.edge.ratelimit). The body is encoded once: a device that keeps hammering
    makes this the path it runs most."""
    COUNT_RATE_LIMITED.hit(request)
    request.status = 429
    conn.write(
        simple_response(
            429,
            "Too Many Requests",
            _RATE_LIMITED_BODY,
            _PROBLEM,
            b"Retry-After: %d\r\n" % retry_after,
            close=not request.keep_alive,
            date=conn.date_header,
        )
    )


def unavailable(conn: ClientConnection, request: Request, detail: str) -> None:
    """503 for what the edge cannot decide yet (no mirror loaded, keys unreachable)."""
    COUNT_UNAVAILABLE.hit(request)
    problem(conn, request, 503, "Service unavailable", detail, b"Retry-After: 1\r\n")


# Denials are pre-encoded (status line, then the Date, then the rest): the hot path for a
# blocked device is a set look-up and one write. Keyed by keep-alive.
DENIAL_STATUS_LINE = b"HTTP/1.1 403 Forbidden\r\n"


def _denial(title: str, slug: str, keep_alive: bool) -> bytes:
    whole = simple_response(
        403,
        "Forbidden",
        problem_body(403, title, f"This device is {title.split()[1]}.", type_=slug),
        _PROBLEM,
        close=not keep_alive,
    )
    return whole.removeprefix(DENIAL_STATUS_LINE)


BLOCKED_RESPONSES = {ka: _denial("Device blocked", "device-blocked", ka) for ka in (True, False)}
DISABLED_RESPONSES = {ka: _denial("Device disabled", "device-disabled", ka) for ka in (True, False)}
