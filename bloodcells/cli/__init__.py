"""The ``bloodcells`` command line.

One module per command group registers its commands with ``@command``; each command imports
the heavy libraries it needs only when it runs, so ``bloodcells --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from .. import settings as settings_module

# What a --models option falls back to (``classify.default_models_dir``), for the help texts.
TREE_IN_USE = ("the tree in use: the version promoted last under BLOODCELLS_MODELS_DIR (by default the "
               "project's models/), else the shipped classifier/default there")

COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {}


def command(name: str, help_text: str, configure: Callable[[argparse.ArgumentParser], None]):
    """Register the decorated ``run(args)`` as sub-command ``name``; ``configure`` adds its arguments."""
    def register(run):
        COMMANDS[name] = (help_text, configure, run)
        return run
    return register


class CommandError(Exception):
    """An error the user caused: printed as one line, exit status 2."""


class Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, a job scheduler stopping the run): ended like Ctrl-C, so that an
    analysis begun is marked failed, not left "running" for a day (undeletable, holding back the
    clean-up of deleted analyses' images)."""


def _terminated(_signal_number, _frame):
    raise Terminated


def output_file(path: str | Path | None, reads: str | Path | None = None) -> Path | None:
    """Check a file the command will write before it works (and stores an analysis): not a folder,
    not what it reads (``reads``: the input file, or an image in the input folder), its folder made
    if missing. None stays None."""
    if path is None:
        return None
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{path}: is a folder; give the file to write")
    if reads is not None:
        from ..inputs import is_image_name

        source, target = Path(reads).resolve(), path.resolve()
        if target == source or (source.is_dir() and source in target.parents and is_image_name(target.name)):
            raise CommandError(f"{path}: would write over {'the input' if target == source else 'an input image'} "
                               f"({reads}); write it elsewhere")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"{path.parent}: cannot be made ({error.strerror or error})") from error
    existed = path.exists()
    try:  # opened now, so that a file that cannot be written is said before the work is stored
        path.open("a").close()
    except OSError as error:
        raise CommandError(f"{path}: cannot be written ({error.strerror or error})") from error
    if not existed:
        path.unlink()
    return path


def output_folder(path: str | Path | None, reads: str | Path | None = None) -> Path | None:
    """Check a folder the command will write into before it works: not a file, one that can be made and
    written (``out/cells.csv/ann`` failed with "[Errno 20] Not a directory" once the whole detection, or the
    evaluation, had run), and apart from ``reads`` (the input): not the input folder nor inside it (its
    images would be written over, or read as input by the next run), not the folder of an input file (the
    same). Nothing is made here: a run that fails leaves no empty folder behind."""
    if path is None:
        return None
    path = Path(path)
    if path.is_file():
        raise CommandError(f"{path}: is a file; give a folder to write into")
    existing = next(folder for folder in (path.absolute(), *path.absolute().parents) if folder.exists())
    if not existing.is_dir():
        raise CommandError(f"{path}: cannot be made, {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CommandError(f"{path}: cannot be written ({existing} is not writable)")
    if reads is not None:
        source, target = Path(reads).resolve(), path.resolve()
        folder = source if source.is_dir() else source.parent
        if target == folder or (source.is_dir() and source in target.parents):
            raise CommandError(f"{path}: is {'inside ' if target != folder else ''}the folder of the input ({reads}): "
                               "its images would be written over or read as input next time; give another folder")
    return path


def written_tree(folder: Path) -> str:
    """The last line of a command that made a tree: where it is, and how it comes into use (adapt said nothing)."""
    return (f"written {folder}: `bloodcells versions promote {folder}` puts it in use (`--models {folder}` tries it "
            "first)")


def print_problems(problems) -> None:
    """The files of an input not used, each with why: "skipped ..."; the later pages of a multi-page file whose
    first page was used, "not read: ..." (it said "skipped" of a file that was analysed)."""
    from ..inputs import LATER_PAGES_UNREAD

    for problem in problems:
        print(f"{'note' if LATER_PAGES_UNREAD in str(problem) else 'skipped'} {problem}")


def plural(count: int, word: str) -> str:
    """``count`` and ``word``, with an s unless one: "1 cell", "2 cells"."""
    return f"{count} {word}{'' if count == 1 else 's'}"


def whole(minimum: int, maximum: int = 2**63 - 1) -> Callable[[str], int]:
    """argparse type: a whole number from ``minimum`` to ``maximum`` (argparse names the option when
    it is not; a number out of range otherwise reached the code as a traceback or a silent result)."""
    def parse(text: str) -> int:
        value = int(text)
        if not minimum <= value <= maximum:
            raise argparse.ArgumentTypeError(f"{value}: give a whole number from {minimum}"
                                             + (f" to {maximum}" if maximum < 2**63 - 1 else " up"))
        return value
    parse.__name__ = "whole number"
    return parse


def real(low: float, high: float = math.inf, *, low_included: bool = True, high_included: bool = True):
    """argparse type: a number from ``low`` to ``high`` (each end included unless said otherwise)."""
    def parse(text: str) -> float:
        value = float(text)
        above = value >= low if low_included else value > low
        below = value <= high if high_included else value < high
        if not (above and below and math.isfinite(value)):
            ends = f"{'[' if low_included else '('}{low:g}, {high:g}{']' if high_included else ')'}"
            raise argparse.ArgumentTypeError(f"{value:g}: give a number in {ends}")
        return value
    parse.__name__ = "number"
    return parse


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


COMMAND_MODULES = ("database", "classification", "adaptation", "detection", "explanation", "signout", "versions", "history")


def _load_commands() -> None:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(f"bloodcells.cli.{module}")


def main(argv: list[str] | None = None) -> int:
    try:
        settings_module.apply_offline_environment()
    except settings_module.SettingsError as error:
        print(f"bloodcells: error: {error}", file=sys.stderr)
        return 2
    _load_commands()
    args = build_parser().parse_args(argv)
    from ..inputs import InputError
    from ..store import StoreError
    from ..taxonomy import TreeFormatError, UnknownLabelError

    in_main_thread = threading.current_thread() is threading.main_thread()  # only it may set a handler
    previous = signal.signal(signal.SIGTERM, _terminated) if in_main_thread else None
    try:
        return args.run(args) or 0
    except BrokenPipeError:  # `bloodcells tree show | head -1`: the reader had what it wanted (not an error)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that the exit's flush does not fail
        return 0
    except (CommandError, InputError, StoreError, UnknownLabelError, TreeFormatError, settings_module.SettingsError,
            OSError) as error:  # OSError: a path that cannot be written or read (a folder, no permission...)
        print(f"bloodcells {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what was begun is marked failed or left as it was by the command itself
        print(f"bloodcells {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"bloodcells {args.command}: terminated", file=sys.stderr)
        return 128 + signal.SIGTERM
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
