"""The published OpenAPI document and the server agree on which inputs are valid: for each
value, the document's schema (with its formats) and the running server give the same verdict."""

from __future__ import annotations

import re
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from test_admin_helpers import LOGO, Api, fields_of, problem

from admin_api.openapi import build_document

_DOC = build_document()


def _accepts(schema: dict[str, Any], instance: Any) -> bool:
    """The document's verdict, formats included (none of these cases ends in a newline, where
    Python's `$` and the ECMA-262 `$` of JSON Schema differ)."""
    check = Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    return check.is_valid(instance)


def _parameter(path: str, name: str) -> dict[str, Any]:
    params = _DOC["paths"][path]["get"]["parameters"]
    schema: dict[str, Any] = next(p["schema"] for p in params if p["name"] == name)
    return schema


_GOOD_URLS = [
    "https://cdn.example.com/logo.png",
    "http://10.0.0.1:8080/a?b=c#d",
    "HTTPS://[::1]/x.png",
    "https://a",
    "https://a.b/~x/%20y.png",
]
_BAD_URLS = [
    "http://",
    "http://[",
    "http://:80/x",
    "https://user:pw@host/x",
    "https://a b/x",
    "ftp://x/y.png",
    "javascript:alert(1)",
    "https://a/\u00e9.png",
    "https://a:123456/",
    "http://a\tb",
    "https://a/" + "x" * 2048,
    " https://a",
]


@pytest.mark.parametrize(
    ("url", "valid"), [(u, True) for u in _GOOD_URLS] + [(u, False) for u in _BAD_URLS]
)
async def test_logo_url(api: Api, url: str, valid: bool) -> None:
    body = {"type": "CrewCheck", "settings": {"logoUrl": url}}
    assert _accepts(_DOC["components"]["schemas"]["CreateDevice"], body) is valid
    response = await api.call("POST", api.path("/devices"), json=body)
    if valid:
        assert response.status == 201, await response.text()
    else:
        assert fields_of(await problem(response, 422)) == {"settings.logoUrl"}


_GOOD_TIMES = [
    "2999-01-01T00:00:00Z",
    "2999-01-01t00:00:00.123456789z",
    "2999-06-30T23:59:59+05:30",
    "9998-12-31T23:59:59-23:59",
    None,
]
_BAD_TIMES = [
    "2999-01-01T00:00:00",
    "2999-01-01",
    "2999-01-01 00:00:00Z",
    "29990101T000000Z",
    "2999-02-30T00:00:00Z",
    "2999-01-01T24:00:00Z",
    "2999-01-01T00:00:60Z",
    "0000-01-01T00:00:00Z",
    "2999-01-01T00:00:00+24:00",
    "9999-12-31T23:59:59-23:59",
    "2999-1-01T00:00:00Z",
    "tomorrow",
    "2999-01-01T00:00:00.Z",
]


@pytest.mark.parametrize(
    ("value", "valid"), [(v, True) for v in _GOOD_TIMES] + [(v, False) for v in _BAD_TIMES]
)
async def test_token_expiry(api: Api, value: str | None, valid: bool) -> None:
    body = {"name": "t", "expiresAt": value}
    assert _accepts(_DOC["components"]["schemas"]["CreateToken"], body) is valid
    response = await api.call("POST", api.path("/tokens"), json=body)
    if valid:
        assert response.status == 201, await response.text()
    else:
        assert fields_of(await problem(response, 422)) == {"expiresAt"}


@pytest.mark.parametrize("route", ["/devices", "/audit", "/devices/c/history"])
async def test_cursor(api: Api, route: str) -> None:
    """Only a cursor the server issued works; every value the schema refuses is a 400 (a value
    of the right form that the server never issued is a 400 too, as the schema says)."""
    await api.create_device("c")
    for name in ("a", "b"):
        await api.create_device(name)  # three devices, three audit records
    await api.call("PUT", api.path("/devices/c"), json={"name": "renamed"})
    schema = _parameter(
        api.path(route).replace(api.tenant, "{tenantId}").replace("/c/", "/{deviceId}/"), "cursor"
    )
    first = await api.call("GET", api.path(route) + "?limit=1")
    link = first.headers.get("Link", "")
    issued = re.search(r"cursor=([^&>]+)", link)
    if issued is not None:  # (a device the edge never saw has no history, so no next page)
        assert _accepts(schema, issued.group(1))
        assert (await api.call("GET", api.path(route) + f"?cursor={issued.group(1)}")).status == 200
    for bad in ("!!", "a%20b", "", "x" * 1025, "abc=", "a.b", "%C3%A9"):
        raw = bad.replace("%20", " ").replace("%C3%A9", "\u00e9")
        assert not _accepts(schema, raw), bad
        body = await problem(await api.call("GET", api.path(route) + f"?cursor={bad}"), 400)
        assert fields_of(body) == {"query.cursor"}, bad


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "CrewCheck", "settings": {"logoUrl": "https://a/\n"}}, "settings.logoUrl"),
        ({"type": "CrewCheck", "settings": {"logoUrl": LOGO}, "deviceId": "id\n"}, "deviceId"),
    ],
)
async def test_a_pattern_ends_at_the_end_of_the_string(
    api: Api, body: dict[str, Any], field: str
) -> None:
    """JSON Schema patterns are ECMA-262: `$` does not match before a final newline, as
    Python's does. A device id "id\\n" used to be stored and then never found by its path."""
    assert fields_of(
        await problem(await api.call("POST", api.path("/devices"), json=body), 422)
    ) == {field}
