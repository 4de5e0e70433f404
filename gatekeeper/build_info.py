"""Which of the proxy's hot modules this install runs compiled, and which as plain Python.

A regular install (``pip install .``, the Docker image) compiles :data:`HOT_MODULES` with mypyc
when a C compiler is at hand; an editable install, or one without a compiler, runs them as the
Python sources (setup.py, docs/decisions.md "Compiled hot path"). :func:`describe` says which,
for ``gatekeeper --version`` and the start-up log. It reports what the import system loads, not
what the build meant to do: a stale or missing extension shows up here.

Standard library only: setup.py reads :data:`HOT_MODULES` from this file before anything of the
package can be imported.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util

__all__ = ["HOT_MODULES", "compiled_modules", "describe"]

# The modules of a proxied request's path, where the profile says compiling pays
# (docs/performance.md, "A compiled hot path"). Left out: the recorder and the supervisor (their
# work is not per request), metrics.py (1 % for a module the admin side shares), and modules a
# request touches once, briefly (blocklist.py, keycache.py, settings.py).
HOT_MODULES: tuple[str, ...] = (
    "gatekeeper.domain.identity",
    "gatekeeper.edge.accesslog",
    "gatekeeper.edge.admission",
    "gatekeeper.edge.answers",
    "gatekeeper.edge.forward",
    "gatekeeper.edge.handler",
    "gatekeeper.edge.ratelimit",
    "gatekeeper.edge.http.connection",
    "gatekeeper.edge.http.flow",
    "gatekeeper.edge.http.request",
    "gatekeeper.edge.http.server",
    "gatekeeper.edge.relay",
    "gatekeeper.edge.upstream.connection",
    "gatekeeper.edge.upstream.pool",
)

_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _is_compiled(name: str) -> bool:
    spec = importlib.util.find_spec(name)  # imports the parent packages, not the module
    return spec is not None and (spec.origin or "").endswith(_EXTENSION_SUFFIXES)


def compiled_modules() -> list[str]:
    """The hot modules that load as compiled extensions, in :data:`HOT_MODULES` order."""
    return [name for name in HOT_MODULES if _is_compiled(name)]


def describe() -> str:
    """One line: ``compiled (mypyc): <modules>``, or ``pure Python``; a partly compiled install
    (which no build makes on purpose) names the modules left as Python too."""
    compiled = compiled_modules()
    if not compiled:
        return "pure Python"
    # mypyc puts a build's compiled code in one library beside the package (setup.py's group).
    mypyc = importlib.util.find_spec("gatekeeper__mypyc") is not None
    text = f"compiled ({'mypyc' if mypyc else 'not by mypyc'}): " + ", ".join(compiled)
    left = [name for name in HOT_MODULES if name not in compiled]
    if left:
        text += "; pure Python: " + ", ".join(left)
    return text
