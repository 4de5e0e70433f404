"""The import rules of the layers (shared/DESIGN.md, docs/decisions.md), read from the source.

Every module's imports, those under ``if TYPE_CHECKING:`` included, are parsed with :mod:`ast`;
nothing is imported, so the test takes milliseconds and sees exactly what the files say.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("gatekeeper", "admin_api")

# Libraries that do I/O (or run an event loop): pure domain code imports none of them.
IO_LIBRARIES = (
    "asyncio",
    "asyncpg",
    "redis",
    "aiohttp",
    "httptools",
    "socket",
    "subprocess",
    "uvloop",
    "prometheus_client",
    "ssl",
    "selectors",
)
# The modules a request passes through: they must not pull in aiohttp (its server costs more
# than the rest of a proxied request) nor anything of the admin side.
HOT_PATH = (
    "gatekeeper.edge.handler",
    "gatekeeper.edge.http",
    "gatekeeper.edge.upstream",
    "gatekeeper.edge.admission",
    "gatekeeper.edge.forward",
    "gatekeeper.edge.blocklist",
    "gatekeeper.edge.keycache",
    "gatekeeper.edge.activity",
    "gatekeeper.problem",
    "gatekeeper.domain",
    "gatekeeper.settings",
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for package in PACKAGES for p in (ROOT / package).rglob("*.py")}


@cache
def imports(module: str) -> frozenset[str]:
    """Absolute names ``module`` imports (for ``from a import b``: ``a.b`` when that is a module
    of ours, else ``a``)."""
    tree = ast.parse(modules()[module].read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                found.add(candidate if candidate in modules() else node.module)
    return frozenset(found)


def _within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _offences(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> Iterator[str]:
    for module in sorted(modules()):
        if _within(module, sources):
            for name in sorted(imports(module)):
                if _within(name, forbidden):
                    yield f"{module} imports {name}"


@pytest.mark.parametrize(
    ("sources", "forbidden"),
    [
        (("gatekeeper",), ("admin_api",)),
        (("gatekeeper.edge",), ("gatekeeper.runtime",)),
        (("gatekeeper.store",), ("gatekeeper.edge", "gatekeeper.runtime")),
        (
            ("gatekeeper.domain",),
            ("gatekeeper.edge", "gatekeeper.store", "gatekeeper.runtime", *IO_LIBRARIES),
        ),
        (("admin_api",), ("gatekeeper.edge", "gatekeeper.runtime")),
        (HOT_PATH, ("aiohttp", "admin_api")),
    ],
    ids=[
        "core-not-admin",
        "edge-not-runtime",
        "store-not-edge",
        "domain-is-pure",
        "admin-uses-the-core-only",
        "hot-path-without-aiohttp",
    ],
)
def test_import_rule(sources: tuple[str, ...], forbidden: tuple[str, ...]) -> None:
    assert list(_offences(sources, forbidden)) == []


def test_no_import_cycles() -> None:
    ours = modules()
    graph = {m: {i for i in imports(m) if i in ours and i != m} for m in ours}
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    # Packages import their own modules only to re-export; a package's __init__ is no cycle.
    cycles = [c for c in cycles if not any(ours[m].name == "__init__.py" for m in c)]
    assert cycles == []


def test_the_rules_see_the_package() -> None:
    """The walk finds the layers at all (a test of the test: an empty walk passes every rule)."""
    names = modules()
    assert {
        "gatekeeper.edge.handler",
        "gatekeeper.domain.identity",
        "gatekeeper.store.migrate",
        "gatekeeper.runtime.cli",
        "admin_api.app",
    } <= names.keys()
    assert "gatekeeper.edge.http.request" in imports("gatekeeper.edge.handler")


def _reachable(start: str) -> set[str]:
    """Our modules ``start`` imports, directly or through others (package ``__init__``s too)."""
    ours = modules()
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen or module not in ours:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imports(module))
    return seen


def test_the_recorder_process_creates_none_of_the_workers_gauges() -> None:
    """In multiprocess mode a label-less gauge reports 0 from every process that creates it:
    the recorder process must not import the workers' metrics (gatekeeper_ready and the
    blocklist's last sync are ``livemin`` across the node)."""
    reachable = _reachable("gatekeeper.runtime.recorder")
    assert "gatekeeper.edge.activity.writer" in reachable  # the walk works
    assert "gatekeeper.edge.metrics" not in reachable
