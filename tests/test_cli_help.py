"""Every flag of every command says what it does, its default, and its variable if it has one."""

from __future__ import annotations

import argparse

from gatekeeper.runtime.cli import _parser
from gatekeeper.settings import Settings


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    found: dict[str, argparse.ArgumentParser] = {}
    for name, command in sub.choices.items():
        nested = [a for a in command._actions if isinstance(a, argparse._SubParsersAction)]
        if nested:  # devices list, tokens create, ...
            for inner, leaf in nested[0].choices.items():
                found[f"{name} {inner}"] = leaf
        else:
            found[name] = command
    return found


def test_every_flag_has_help_with_its_default() -> None:
    commands = _commands()
    assert {"up", "proxy", "admin", "migrate", "token", "alert-rules", "devices list"} <= set(
        commands
    )
    settings = set(Settings.field_names())
    # The commands that read settings (flags over GATEKEEPER_* over the TOML file).
    reading_settings = {"up", "proxy", "admin", "migrate", "reconcile", "token"}
    for name, command in commands.items():
        for action in command._actions:
            if not action.option_strings or action.dest == "help":
                continue
            flag = f"gatekeeper {name} {action.option_strings[0]}"
            assert action.help, f"{flag} has no help"
            assert "default" in action.help or "required" in action.help, flag
            if name in reading_settings and action.dest in settings:
                assert f"GATEKEEPER_{action.dest.upper()}" in action.help, flag
