"""Reading and validating request bodies and query parameters.

Bodies: ``application/json`` only (415 otherwise), size-capped by the app (413), parsed strictly
(400 for malformed JSON, duplicate keys, NaN), then checked against a JSON Schema with
``jsonschema`` (422 with one :class:`FieldError` per bad field). Strings that Postgres cannot
store (NUL, lone surrogates) are refused as 422 rather than failing later as a 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NoReturn
from urllib.parse import urlsplit

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from admin_api import schemas
from admin_api.errors import FieldError, Problem, bad_request, unprocessable

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_JSON_DEPTH",
    "MAX_LIMIT",
    "Body",
    "check_query",
    "parse_limit",
    "parse_timestamp",
    "read_json",
    "text_param",
    "validator",
]

Body = dict[str, Any]
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
_QUERY_TEXT_MAX: Final = 200
# No valid body nests more than three levels; refusing anything deeper than this keeps the
# recursive checks below (and jsonschema's) far from Python's recursion limit.
MAX_JSON_DEPTH: Final = 32
_DEVICE_ID = re.compile(schemas.DEVICE_ID_PATTERN)


def validator(schema: Mapping[str, Any]) -> Draft202012Validator:
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _field(path: Iterable[str | int], prefix: str = "") -> str:
    out = prefix
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out = f"{out}.{part}" if out else part
    return out or "(body)"


def _message(error: ValidationError) -> str:
    keyword, value = error.validator, error.validator_value
    messages: dict[str, str] = {
        "type": f"must be of type {' or '.join(value) if isinstance(value, list) else value}",
        "maxLength": f"must be at most {value} characters",
        "minLength": f"must be at least {value} character(s)",
        "enum": f"must be one of: {', '.join(map(str, value))}" if isinstance(value, list) else "",
        "pattern": "has an invalid format",
        "minimum": f"must be at least {value}",
        "maximum": f"must be at most {value}",
        "minProperties": "must name at least one field",
    }
    return messages.get(str(keyword)) or f"fails the '{keyword}' rule"


def _errors_of(error: ValidationError, prefix: str) -> list[FieldError]:
    path = list(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = set(schema.get("properties", {}))
        return [FieldError(field=_field([*path, k], prefix), message="is not an allowed field")
                for k in sorted(instance) if k not in allowed]
    if error.validator == "required" and isinstance(instance, dict):
        return [FieldError(field=_field([*path, k], prefix), message="is required")
                for k in _names(error.validator_value) if k not in instance]
    return [FieldError(field=_field(path, prefix), message=_message(error))]


def _names(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def schema_errors(instance: Any, check: Draft202012Validator, prefix: str = "") -> list[FieldError]:
    """Every violation, one entry per field, in a stable order."""
    found: list[FieldError] = []
    for error in sorted(check.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        found.extend(_errors_of(error, prefix))
    return found


def _unstorable(value: Any, path: list[str | int]) -> list[FieldError]:
    """Strings (and keys) Postgres text/jsonb cannot hold."""
    if isinstance(value, str):
        if "\x00" in value or any("\ud800" <= c <= "\udfff" for c in value):
            return [FieldError(field=_field(path), message="contains a character not allowed")]
        return []
    found: list[FieldError] = []
    if isinstance(value, dict):
        for key, item in value.items():
            found += _unstorable(key, [*path, "(key)"]) or _unstorable(item, [*path, key])
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _unstorable(item, [*path, index])
    return found


def _deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than ``limit`` levels (iterative: no recursion)."""
    pending: list[tuple[Any, int]] = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        children = (item.values() if isinstance(item, dict)
                    else item if isinstance(item, list) else None)
        if children is None:
            continue
        if depth > limit:
            return True
        pending.extend((child, depth + 1) for child in children)
    return False


def _too_deep() -> Problem:
    return bad_request(f"The request body is nested more than {MAX_JSON_DEPTH} levels deep")


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key[:64]!r}")
        result[key] = value
    return result


def _is_json(content_type: str) -> bool:
    return content_type == "application/json" or (
        content_type.startswith("application/") and content_type.endswith("+json"))


async def read_json(request: web.Request, check: Draft202012Validator, *,
                    optional: bool = False) -> Body:
    """The request's JSON object, validated; ``{}`` for an empty body when ``optional``."""
    raw = await request.read()  # capped by the app's client_max_size: 413 beyond it
    if optional and not raw.strip():
        return {}
    if not _is_json(request.content_type):
        raise Problem(415, "The request body must be application/json", type_="media-type")
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant,
                          object_pairs_hook=_no_duplicates)
    except RecursionError as exc:  # the C parser's own guard, far beyond our limit
        raise _too_deep() from exc
    except (UnicodeDecodeError, ValueError) as exc:
        raise bad_request(f"The request body is not valid JSON: {str(exc)[:120]}") from exc
    if _deeper_than(data, MAX_JSON_DEPTH):
        raise _too_deep()
    bad = _unstorable(data, [])
    if bad:
        raise unprocessable(bad)
    errors = schema_errors(data, check)
    if errors:
        raise unprocessable(errors)
    if not isinstance(data, dict):  # the schema says object; keep the type checker honest
        raise unprocessable([FieldError(field="(body)", message="must be an object")])
    return data


def check_url(value: str, field: str) -> list[FieldError]:
    parts = urlsplit(value)
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return [FieldError(field=field, message="must be an http or https URL with a host")]
    return []


def parse_timestamp(value: str, field: str) -> datetime:
    """An RFC 3339 timestamp with an offset, as an aware UTC datetime (422 otherwise)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None or "T" not in value.upper():
        raise unprocessable([FieldError(field=field,
                                        message="must be an RFC 3339 timestamp with an offset")])
    return parsed.astimezone(UTC)


def is_device_id(value: str) -> bool:
    return _DEVICE_ID.fullmatch(value) is not None


def check_query(request: web.Request, allowed: Iterable[str]) -> None:
    """400 for unknown or repeated query parameters."""
    allowed_set = set(allowed)
    errors = [FieldError(field=f"query.{k[:64]}", message="is not a known parameter")
              for k in sorted(set(request.query)) if k not in allowed_set]
    errors += [FieldError(field=f"query.{k}", message="is given more than once")
               for k in sorted(allowed_set) if len(request.query.getall(k, [])) > 1]
    if errors:
        raise bad_request("Invalid query parameters", errors)


def parse_limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_request("Invalid query parameters", [FieldError(
            field="query.limit", message=f"must be an integer from 1 to {MAX_LIMIT}")])
    return int(raw)


def text_param(request: web.Request, name: str) -> str | None:
    """An optional free-text query parameter, length-capped and storable."""
    raw = request.query.get(name)
    if raw is None:
        return None
    if len(raw) > _QUERY_TEXT_MAX or _unstorable(raw, []):
        raise bad_request("Invalid query parameters", [FieldError(
            field=f"query.{name}",
            message=f"must be at most {_QUERY_TEXT_MAX} characters without NUL")])
    return raw
