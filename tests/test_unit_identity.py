"""gatekeeper.domain.identity without a server: the id rules (and the patterns the admin API
publishes for them), the tenant from the path, a header or the settings, and the device headers."""

from __future__ import annotations

import re

import pytest

from admin_api.operations import PARAMETERS
from admin_api.schemas import CREATE_DEVICE
from gatekeeper.domain.identity import (
    DEVICE_ID_PATTERN,
    MAX_VALUE_LEN,
    TENANT_ID_PATTERN,
    IdentityError,
    IdentityReader,
    valid_device_id,
    valid_tenant_id,
)
from gatekeeper.settings import Settings

ATTRS = {
    b"x-app-name": b"App",
    b"x-app-version": b"1.0",
    b"x-os-name": b"Android",
    b"x-os-version": b"14",
    b"x-device-manufacturer": b"Acme",
    b"x-device-model": b"X1",
}


def reader(**settings: str) -> IdentityReader:
    return IdentityReader(Settings(**settings))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("d", True),
        ("!~", True),
        ("x" * 128, True),
        ("x" * 129, False),
        ("", False),
        ("a b", False),
        ("a\tb", False),
        ("caf\u00e9", False),
        ("a\n", False),
    ],
)
def test_device_id_rule(value: str, ok: bool) -> None:
    assert valid_device_id(value) is ok


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("acme", True),
        ("a.b_c~d-0", True),
        ("t" * 64, True),
        ("t" * 65, False),
        ("", False),
        ("ACME", False),
        ("Acme", False),
        ("a b", False),
        ("a/b", False),
        ("acme\n", False),
        ("acme.", False),
        (".acme", False),
        ("acme~", False),
        ("-acme", False),
        ("a", True),
    ],
)
def test_tenant_id_rule(value: str, ok: bool) -> None:
    assert valid_tenant_id(value) is ok


def test_the_device_id_pattern_states_the_device_id_rule_for_every_character() -> None:
    pattern = re.compile(DEVICE_ID_PATTERN)
    for code in range(0x250):
        value = chr(code)
        assert (pattern.fullmatch(value) is not None) is valid_device_id(value), hex(code)
    assert pattern.fullmatch("x" * 128) and not pattern.fullmatch("x" * 129)


def test_the_admin_api_publishes_the_domain_rules() -> None:
    assert PARAMETERS["deviceId"]["schema"]["pattern"] == DEVICE_ID_PATTERN
    assert PARAMETERS["tenantId"]["schema"]["pattern"] == TENANT_ID_PATTERN
    assert CREATE_DEVICE["properties"]["deviceId"]["pattern"] == DEVICE_ID_PATTERN


@pytest.mark.parametrize(
    ("path", "tenant"),
    [
        ("/api/acme/devices", "acme"),
        ("/api/acme", "acme"),
        ("/api/", "default"),
        ("/api//x", "default"),
        ("/other/acme", "default"),
        ("/", "default"),
        ("/apiary/x", "default"),
    ],
)
def test_tenant_from_the_path(path: str, tenant: str) -> None:
    assert reader().tenant(path, {}) == tenant


@pytest.mark.parametrize("path", ["/api/ACME/x", "/api/" + "t" * 65 + "/x", "/api/a%20b/x"])
def test_a_tenant_the_rule_refuses_is_an_identity_error(path: str) -> None:
    with pytest.raises(IdentityError) as caught:
        reader().tenant(path, {})
    assert caught.value.field == "tenant"


@pytest.mark.parametrize("path", ["/API/acme/x", "/Api/x", "/api;v=1/acme"])
def test_a_prefix_an_upstream_could_read_as_api_is_refused(path: str) -> None:
    with pytest.raises(IdentityError) as caught:
        reader().tenant(path, {})
    assert caught.value.field == "path"


def test_tenant_from_a_header_or_fixed() -> None:
    by_header = reader(tenant_source="header", tenant_header="X-Org")
    assert by_header.tenant("/api/ignored/x", {b"x-org": b"acme"}) == "acme"
    assert by_header.tenant("/api/ignored/x", {}) == "default"
    with pytest.raises(IdentityError):
        by_header.tenant("/", {b"x-org": b"ACME"})
    fixed = reader(tenant_source="fixed", default_tenant="only")
    assert fixed.tenant("/api/acme/x", {b"x-tenant-id": b"other"}) == "only"


def test_a_request_without_a_device_id_has_no_device() -> None:
    identity = reader().read("/api/acme/x", ATTRS)
    assert (identity.tenant_id, identity.device_id) == ("acme", None)
    assert identity.attributes == (None,) * 6


def test_device_and_attributes_are_read_from_the_configured_headers() -> None:
    identity = reader().read("/api/acme/x", {b"x-device-id": b"d-1", **ATTRS})
    assert (identity.tenant_id, identity.device_id) == ("acme", "d-1")
    assert identity.attributes == ("App", "1.0", "Android", "14", "Acme", "X1")
    renamed = reader(header_device_id="X-Serial").read("/", {b"x-serial": b"s", b"x-os-name": b""})
    assert renamed.device_id == "s" and renamed.attributes == (None,) * 6


def test_attribute_values_are_utf8() -> None:
    identity = reader().read("/", {b"x-device-id": b"d", b"x-app-name": "Café".encode()})
    assert identity.attributes[0] == "Café"


@pytest.mark.parametrize(
    ("headers", "field"),
    [
        ({b"x-device-id": b"a b"}, "X-Device-Id"),
        ({b"x-device-id": b"x" * 129}, "X-Device-Id"),
        ({b"x-device-id": b"d", b"x-app-name": b"x" * (MAX_VALUE_LEN + 1)}, "X-App-Name"),
        ({b"x-device-id": b"d", b"x-os-name": b"\xff\xfe"}, "X-OS-Name"),
        ({b"x-device-id": b"d", b"x-device-model": b"a\x7fb"}, "X-Device-Model"),
    ],
)
def test_values_the_edge_refuses(headers: dict[bytes, bytes], field: str) -> None:
    with pytest.raises(IdentityError) as caught:
        reader().read("/", headers)
    assert caught.value.field == field


def test_a_repeated_identity_header_is_refused_but_another_repeated_header_is_not() -> None:
    headers = {b"x-device-id": b"d", **ATTRS}
    with pytest.raises(IdentityError) as caught:
        reader().read("/", headers, repeated=frozenset({b"x-app-version"}))
    assert caught.value.field == "x-app-version"
    assert reader().read("/", headers, repeated=frozenset({b"accept"})).device_id == "d"
    by_header = reader(tenant_source="header")
    assert b"x-tenant-id" in by_header.header_keys
    with pytest.raises(IdentityError):
        by_header.read("/", {b"x-tenant-id": b"acme"}, repeated=frozenset({b"x-tenant-id"}))
    assert b"x-tenant-id" not in reader().header_keys
