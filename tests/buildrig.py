"""Builds the project's wheel, and runs the test suite against the compiled hot path.

``python tests/buildrig.py DIR [PYTEST ARGS]`` (``make test-compiled``) copies the tree (tracked
and new files, as ``git ls-files`` lists them) to ``DIR``, builds a compiled wheel there
(``GATEKEEPER_COMPILE=1``), puts its extension modules next to the sources as an install would,
and runs the whole suite in ``DIR`` with ``GATEKEEPER_TEST_COMPILED=1``: every test, and every
server a test starts, runs the compiled modules. Without a C compiler it says so and exits 0 (the
pure-Python build is what such a machine installs, and ``make test`` has tested it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_EXTENSIONS = (".so", ".pyd")


def can_compile() -> bool:
    """A C compiler and the Python headers are here (what building the extensions needs)."""
    include = Path(sysconfig.get_paths()["include"]) / "Python.h"
    cc = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]
    return include.is_file() and shutil.which(cc) is not None


def build_wheel(source: Path, out: Path, *, compile_mode: str, cc: str | None = None) -> Path:
    """``pip wheel`` of ``source`` into ``out`` with ``GATEKEEPER_COMPILE=compile_mode`` (and
    ``CC`` when given); returns the wheel. Built as ``pip install .`` builds it: in an isolated
    environment holding only the build requirements (pyproject.toml)."""
    env = {**os.environ, "GATEKEEPER_COMPILE": compile_mode}
    if cc is not None:
        env["CC"] = cc
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(out), str(source)],
        env=env,
        check=True,
        capture_output=True,
    )
    (wheel,) = out.glob("gatekeeper_edge-*.whl")  # the distribution name, normalised
    return wheel


def extension_members(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as archive:
        return sorted(name for name in archive.namelist() if name.endswith(_EXTENSIONS))


def copy_tree(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, listed):
        path = ROOT / os.fsdecode(name)
        if path.is_file():  # a tracked file deleted in the work tree is not copied
            target = dest / os.fsdecode(name)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)


def compiled_tree(dest: Path) -> list[str]:
    """A fresh copy of the tree at ``dest`` with the compiled wheel's extensions in place;
    returns their names."""
    shutil.rmtree(dest, ignore_errors=True)
    copy_tree(dest)
    wheel = build_wheel(dest, dest / "dist", compile_mode="1")
    members = extension_members(wheel)
    with zipfile.ZipFile(wheel) as archive:
        for name in members:
            archive.extract(name, dest)
    return members


def main(argv: list[str]) -> int:
    if not can_compile():
        print("test-compiled: no C compiler or Python headers here; skipped (pure Python only)")
        return 0
    dest = Path(argv[0]).resolve()
    built = compiled_tree(dest)
    print(f"test-compiled: {len(built)} extension modules built in {dest}; running the suite")
    # PYTHONPATH too: a server a test starts from another directory must import this copy, not
    # what the virtualenv's editable install points at.
    path = os.pathsep.join(filter(None, (str(dest), os.environ.get("PYTHONPATH"))))
    env = {**os.environ, "GATEKEEPER_TEST_COMPILED": "1", "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "pytest", *argv[1:]], cwd=dest, env=env).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
