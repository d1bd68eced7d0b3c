"""The CLI as users meet it: every command and option explains itself, and `--version` answers.

The walk covers the whole click tree, so a command added later without help fails here."""
from __future__ import annotations

import click
import pytest

from ops.cli import main


def walk(command: click.Command, path: tuple[str, ...] = ("stockout-sync",)):
    yield path, command
    if isinstance(command, click.Group):
        for name, sub in command.commands.items():
            yield from walk(sub, (*path, name))


COMMANDS = list(walk(main))


def test_the_tree_is_walked():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"stockout-sync poll", "stockout-sync dlq list", "stockout-sync dlq show", "stockout-sync worker"} <= names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p[1:]) or "main" for p, _ in COMMANDS])
def test_every_command_and_option_has_help(path, command):
    where = " ".join(path)
    assert (command.help or "").strip(), f"`{where}` has no help text (a docstring)"
    missing = [param.opts[0] for param in command.params
               if isinstance(param, click.Option) and not (param.help or "").strip()]
    assert not missing, f"`{where}`: options without help: {', '.join(missing)}"


def test_version():
    from click.testing import CliRunner

    done = CliRunner().invoke(main, ["--version"])
    assert done.exit_code == 0 and done.output.startswith("stockout-sync "), done.output
    assert done.output.split()[1][0].isdigit()
