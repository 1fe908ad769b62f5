"""The ``bloodcells`` command line.

One module per command group registers its commands with ``@command``; each command imports
the heavy libraries it needs only when it runs, so ``bloodcells --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .. import settings as settings_module

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated ``run(args)`` as sub-command ``name``; ``configure`` adds its arguments."""
    def register(run):
        COMMANDS[name] = (help_text, configure, run)
        return run
    return register


class CommandError(Exception):
    """An error the user caused: printed as one line, exit status 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bloodcells", description="Find, count, classify and explain blood and bone-marrow cells.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for name, (help_text, configure, run) in COMMANDS.items():
        sub = commands.add_parser(name, help=help_text, description=help_text)
        configure(sub)
        sub.set_defaults(run=run)
    return parser


COMMAND_MODULES = ("database", "classification", "adaptation", "detection", "explanation", "signout")


def _load_commands() -> None:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(f"bloodcells.cli.{module}")


def main(argv: list[str] | None = None) -> int:
    settings_module.apply_offline_environment()
    _load_commands()
    args = build_parser().parse_args(argv)
    from ..inputs import InputError
    from ..store import StoreError
    from ..taxonomy import TreeFormatError, UnknownLabelError

    try:
        return args.run(args) or 0
    except (CommandError, InputError, StoreError, UnknownLabelError, TreeFormatError, settings_module.SettingsError,
            FileNotFoundError) as error:
        print(f"bloodcells {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
