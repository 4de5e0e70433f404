"""``/docs``: Swagger UI on ``/openapi.json``, served by the admin API alone (no CDN), with
bearer-token auth and try-it-out."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from test_admin_helpers import Api, problem

from admin_api.openapi import build_document


class _Links(HTMLParser):
    """Every URL the page would load or link to (src and href attributes)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[tuple[str, str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href") and value is not None:
                self.urls.append((tag, value))


async def test_docs_page_loads_only_this_servers_files(api: Api) -> None:
    page = await api.call("GET", "/docs", auth=False)
    text = await page.text()
    assert page.status == 200 and page.content_type == "text/html"
    assert "http://" not in text and "https://" not in text and "//" not in text
    links = _Links()
    links.feed(text)
    scripts = [url for tag, url in links.urls if tag == "script"]
    assert scripts == ["docs/assets/swagger-ui-bundle.js", "docs/assets/explorer.js"]
    assert {url for tag, url in links.urls if tag == "link"} == {
        "docs/assets/swagger-ui.css",
        "docs/assets/favicon-32x32.png",
    }
    # Every one of them resolves, against the page's own URL, to a file this server serves.
    for _tag, url in links.urls:
        target = urljoin("/docs", url)
        assert not urlsplit(target).netloc, url
        loaded = await api.call("GET", target, auth=False)
        assert loaded.status == 200, (url, loaded.status)
    # The document Swagger UI is started on, relative to the page: /openapi.json.
    assert 'data-openapi="openapi.json"' in text
    assert urljoin("/docs", "openapi.json") == "/openapi.json"


async def test_docs_page_policy_allows_only_this_origin(api: Api) -> None:
    page = await api.call("GET", "/docs", auth=False)
    policy = dict(
        directive.strip().split(" ", 1)
        for directive in page.headers["Content-Security-Policy"].split(";")
    )
    assert policy["default-src"] == "'none'"
    assert policy["script-src"] == "'self'"  # the two script files; no inline script, no eval
    assert policy["connect-src"] == "'self'"  # try-it-out calls this API, nothing else
    assert page.headers["X-Content-Type-Options"] == "nosniff"


@pytest.mark.parametrize(
    ("name", "content_type", "start"),
    [
        ("swagger-ui-bundle.js", "text/javascript", b""),
        ("explorer.js", "text/javascript", b"// Starts Swagger UI"),
        ("swagger-ui.css", "text/css", b""),
        ("favicon-32x32.png", "image/png", b"\x89PNG\r\n"),
    ],
)
async def test_an_asset_loads_with_its_content_type(
    api: Api, name: str, content_type: str, start: bytes
) -> None:
    response = await api.call("GET", f"/docs/assets/{name}", auth=False)
    body = await response.read()
    assert response.status == 200
    assert response.content_type == content_type
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert len(body) > 100 and body.startswith(start)
    # Revalidated, not fetched again: a conditional request with the ETag is 304.
    again = await api.call(
        "GET",
        f"/docs/assets/{name}",
        auth=False,
        headers={"If-None-Match": response.headers["ETag"]},
    )
    assert again.status == 304


@pytest.mark.parametrize(
    "name", ["index.html", "swagger-ui.js", "..%2Fexplorer.py", "%2E%2E%2F%2E%2E%2Fopenapi.py"]
)
async def test_only_the_explorers_own_files_are_served(api: Api, name: str) -> None:
    await problem(await api.call("GET", f"/docs/assets/{name}", auth=False), 404)


async def test_explorer_starts_with_try_it_out_and_no_outside_validator(api: Api) -> None:
    script = await (await api.call("GET", "/docs/assets/explorer.js", auth=False)).text()
    assert "tryItOutEnabled: true," in script
    assert "validatorUrl: null," in script
    assert "persistAuthorization: false," in script
    assert "http" not in script


def test_the_document_declares_bearer_auth_for_every_admin_operation() -> None:
    doc = build_document()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["bearerAuth"]["type"] == "http"
    assert schemes["bearerAuth"]["scheme"] == "bearer"
    for path, operations in doc["paths"].items():
        for method, operation in operations.items():
            if not path.startswith("/api/"):
                assert operation["security"] == [], (method, path)
            elif path.endswith("/connect"):  # the device's own call, with its API key
                assert operation["security"] == [{"apiKey": []}], (method, path)
            else:
                ((scheme, scopes),) = operation["security"][0].items()
                assert scheme == "bearerAuth" and len(scopes) == 1, (method, path)
