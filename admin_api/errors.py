"""Admin API errors: one exception that carries an RFC 9457 problem, and the middleware that
turns it (and every other failure) into ``application/problem+json``.

Handlers raise :class:`Problem`; they never build error responses themselves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Final, TypedDict

import asyncpg
from aiohttp import web
from redis.exceptions import ClusterDownError, MasterDownError, RedisClusterException
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from gatekeeper.problem import PROBLEM_CONTENT_TYPE, problem_body


def problem_response(
    status: int,
    title: str,
    detail: str | None = None,
    *,
    type_: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    """A problem document (gatekeeper.problem) as an aiohttp response."""
    return web.Response(
        status=status,
        body=problem_body(status, title, detail, type_=type_, **extra),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


__all__ = [
    "STORE_UNAVAILABLE",
    "FieldError",
    "Problem",
    "bad_request",
    "conflict",
    "not_found",
    "problem_middleware",
    "problem_response",
    "unprocessable",
]

_log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# A store the request needs is down, hung or overloaded: not a bug, and retrying later helps.
# TimeoutError covers asyncpg's statement, connect and pool-acquire timeouts (asyncio's
# TimeoutError is the builtin one); OSError a refused or reset connection; the asyncpg classes
# a server that is shutting down, starting, out of connection slots or cancelled the statement.
STORE_UNAVAILABLE: Final = (
    TimeoutError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
    asyncpg.exceptions.InsufficientResourcesError,
    RedisConnectionError,
    RedisTimeoutError,
    # A cluster with a slot uncovered or none of its nodes answering; a primary failing over.
    ClusterDownError,
    MasterDownError,
    RedisClusterException,
)
# Long enough for a restarting Postgres, short enough that a script retrying is not idle long.
_RETRY_AFTER_SECONDS: Final = 5

_TITLES = {
    400: "Bad request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not found",
    405: "Method not allowed",
    406: "Not acceptable",
    409: "Conflict",
    413: "Payload too large",
    415: "Unsupported media type",
    422: "Unprocessable content",
    500: "Internal server error",
    503: "Service unavailable",
}


class FieldError(TypedDict):
    """One bad input: where it is (``settings.logoUrl``, ``query.limit``) and what is wrong."""

    field: str
    message: str


class Problem(Exception):
    """An error response. ``detail`` is shown to the client: never put secrets in it."""

    def __init__(
        self,
        status: int,
        detail: str | None = None,
        *,
        title: str | None = None,
        type_: str | None = None,
        errors: list[FieldError] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or title or _TITLES.get(status, "Error"))
        self.status = status
        self.title = title or _TITLES.get(status, "Error")
        self.detail = detail
        self.type_ = type_
        self.errors = errors
        self.headers = headers

    def response(self) -> web.Response:
        extra: dict[str, Any] = {}
        if self.errors is not None:
            extra["errors"] = self.errors
        return problem_response(
            self.status, self.title, self.detail, type_=self.type_, headers=self.headers, **extra
        )


def bad_request(detail: str, errors: list[FieldError] | None = None) -> Problem:
    return Problem(400, detail, type_="bad-request", errors=errors)


def unprocessable(errors: list[FieldError]) -> Problem:
    fields = ", ".join(e["field"] for e in errors)
    return Problem(
        422,
        f"Invalid values: {fields}",
        title="Validation failed",
        type_="validation",
        errors=errors,
    )


def not_found(detail: str) -> Problem:
    return Problem(404, detail, type_="not-found")


def conflict(detail: str) -> Problem:
    return Problem(409, detail, type_="conflict")


def _from_http_exception(exc: web.HTTPException) -> web.Response:
    headers = {k: v for k, v in exc.headers.items() if k.lower() in ("allow", "retry-after")}
    detail = exc.reason if exc.status != 413 else "The request body is too large"
    return Problem(exc.status, detail, headers=headers or None).response()


def _route(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(unmatched)"


@web.middleware
async def problem_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn :class:`Problem`, aiohttp's HTTP errors and anything unexpected into problems.

    The catch-all answers 500 without any detail of the failure; the traceback goes to the log.
    """
    try:
        return await handler(request)
    except Problem as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _from_http_exception(exc)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except STORE_UNAVAILABLE as exc:
        _log.warning(
            "store unavailable in %s %s: %s", request.method, _route(request), type(exc).__name__
        )
        return Problem(
            503,
            "A data store is unavailable; retry later",
            type_="store-unavailable",
            headers={"Retry-After": str(_RETRY_AFTER_SECONDS)},
        ).response()
    except Exception:
        _log.exception("unexpected error in %s %s", request.method, _route(request))
        return Problem(500, "An unexpected error occurred", type_="internal").response()
