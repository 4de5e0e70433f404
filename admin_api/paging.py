"""Pagination links: ``Link: <…>; rel="next"`` carrying the request's query with a new cursor."""

from __future__ import annotations

from aiohttp import web

__all__ = ["next_link"]


def next_link(request: web.Request, cursor: str) -> str:
    """The ``Link`` header value for the page after this one.

    A relative reference (RFC 8288 allows it), like ``Location``: behind a TLS-terminating proxy
    the scheme and host this process sees are not the ones the client used."""
    query = {k: v for k, v in request.query.items() if k != "cursor"}
    query["cursor"] = cursor
    return f'<{request.rel_url.with_query(query)}>; rel="next"'
