"""The ``crumpets`` command line: subcommands come from every installed crumpets package.

Each entry point in the group ``crumpets.commands`` is a function
``setup(parser: argparse.ArgumentParser) -> None`` that adds the command's
arguments and calls ``parser.set_defaults(func=run)``, where ``run(args) -> int``
returns the exit code. The first line of the setup function's docstring is the
command's description.

Core provides ``crumpets pack`` (image folder tree to dataset file, or to a sharded
dataset; a dataset file to a sharded dataset) and ``crumpets info`` (describe a dataset
file, or a sharded dataset's folder or URL).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from crumpets.core._cli_common import usage_error
from crumpets.core._info_command import setup_info
from crumpets.core._pack_command import setup_pack
from crumpets.core._version import __version__
from crumpets.core.plugins import (
    KNOWN_PLUGINS,
    PluginNotFound,
    entry_point_names,
    known_distribution,
    load_entry_point,
)

__all__ = ["main", "setup_info", "setup_pack"]

GROUP = "crumpets.commands"

Setup = Callable[[argparse.ArgumentParser], None]


# ---------------------------------------------------------------- main

# Core's own commands, used when the package metadata is not installed (running
# from a source tree with PYTHONPATH).
_BUILTIN: dict[str, Setup] = {"pack": setup_pack, "info": setup_info}


def _first_line(doc: str | None) -> str | None:
    lines = (doc or "").strip().splitlines()
    return lines[0].strip() if lines else None


def _summary(name: str) -> str:
    """One line on a command for ``crumpets --help``, without importing its package (a
    sibling's module imports torch or OpenCV: a second, for a list of names)."""
    if name in _BUILTIN:
        return _first_line(_BUILTIN[name].__doc__) or ""
    dist = known_distribution(GROUP, name)
    return f"from {dist}: crumpets {name} --help" if dist else f"crumpets {name} --help"


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``crumpets`` command line.

    Only the command that runs is imported: ``crumpets --help`` lists the installed
    commands by name, and ``crumpets COMMAND --help`` describes one.

    Args:
        argv: arguments without the program name; None means ``sys.argv[1:]``.

    Returns:
        The exit code: 0 on success, 2 for usage errors, bad input and commands
        whose package is not installed.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    installed = set(entry_point_names(GROUP)) | set(_BUILTIN)
    missing = sorted(set(KNOWN_PLUGINS[GROUP]) - installed)

    command = next((arg for arg in argv if not arg.startswith("-")), None)
    if command in missing:
        sys.stderr.write(f"{PluginNotFound(GROUP, command)}\n")
        return 2
    setup: Setup | None = None
    if command in installed:
        try:
            setup = load_entry_point(GROUP, command)
        except PluginNotFound:  # running from a source tree without package metadata
            setup = _BUILTIN[command]
        except Exception as error:  # a broken plugin must not break the other commands
            return usage_error(command, f"cannot load the command: {type(error).__name__}: {error}")

    parser = argparse.ArgumentParser(
        prog="crumpets", description="crumpets: fast data loading for deep learning."
    )
    if missing:
        parser.epilog = "not installed: " + ", ".join(
            f"{name} ({KNOWN_PLUGINS[GROUP][name]})" for name in missing
        )
    parser.add_argument("--version", action="version", version=f"crumpets-core {__version__}")
    subparsers = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for name in sorted(installed):
        if name == command and setup is not None:
            doc = _first_line(setup.__doc__)
            setup(subparsers.add_parser(name, help=doc, description=doc))
        else:
            subparsers.add_parser(name, help=_summary(name))

    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version and usage errors
        return 0 if e.code is None else e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
