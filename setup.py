"""Build hook: compile the proxy's hot modules with mypyc when it can (the rest is pyproject.toml).

``GATEKEEPER_COMPILE`` decides (docs/decisions.md, "Compiled hot path"):

- ``auto`` (the default): a regular build (``pip install .``, ``pip wheel .``) compiles
  ``gatekeeper.build_info.HOT_MODULES``; when it cannot (no C compiler, no Python headers, mypyc
  refuses), it says so and installs the pure-Python modules, which behave the same.
- ``1``: compile or fail (the Docker image and the compiled test run ask for this).
- ``0``: never compile.

An editable install (``pip install -e``) is never compiled: an extension module built next to its
``.py`` file would shadow every later edit of it.
"""

from __future__ import annotations

import os
import runpy
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from setuptools import setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Commands that build extension modules; metadata-only steps (egg_info, dist_info, sdist) do not
# need the compile, which takes a while.
_BUILDING = {"bdist_wheel", "build", "build_ext", "install"}
_EDITABLE = {"editable_wheel", "develop"}


def _say(message: str) -> None:
    # stderr: pip shows it with -v, and always when the build fails.
    print(f"gatekeeper build: {message}", file=sys.stderr)


def _mode() -> str:
    mode = os.environ.get("GATEKEEPER_COMPILE", "auto").strip().lower() or "auto"
    if mode not in {"auto", "0", "1"}:
        raise SystemExit(f"GATEKEEPER_COMPILE must be auto, 0 or 1, not {mode!r}")
    return mode


def _hot_sources() -> list[str]:
    info = runpy.run_path(str(HERE / "gatekeeper" / "build_info.py"))
    return [name.replace(".", "/") + ".py" for name in info["HOT_MODULES"]]


def _compiler_problem() -> str | None:
    """Why no extension module can be built here (no C compiler, no Python headers), or None.
    Asked before mypyc runs: its translation takes a while, and a build with no extension
    makes a pure-Python wheel (``py3-none-any``)."""
    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    include = sysconfig.get_paths()["include"]
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp, "probe.c")
        probe.write_text("#include <Python.h>\nint probe(void) { return 0; }\n")
        try:
            built = subprocess.run(
                [*cc, f"-I{include}", "-c", str(probe), "-o", str(Path(tmp, "probe.o"))],
                capture_output=True,
                text=True,
                check=False,
            )
        except OSError as exc:
            return f"no C compiler ({exc})"
    if built.returncode != 0:
        return f"{cc[0]} cannot build against Python.h: {built.stderr.strip()[-300:]}"
    return None


def _extensions(mode: str) -> list[Any]:
    commands = set(sys.argv[1:])
    if commands & _EDITABLE:
        if mode == "1":
            raise SystemExit("GATEKEEPER_COMPILE=1: an editable install is never compiled")
        _say("editable install: the hot path stays pure Python")
        return []
    if mode == "0" or not commands & _BUILDING:
        return []
    problem = _compiler_problem()
    if problem is not None:
        if mode == "1":
            raise SystemExit(f"GATEKEEPER_COMPILE=1, but {problem}")
        _say(f"{problem}; installing the hot path as pure Python")
        return []
    try:
        from mypyc.build import mypycify

        return list(
            mypycify(
                [
                    # The build environment holds mypy, not the runtime dependencies: their
                    # types are Any here, and only the compiled modules are checked.
                    "--ignore-missing-imports",
                    "--follow-imports=silent",
                    f"--python-version={sys.version_info[0]}.{sys.version_info[1]}",
                    *_hot_sources(),
                ],
                opt_level="3",
                group_name="gatekeeper",
            )
        )
    except (Exception, SystemExit) as exc:  # mypyc exits on a type error
        if mode == "1":
            raise
        _say(f"mypyc could not translate the hot path ({exc!r}); installing pure Python")
        return []


class OptionalBuildExt(build_ext):
    """Builds the compiled modules, or, should the compiler fail after all, none of them."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # CompileError, LinkError, a missing compiler (OSError)
            if _mode() == "1":
                raise
            for output in self.get_outputs():
                Path(output).unlink(missing_ok=True)
            _say(f"no compiled hot path ({exc}); installing pure Python")
            return
        _say(f"compiled with mypyc: {', '.join(e.name for e in self.extensions)}")


class CleanBuildPy(build_py):
    """Drops extension modules a previous build left in the build directory: a pure build must
    not package them, nor a compiled one the modules it no longer compiles."""

    def run(self) -> None:
        lib = Path(self.build_lib)
        for pattern in ("gatekeeper/**/*.so", "gatekeeper/**/*.pyd", "gatekeeper__mypyc*"):
            for stale in lib.glob(pattern):
                stale.unlink()
        super().run()


setup(
    ext_modules=_extensions(_mode()),
    cmdclass={"build_ext": OptionalBuildExt, "build_py": CleanBuildPy},
)
