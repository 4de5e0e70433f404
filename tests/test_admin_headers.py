"""Headers every admin API answer carries, or does not."""

from __future__ import annotations

from test_admin_helpers import Api


async def test_no_versions_in_the_server_header(api: Api) -> None:
    for path, auth in (("/healthz", False), (api.path("/audit"), True), ("/nowhere", False)):
        response = await api.call("GET", path, auth=auth)
        assert response.headers.get("Server") == "gatekeeper", (path, response.headers)
