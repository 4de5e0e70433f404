"""The compiled hot path (setup.py, gatekeeper/build_info.py): what an install builds, what it
falls back to, and which build this test run exercises."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from buildrig import ROOT, build_wheel, can_compile, copy_tree, extension_members

from gatekeeper import build_info

# Set by `make test-compiled`, which runs the suite in a copy of the tree holding the extensions.
COMPILED_RUN = os.environ.get("GATEKEEPER_TEST_COMPILED") == "1"


def _install(wheel: Path, target: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-t", str(target), str(wheel)],
        check=True,
        capture_output=True,
    )


def _describe_installed(target: Path, cwd: Path) -> str:
    """describe() as an installed copy answers it, away from the source tree."""
    return subprocess.run(
        [sys.executable, "-c", "from gatekeeper.build_info import describe; print(describe())"],
        env={**os.environ, "PYTHONPATH": str(target)},
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def test_this_run_exercises_the_build_it_claims(tmp_path: Path) -> None:
    # In a development tree (an editable install) no extension may shadow a source file, or an
    # edit would silently not run; in the compiled run every hot module must be compiled, in
    # this process and in one a test starts from another directory.
    in_child = subprocess.run(
        [sys.executable, "-c", "from gatekeeper.build_info import describe; print(describe())"],
        cwd=tmp_path,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    assert in_child == build_info.describe()
    if COMPILED_RUN:
        assert build_info.compiled_modules() == list(build_info.HOT_MODULES)
        assert build_info.describe().startswith("compiled (mypyc): gatekeeper.")
    else:
        assert build_info.describe() == "pure Python"
        stray = [p for p in (ROOT / "gatekeeper").rglob("*") if p.suffix in {".so", ".pyd"}]
        assert stray == []


def test_hot_modules_are_source_files_outside_the_concurrently_edited_layers() -> None:
    for name in build_info.HOT_MODULES:
        assert (ROOT / (name.replace(".", "/") + ".py")).is_file(), name
        # The supervisor side and the recorder change often and gain nothing from compiling.
        assert not name.startswith(("gatekeeper.runtime.", "gatekeeper.edge.activity.")), name


@pytest.mark.slow
@pytest.mark.skipif(COMPILED_RUN, reason="the compiled run tests the build it was given")
def test_an_install_compiles_the_hot_path_or_falls_back_to_python(tmp_path: Path) -> None:
    source = tmp_path / "src"
    copy_tree(source)
    expected = sorted(
        name.replace(".", "/") + sysconfig.get_config_var("EXT_SUFFIX")
        for name in build_info.HOT_MODULES
    )

    # No C compiler: the install still succeeds, pure Python, and says so.
    fallback = build_wheel(source, tmp_path / "pure", compile_mode="auto", cc="/nonexistent/cc")
    assert extension_members(fallback) == []
    assert fallback.name.endswith("-py3-none-any.whl")
    _install(fallback, tmp_path / "pure-site")
    assert _describe_installed(tmp_path / "pure-site", tmp_path) == "pure Python"

    if not can_compile():
        pytest.skip("no C compiler or Python headers here: only the fallback was tested")
    wheel = build_wheel(source, tmp_path / "compiled", compile_mode="auto")
    modules = [m for m in extension_members(wheel) if m.startswith("gatekeeper/")]
    assert modules == expected
    _install(wheel, tmp_path / "site")
    described = _describe_installed(tmp_path / "site", tmp_path)
    assert described == "compiled (mypyc): " + ", ".join(build_info.HOT_MODULES)
