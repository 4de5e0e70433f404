"""Who is calling: the tenant and the device, read from a request's path and headers.

Built once per worker from the settings (:class:`IdentityReader`) and called once per request, so
everything that can be computed ahead (header names, the tenant rule) is.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass

from gatekeeper.domain.ids import (
    DEVICE_ID_PATTERN,
    MAX_DEVICE_ID_LEN,
    TENANT_ID_PATTERN,
    TENANT_ID_RULE,
    valid_device_id,
    valid_tenant_id,
)
from gatekeeper.settings import Settings

__all__ = [
    "ATTRIBUTE_FIELDS",
    "DEVICE_ID_PATTERN",
    "MAX_DEVICE_ID_LEN",
    "MAX_VALUE_LEN",
    "TENANT_ID_PATTERN",
    "TENANT_ID_RULE",
    "Attributes",
    "Identity",
    "IdentityError",
    "IdentityReader",
    "valid_device_id",
    "valid_tenant_id",
]

MAX_VALUE_LEN = 256

# The six tracked attributes, in the order of :data:`Attributes`, under their Device field names.
ATTRIBUTE_FIELDS = ("application", "applicationVersion", "os", "osVersion", "manufacturer", "model")
Attributes = tuple[str | None, str | None, str | None, str | None, str | None, str | None]

_PREFIX = "/api/"


class IdentityError(ValueError):
    """The request names a device or tenant in a way the edge refuses (answered with 400)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(detail)
        self.field = field
        self.detail = detail


def _refuse_prefix_lookalike(path: str) -> None:
    """A first segment an upstream could read as ``api`` (``/API/``, ``/api;x/``) is refused:
    the edge would take the default tenant where the upstream serves a named one."""
    first = path[1:].partition("/")[0]
    if first != "api" and first.partition(";")[0].lower() == "api":
        raise IdentityError("path", "the path must start with /api/ exactly, in lower case")


@dataclass(frozen=True, slots=True)
class Identity:
    tenant_id: str
    device_id: str | None
    attributes: Attributes


class IdentityReader:
    """Reads :class:`Identity` from a request's raw path and its header look-up table (lower-case
    header names to raw values, as the proxy's server builds it)."""

    __slots__ = (
        "_attribute_headers",
        "_default_tenant",
        "_device_header",
        "_device_key",
        "_identity_keys",
        "_known_tenants",
        "_source",
        "_tenant_key",
    )

    def __init__(self, settings: Settings) -> None:
        self._device_header = settings.header_device_id
        self._device_key = settings.header_device_id.lower().encode("latin-1")
        self._attribute_headers = tuple(
            (name, name.lower().encode("latin-1"))
            for name in (
                settings.header_app_name,
                settings.header_app_version,
                settings.header_os_name,
                settings.header_os_version,
                settings.header_manufacturer,
                settings.header_model,
            )
        )
        self._source = settings.tenant_source
        self._tenant_key = settings.tenant_header.lower().encode("latin-1")
        self._default_tenant = settings.default_tenant
        self._identity_keys = frozenset(
            [self._device_key, *(key for _, key in self._attribute_headers)]
            + ([self._tenant_key] if self._source == "header" else [])
        )
        # Tenants already validated: a handful of strings seen over and over.
        self._known_tenants: set[str] = set()

    @property
    def header_keys(self) -> frozenset[bytes]:
        """The lower-case names of the headers identity is read from."""
        return self._identity_keys

    def tenant(self, path: str, headers: Mapping[bytes, bytes]) -> str:
        """The tenant of a request whose ``path`` is normalised (gatekeeper.edge.admission)."""
        if self._source == "path":
            if not path.startswith(_PREFIX):
                _refuse_prefix_lookalike(path)
                return self._default_tenant
            tenant = path[5:].partition("/")[0]
        elif self._source == "header":
            tenant = headers.get(self._tenant_key, b"").decode("latin-1")
        else:
            return self._default_tenant
        if not tenant:
            return self._default_tenant
        if tenant not in self._known_tenants:
            if not valid_tenant_id(tenant):
                raise IdentityError("tenant", TENANT_ID_RULE)
            if len(self._known_tenants) < 10_000:
                self._known_tenants.add(tenant)
        return tenant

    def read(
        self, path: str, headers: Mapping[bytes, bytes], repeated: AbstractSet[bytes] = frozenset()
    ) -> Identity:
        """The caller's identity; raises :class:`IdentityError` for values the edge refuses.

        ``repeated`` names headers sent more than once: for an identity header that is refused,
        since the edge would check one copy while the upstream might believe the other."""
        if repeated and not repeated.isdisjoint(self._identity_keys):
            name = next(iter(repeated & self._identity_keys)).decode("latin-1")
            raise IdentityError(name, f"{name} must not be repeated")
        tenant = self.tenant(path, headers)
        raw_id = headers.get(self._device_key)
        if raw_id is None:
            return Identity(tenant, None, (None, None, None, None, None, None))
        device_id = raw_id.decode("latin-1")
        if not valid_device_id(device_id):
            raise IdentityError(
                self._device_header,
                f"{self._device_header} must be 1-{MAX_DEVICE_ID_LEN} printable ASCII characters"
                " without spaces",
            )
        values: list[str | None] = []
        for name, key in self._attribute_headers:
            raw = headers.get(key)
            if not raw:
                values.append(None)
                continue
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                value = ""
            if not value or len(value) > MAX_VALUE_LEN or not value.isprintable():
                raise IdentityError(
                    name, f"{name} must be at most {MAX_VALUE_LEN} printable UTF-8 characters"
                )
            values.append(value)
        attributes: Attributes = (values[0], values[1], values[2], values[3], values[4], values[5])
        return Identity(tenant, device_id, attributes)
