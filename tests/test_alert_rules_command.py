"""``gatekeeper alert-rules``: the packaged rules with absolute runbook links, or a refusal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml
from deployrig import assert_ok, promtool, run


def _alert_rules(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GATEKEEPER_")}
    return subprocess.run(
        [sys.executable, "-m", "gatekeeper", "alert-rules", *args],
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_every_link_is_under_the_given_base_and_promtool_accepts_the_rules(tmp_path: Path) -> None:
    base = "https://wiki.internal/ops/gatekeeper"
    done = _alert_rules("--runbook-base", base)
    assert done.returncode == 0, done.stderr
    rules = [r for g in yaml.safe_load(done.stdout)["groups"] for r in g["rules"] if "alert" in r]
    assert len(rules) > 10
    for rule in rules:
        assert rule["annotations"]["runbook_url"] == f"{base}#{rule['alert'].lower()}"
    out = tmp_path / "gatekeeper.yml"
    out.write_text(done.stdout)
    assert_ok(run(promtool(), "check", "rules", str(out)))


def test_the_base_can_come_from_the_environment() -> None:
    done = _alert_rules(env={"GATEKEEPER_RUNBOOK_BASE": "http://docs.local/ops"})
    assert done.returncode == 0, done.stderr
    assert '"http://docs.local/ops#gatekeeperrecorderdown"' in done.stdout


def test_no_base_or_a_relative_one_is_refused_with_exit_2() -> None:
    for args in ((), ("--runbook-base", "docs/operations.md"), ("--runbook-base", "https://x/#a")):
        done = _alert_rules(*args)
        assert done.returncode == 2, args
        assert done.stdout == ""
        (line,) = done.stderr.splitlines()
        assert line.startswith("gatekeeper alert-rules: "), line
