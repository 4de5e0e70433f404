"""Shared pieces of the console tests (no tests here): a browser-like client of the console of a
running admin app (cookies, forms with their CSRF token, no redirects followed)."""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

import aiohttp
from test_admin_helpers import Api

__all__ = ["Console", "csrf_of"]

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    found = _CSRF.search(html)
    assert found is not None, "the page has no form with a CSRF token"
    return found.group(1)


class Console:
    """The console as a browser uses it, signed in with one of ``api``'s tokens."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.csrf = ""

    def url(self, suffix: str = "", tenant: str | None = None) -> str:
        return f"/console/{quote(tenant or self.api.tenant, safe='')}{suffix}"

    def device_url(self, device_id: str, suffix: str = "") -> str:
        return self.url(f"/devices/{quote(device_id, safe='')}{suffix}")

    async def sign_in(self, token: str | None = None, **token_args: Any) -> aiohttp.ClientResponse:
        response = await self.api.client.post(
            "/console/sign-in",
            data={"token": token or self.api.token(**token_args)},
            allow_redirects=False,
        )
        await response.read()
        if response.status == 303:
            self.csrf = csrf_of(await self.text(response.headers["Location"]))
        return response

    async def get(self, path: str) -> aiohttp.ClientResponse:
        response = await self.api.client.get(path, allow_redirects=False)
        await response.read()
        return response

    async def text(self, path: str, status: int = 200) -> str:
        response = await self.get(path)
        assert response.status == status, (response.status, await response.text())
        return await response.text()

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, csrf: str | None = None, **kw: Any
    ) -> aiohttp.ClientResponse:
        form = {"csrf": self.csrf if csrf is None else csrf, **(data or {})}
        response = await self.api.client.post(path, data=form, allow_redirects=False, **kw)
        await response.read()
        return response

    async def submit(self, path: str, data: dict[str, str] | None = None) -> str:
        """Post a form, follow its 303 and return the page it leads to."""
        response = await self.post(path, data)
        assert response.status == 303, (response.status, await response.text())
        return await self.text(response.headers["Location"])
