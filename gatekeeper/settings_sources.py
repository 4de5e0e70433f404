"""Where settings come from: a TOML file, and raw strings (the environment, flags) turned into
the type of each setting's default. :mod:`gatekeeper.settings` merges them.
"""

from __future__ import annotations

import json
import tomllib
from pathlib import Path
from typing import Any

__all__ = ["SettingsError", "coerce", "read_toml"]


class SettingsError(ValueError):
    """A setting has a value the gatekeeper cannot run with."""


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise SettingsError(f"cannot read settings file {path}: {exc}") from exc
    # Accept both a flat file and one with a [gatekeeper] table; with the table, anything
    # outside it is a mistake (a key above the header, another table) that would otherwise be
    # silently ignored.
    table = data.get("gatekeeper", data)
    if not isinstance(table, dict):
        raise SettingsError(f"{path}: [gatekeeper] must be a table")
    outside = sorted(set(data) - {"gatekeeper"}) if "gatekeeper" in data else []
    if outside:
        raise SettingsError(
            f"{path}: {', '.join(outside)} outside the [gatekeeper] table; move into it"
        )
    return dict(table)


def coerce(name: str, raw: Any, default: Any) -> Any:
    """Turn an environment string (or TOML value) into the type of the default."""
    if raw is None:
        return None
    try:
        if isinstance(default, bool):
            if isinstance(raw, bool):
                return raw
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"not a boolean: {raw!r}")
        if isinstance(default, int):
            return int(raw)
        if isinstance(default, float):
            return float(raw)
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, dict):
            # A table in TOML; a JSON object in the environment (GATEKEEPER_..._TENANTS).
            table = json.loads(raw) if isinstance(raw, str) else raw
            if not isinstance(table, dict):
                raise ValueError(f"not a table: {raw!r}")
            return {
                str(k): float(v) if isinstance(v, int | float) and not isinstance(v, bool) else v
                for k, v in table.items()
            }
    except (TypeError, ValueError) as exc:
        raise SettingsError(f"{name}: {exc}") from exc
    return str(raw) if not isinstance(raw, str) else raw
