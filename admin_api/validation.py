"""Reading and validating request bodies and query parameters.

Bodies: ``application/json`` only (415 otherwise), size-capped by the app (413), parsed strictly
(400 for malformed JSON, duplicate keys, NaN), then checked against a JSON Schema with
``jsonschema`` (422 with one :class:`FieldError` per bad field). Strings that Postgres cannot
store (NUL, lone surrogates) are refused as 422 rather than failing later as a 500.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, NoReturn

from aiohttp import web
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from jsonschema.protocols import Validator
from jsonschema.validators import extend

from admin_api import schemas
from admin_api.errors import FieldError, Problem, bad_request, unprocessable

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_JSON_DEPTH",
    "MAX_LIMIT",
    "Body",
    "check_query",
    "cursor_param",
    "parse_limit",
    "parse_timestamp",
    "read_json",
    "text_param",
    "validator",
]

Body = dict[str, Any]
DEFAULT_LIMIT: Final = 100
MAX_LIMIT: Final = 1000
# No valid body nests more than three levels; refusing anything deeper than this keeps the
# recursive checks below (and jsonschema's) far from Python's recursion limit.
MAX_JSON_DEPTH: Final = 32


@functools.cache
def _ecma_regex(pattern: str) -> re.Pattern[str]:
    """``pattern`` with ECMA-262's meaning of a final ``$``: the very end of the string.

    Python's ``$`` also matches before a final newline, so ``"id\\n"`` would pass
    ``^[!-~]+$`` here, while the published document (ECMA-262, as JSON Schema specifies, and as
    the tools that generate test data from it read it) refuses it."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _pattern(
    check: Validator, pattern: str, instance: Any, schema: Mapping[str, Any]
) -> Iterator[ValidationError]:
    if check.is_type(instance, "string") and not _ecma_regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


# Draft 2020-12 with the pattern keyword as JSON Schema defines it (ECMA-262 regular expressions).
_Draft202012: type[Validator] = extend(  # type: ignore[no-untyped-call]  # untyped in the stubs
    Draft202012Validator, {"pattern": _pattern}
)


def validator(schema: Mapping[str, Any]) -> Validator:
    """A validator of ``schema`` that means what the published OpenAPI document means."""
    _Draft202012.check_schema(dict(schema))
    return _Draft202012(schema)


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
        "maxItems": f"must have at most {value} items",
    }
    return messages.get(str(keyword)) or f"fails the '{keyword}' rule"


def _errors_of(error: ValidationError, prefix: str) -> list[FieldError]:
    path = list(error.absolute_path)
    instance = error.instance
    if error.validator == "additionalProperties" and isinstance(instance, dict):
        schema = error.schema if isinstance(error.schema, dict) else {}
        allowed = set(schema.get("properties", {}))
        return [
            FieldError(field=_field([*path, k], prefix), message="is not an allowed field")
            for k in sorted(instance)
            if k not in allowed
        ]
    if error.validator == "required" and isinstance(instance, dict):
        return [
            FieldError(field=_field([*path, k], prefix), message="is required")
            for k in _names(error.validator_value)
            if k not in instance
        ]
    return [FieldError(field=_field(path, prefix), message=_message(error))]


def _names(value: object) -> list[str]:
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else []


def schema_errors(instance: Any, check: Validator, prefix: str = "") -> list[FieldError]:
    """Every violation, one entry per field, in a stable order."""
    found: list[FieldError] = []
    for error in sorted(check.iter_errors(instance), key=lambda e: list(map(str, e.path))):
        # A field can fail the same rule twice (a type's settings schema repeats "object").
        found.extend(e for e in _errors_of(error, prefix) if e not in found)
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
        children = (
            item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        )
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
        content_type.startswith("application/") and content_type.endswith("+json")
    )


async def read_json(request: web.Request, check: Validator, *, optional: bool = False) -> Body:
    """The request's JSON object, validated; ``{}`` for an empty body when ``optional``."""
    raw = await request.read()  # capped by the app's client_max_size: 413 beyond it
    if optional and not raw.strip():
        return {}
    if not _is_json(request.content_type):
        raise Problem(415, "The request body must be application/json", type_="media-type")
    try:
        data = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates
        )
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


def parse_timestamp(value: str, field: str) -> datetime:
    """An aware UTC datetime from a value that passed :data:`schemas.RFC3339_PATTERN`; 422 for
    a date that does not exist (February 30) or one that leaves the representable range."""
    try:
        return datetime.fromisoformat(value.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        raise unprocessable(
            [FieldError(field=field, message="is not a valid date and time")]
        ) from None


def check_query(request: web.Request, allowed: Iterable[str]) -> None:
    """400 for unknown or repeated query parameters."""
    allowed_set = set(allowed)
    errors = [
        FieldError(field=f"query.{k[:64]}", message="is not a known parameter")
        for k in sorted(set(request.query))
        if k not in allowed_set
    ]
    errors += [
        FieldError(field=f"query.{k}", message="is given more than once")
        for k in sorted(allowed_set)
        if len(request.query.getall(k, [])) > 1
    ]
    if errors:
        raise bad_request("Invalid query parameters", errors)


def parse_limit(request: web.Request) -> int:
    raw = request.query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    if not raw.isascii() or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise bad_request(
            "Invalid query parameters",
            [FieldError(field="query.limit", message=f"must be an integer from 1 to {MAX_LIMIT}")],
        )
    return int(raw)


def _param(request: web.Request, name: str, check: Validator, message: str) -> str | None:
    """An optional query parameter checked against its published schema (400 otherwise)."""
    raw = request.query.get(name)
    if raw is not None and not check.is_valid(raw):
        raise bad_request(
            "Invalid query parameters", [FieldError(field=f"query.{name}", message=message)]
        )
    return raw


_SEARCH_TEXT = validator(schemas.SEARCH_TEXT)
_CURSOR = validator(schemas.CURSOR)


def text_param(request: web.Request, name: str) -> str | None:
    """An optional free-text query parameter, length-capped and storable."""
    message = f"must be at most {schemas.SEARCH_MAX} characters without NUL"
    raw = _param(request, name, _SEARCH_TEXT, message)
    if raw is not None and _unstorable(raw, []):  # a lone surrogate, which no pattern can name
        raise bad_request(
            "Invalid query parameters", [FieldError(field=f"query.{name}", message=message)]
        )
    return raw


_TIMESTAMP = validator(schemas.TIMESTAMP_PARAM)


def time_param(request: web.Request, name: str) -> datetime | None:
    """An optional RFC 3339 query parameter as an aware UTC datetime (400 otherwise)."""
    message = "must be an RFC 3339 date and time with an offset"
    raw = _param(request, name, _TIMESTAMP, message)
    if raw is None:
        return None
    try:
        return datetime.fromisoformat(raw.upper()).astimezone(UTC)
    except (ValueError, OverflowError):
        raise bad_request(
            "Invalid query parameters", [FieldError(field=f"query.{name}", message=message)]
        ) from None


def cursor_param(request: web.Request) -> str | None:
    """The ``cursor`` query parameter, when it has the form of a cursor (decode it after)."""
    return _param(request, "cursor", _CURSOR, "is not a valid cursor")
