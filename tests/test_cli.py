"""The command line: a version, and help text for every option of every command."""

from __future__ import annotations

import argparse
from importlib.metadata import version

import pytest

from fewstep.cli import main, parser


def test_version_is_the_package_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"fewstep {version('fewstep')}\n"


def test_every_command_and_option_has_help():
    root = parser()
    (commands,) = [a for a in root._actions if isinstance(a, argparse._SubParsersAction)]
    helped = {choice.dest: choice.help for choice in commands._choices_actions}
    assert set(helped) == set(commands.choices) and all(helped.values())
    missing = [
        f"{name} {action.option_strings[0]}"
        for name, sub in commands.choices.items()
        for action in sub._actions
        if action.option_strings and action.help in (None, "", argparse.SUPPRESS)
    ]
    assert missing == []
