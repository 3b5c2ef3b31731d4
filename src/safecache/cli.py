"""Offer safecache's commands inside your own tool's command line.

``mytool cache clean`` without wrapping ``safecache`` by hand::

    import argparse
    import safecache
    import safecache.cli

    def open_cache() -> safecache.Cache:
        return safecache.Cache(app_name="mytool", max_size=2 * 1024**3)

    parser = argparse.ArgumentParser(prog="mytool")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("lint")                                    # the tool's own commands
    safecache.cli.add_commands(sub, cache=open_cache)         # adds `mytool cache ...`

    args = parser.parse_args()
    code = safecache.cli.handle(args)                         # None: not a cache command
    if code is not None:
        raise SystemExit(code)
    ...                                                       # the tool's own commands

or, where the tool dispatches by hand::

    raise SystemExit(safecache.cli.run(sys.argv[2:], cache=open_cache, prog="mytool cache"))

The commands are ``dir``, ``info``, ``prune``, ``clean``, ``verify`` and
``doctor``, with the options, output, ``--json`` documents and exit codes of
the ``safecache`` command (docs/cli.md), except ``--app-name`` (the tool's
cache already knows its name).  ``--cache-dir DIR`` runs a command on another
root with the tool's settings (size limit, age limit, retry budget).  Help
texts and remedies name ``prog`` (e.g. "run `mytool cache prune`").

Importing this module imports neither ``rich`` nor ``click``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Union

from . import _cli, _cli_commands
from ._cli import COMMANDS
from ._cli_commands import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE
from ._units import parse_duration, parse_size

if TYPE_CHECKING:
    from ._cache import Cache

__all__ = [
    "COMMANDS",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_USAGE",
    "CacheSource",
    "add_commands",
    "click_command",
    "handle",
    "parse_duration",
    "parse_size",
    "run",
]

#: What ``cache=`` accepts: a :class:`safecache.Cache`, or a callable that
#: returns one (called once each time a command runs, never while parsing).
CacheSource = Union["Cache", Callable[[], "Cache"]]

_RUNNER = "safecache_runner"  # the Namespace attribute handle() looks for


class _Runner:
    """Bound to the parser of the cache commands: knows the cache and how to
    print that parser's help when no command was given."""

    def __init__(self, parser: argparse.ArgumentParser, cache: CacheSource) -> None:
        self.parser = parser
        self.cache = cache

    def __call__(self, args: argparse.Namespace) -> int:
        if getattr(args, "safecache_command", None) is None:
            self.parser.print_help(sys.stderr)
            return EXIT_USAGE
        return _cli_commands.run_guarded(lambda: _cli_commands.execute(args, self.cache))


def add_commands(
    parser: argparse.ArgumentParser | argparse._SubParsersAction[argparse.ArgumentParser],
    *,
    cache: CacheSource,
    prog: str | None = None,
    name: str = "cache",
    help: str = "inspect and look after the cache",
    commands: Sequence[str] = COMMANDS,
) -> argparse.ArgumentParser:
    """Add the cache commands to an ``argparse`` command line.

    ``parser`` is either the object ``ArgumentParser.add_subparsers()``
    returned (a sub-command ``name``, default ``"cache"``, is added to it,
    with ``help``, and the commands go under it: ``mytool cache clean``), or
    an ``ArgumentParser`` that receives the commands directly as its own
    sub-commands (it must not have sub-commands already).

    ``cache`` is the tool's :class:`safecache.Cache`, or a callable returning
    it (called when a command runs, so parsing opens nothing).  ``prog`` is
    how help and remedies name the commands (default: the parser's own
    ``prog``, e.g. ``"mytool cache"``).  ``commands`` chooses which of
    :data:`COMMANDS` to offer.

    Returns the parser that holds the commands.  After ``parse_args``, call
    :func:`handle` with the namespace to run the chosen command.  Option
    destinations all start with ``safecache_``, so they never clash with the
    tool's own.  Raises ``ValueError`` for an unknown command name.
    """
    if isinstance(parser, argparse._SubParsersAction):
        holder = parser.add_parser(name, help=help, description=help, epilog=_cli.EXIT_CODES_HELP)
    elif isinstance(parser, argparse.ArgumentParser):
        holder = parser
    else:
        raise TypeError(
            "add_commands() takes an argparse.ArgumentParser or the result of its add_subparsers(), "
            f"not {type(parser).__name__}"
        )
    _cli.add_subcommands(holder, prog=prog or holder.prog, app_name_option=False, commands=commands)
    holder.set_defaults(**{_RUNNER: _Runner(holder, cache)})
    return holder


def handle(args: argparse.Namespace) -> int | None:
    """Run the cache command that ``args`` selects and return its exit code
    (0 done or healthy, 1 problems found, 2 usage error); ``None`` when
    ``args`` did not come from the commands :func:`add_commands` added (the
    tool runs its own command then).

    Never raises ``SystemExit``.  Prints to ``sys.stdout`` (text, or one JSON
    document with ``--json``) and ``sys.stderr`` (progress on a terminal,
    errors).
    """
    runner = getattr(args, _RUNNER, None)
    if runner is None:
        return None
    result = runner(args)
    assert isinstance(result, int)
    return result


def run(argv: Sequence[str] | None = None, *, cache: CacheSource, prog: str = "cache") -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) as one cache command, such as
    ``["clean", "--json"]`` or ``["prune", "--older-than", "7d"]``, run it,
    and return its exit code (0, 1, or 2 for a usage error, after printing
    the usage; ``--help`` prints help and returns 0).

    ``cache`` and ``prog`` as for :func:`add_commands`.  Never raises
    ``SystemExit``.
    """
    parser = argparse.ArgumentParser(prog=prog, description="Inspect and look after the cache.",
                                     epilog=_cli.EXIT_CODES_HELP)
    add_commands(parser, cache=cache, prog=prog)
    args = _cli.parse(parser, argv)
    if isinstance(args, int):
        return args
    result = handle(args)
    assert result is not None
    return result


def click_command(*, cache: CacheSource, name: str = "cache", help: str = "Inspect and look after the cache.") -> Any:
    """A ``click`` command (for a ``click.Group``) that runs the cache commands.

    Every argument after ``name`` is handed to :func:`run` unchanged, so the
    options and exit codes are those of :func:`run`; ``--help`` lists the
    commands.  ``click`` is imported when this is called, never before.

    Example::

        @click.group()
        def main(): ...

        main.add_command(safecache.cli.click_command(cache=open_cache))
    """
    import importlib

    click: Any = importlib.import_module("click")

    def callback(arguments: tuple[str, ...]) -> None:
        context = click.get_current_context()
        code = run(list(arguments), cache=cache, prog=context.command_path)
        context.exit(code)

    return click.Command(
        name,
        callback=callback,
        params=[click.Argument(["arguments"], nargs=-1, type=click.UNPROCESSED)],
        help=help,
        add_help_option=False,
        context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "allow_interspersed_args": False},
    )
