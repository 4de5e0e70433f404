"""Pagination links: ``Link: <…>; rel="next"`` carrying the request's query with a new cursor."""

from __future__ import annotations

from aiohttp import web

__all__ = ["next_link"]


def next_link(request: web.Request, cursor: str) -> str:
    """The ``Link`` header value for the page after this one (an absolute URL)."""
    query = {k: v for k, v in request.query.items() if k != "cursor"}
    query["cursor"] = cursor
    return f'<{request.url.with_query(query)}>; rel="next"'
