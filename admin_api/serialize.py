"""Rows to camelCase JSON, RFC 3339 timestamps, and the opaque keyset cursors of the lists."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Protocol

from admin_api.errors import FieldError, bad_request
from gatekeeper.domain.identity import ATTRIBUTE_FIELDS

__all__ = [
    "DEVICE_FIELDS",
    "Row",
    "audit_json",
    "decode_cursor",
    "device_json",
    "encode_cursor",
    "from_micros",
    "history_json",
    "micros",
    "rfc3339",
    "token_json",
]


class Row(Protocol):
    """A result row (asyncpg.Record or a mapping)."""

    def __getitem__(self, key: str, /) -> Any: ...


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_MAX_MICROS: Final = 253_402_300_799 * 1_000_000  # 9999-12-31, datetime's limit
_MIN_MICROS: Final = -62_135_596_800 * 1_000_000  # 0001-01-01

# Device field name -> column, in the order of the Device resource (and of the CSV export).
_DEVICE_COLUMNS: Final = {
    "deviceId": "device_id",
    "name": "name",
    "displayName": None,
    "description": "description",
    "isEnabled": "is_enabled",
    "isBlocked": "is_blocked",
    "type": "type",
    "settings": "settings",
    "application": "application",
    "applicationVersion": "application_version",
    "os": "os",
    "osVersion": "os_version",
    "manufacturer": "manufacturer",
    "model": "model",
    "firstSeenAt": "first_seen_at",
    "lastActiveAt": "last_active_at",
    "lastDataUploadAt": "last_data_upload_at",
    "blockedAt": "blocked_at",
    "blockReason": "block_reason",
    "blockMode": "block_mode",
    "lastActivityAt": "last_activity_at",
    # The latest history record flagged by clone detection (docs/decisions.md).
    "conflictAt": "conflict_at",
    "createdAt": "created_at",
    "updatedAt": "updated_at",
}
DEVICE_FIELDS: Final = tuple(_DEVICE_COLUMNS)
_ATTRIBUTE_ALIASES: Final[dict[str, str]] = {
    **{f: f for f in ATTRIBUTE_FIELDS},
    **{str(_DEVICE_COLUMNS[f]): f for f in ATTRIBUTE_FIELDS},
    "app_name": "application",
    "app_version": "applicationVersion",
    "os_name": "os",
}


def rfc3339(value: datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def micros(value: datetime) -> int:
    """Exact microseconds since the epoch (a float would round)."""
    return (value - _EPOCH) // timedelta(microseconds=1)


def from_micros(value: int) -> datetime:
    return _EPOCH + timedelta(microseconds=value)


def _json_value(value: Any) -> Any:
    if isinstance(value, str) and value[:1] in "{[":
        return json.loads(value)  # asyncpg hands jsonb over as text
    return value


def device_json(row: Row) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field, column in _DEVICE_COLUMNS.items():
        if column is None:
            continue
        value = row[column]
        if isinstance(value, datetime):
            out[field] = rfc3339(value)
        elif field == "settings":
            out[field] = _json_value(value) if value is not None else {}
        else:
            out[field] = value
    out["displayName"] = row["name"] or row["device_id"]
    return {field: out[field] for field in DEVICE_FIELDS}


def _attributes(raw: Any) -> dict[str, Any] | None:
    data = _json_value(raw)
    if not isinstance(data, dict):
        return None
    out: dict[str, Any] = dict.fromkeys(ATTRIBUTE_FIELDS)
    for key, value in data.items():
        name = _ATTRIBUTE_ALIASES.get(key)
        if name is not None:
            out[name] = value
    return out


def history_json(row: Row) -> dict[str, Any]:
    previous = _attributes(row["previous"])
    current = _attributes(row["current"]) or dict.fromkeys(ATTRIBUTE_FIELDS)
    changed = [_ATTRIBUTE_ALIASES.get(f, f) for f in row["changed_fields"]]
    return {
        "recordedAt": rfc3339(row["recorded_at"]),
        "changedFields": changed,
        "previous": previous,
        "current": current,
        "conflict": row["conflict_since"] is not None,
    }


def token_json(row: Row) -> dict[str, Any]:
    return {
        "tokenId": str(row["key_id"]),
        "name": row["name"],
        "prefix": row["prefix"],
        "createdBy": row["created_by"],
        "createdAt": rfc3339(row["created_at"]),
        "expiresAt": rfc3339(row["expires_at"]),
        "lastUsedAt": rfc3339(row["last_used_at"]),
        "revokedAt": rfc3339(row["revoked_at"]),
    }


def audit_json(row: Row) -> dict[str, Any]:
    return {
        "id": row["id"],
        "at": rfc3339(row["at"]),
        "actor": row["actor"],
        "action": row["action"],
        "targetType": row["target_type"],
        "targetId": row["target_id"],
        "reason": row["reason"],
        "details": _json_value(row["details"]),
    }


def encode_cursor(*position: Any) -> str:
    """An opaque cursor for a keyset position (ints, strings, None)."""
    raw = json.dumps(list(position), separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str, *kinds: type | tuple[type, ...]) -> list[Any]:
    """The position in ``value``; 400 unless it has one item of each of ``kinds``."""
    invalid = bad_request(
        "Invalid query parameters",
        [FieldError(field="query.cursor", message="is not a valid cursor")],
    )
    if len(value) > 1024:
        raise invalid
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        position = json.loads(raw.decode())
    except (binascii.Error, ValueError) as exc:
        raise invalid from exc
    if not isinstance(position, list) or len(position) != len(kinds):
        raise invalid
    for item, kind in zip(position, kinds, strict=True):
        if not isinstance(item, kind) or isinstance(item, bool):
            raise invalid
        if isinstance(item, str) and (not item.isascii() or "\x00" in item or len(item) > 256):
            raise invalid
        if isinstance(item, int) and not _MIN_MICROS <= item <= _MAX_MICROS:
            raise invalid
    return position
