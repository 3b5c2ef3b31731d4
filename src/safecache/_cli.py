"""The ``safecache`` command line, and the engine behind :mod:`safecache.cli`.

Commands: ``dir``, ``info``, ``prune``, ``clean``, ``verify``, ``doctor``
(docs/cli.md).  This module is the grammar (the commands, their options, how
values are read), shared by the ``safecache`` command (:func:`main`) and by
tools that embed the commands (:mod:`safecache.cli`).  What each command
does: :mod:`._cli_commands`.  Output: text for people, ``--json`` for
programs (one document on stdout); progress and colour: :mod:`._progress`.
"""

from __future__ import annotations

import argparse
import math
import os
import sys

from . import _layout, _version
from ._cli_commands import EXIT_OK, EXIT_PROBLEMS, EXIT_USAGE, HANDLERS, execute, opt, run_guarded
from ._cli_commands import OPTION_PREFIX as _P
from ._units import parse_duration, parse_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

#: Every command, in the order help lists them.
COMMANDS = tuple(HANDLERS)

EXIT_CODES_HELP = "exit codes: 0 healthy or done, 1 problems found (or skipped, or partial), 2 usage error"

_HELPS = {
    "dir": "print the cache directory and what chose it",
    "info": "show size, entries, hit rate and errors per bucket",
    "prune": "remove old bucket versions, unused trees, leftovers; optionally by age or size",
    "clean": "remove everything, or the named buckets",
    "verify": "check every entry and tree against its checksum",
    "doctor": "check that every operation the cache needs works there, and say how to fix what does not",
}


# -- values -----------------------------------------------------------------------------------
def _argtype(parse: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name  # argparse names the type in some messages
    return convert


def parse_bucket(text: str) -> str:
    """A bucket selection: ``NAME`` (every version) or ``NAME/vN``.  Raises
    ``ValueError`` with a message for people."""
    _layout.parse_label(text)
    return text


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value < 0:
        raise ValueError(f"invalid timeout {text!r}: a timeout cannot be negative; use a number of seconds (0 or more)")
    if not math.isfinite(value):
        raise ValueError(f"invalid timeout {text!r}: use a number of seconds (0 or more)")
    return value


def _directory(text: str) -> str:
    """A ``--cache-dir``: an empty one is refused (``--cache-dir "$UNSET"``
    would otherwise mean the current directory, and put a cache in it)."""
    if not text:
        raise ValueError("the path is empty (an unset variable?); give the cache directory, or leave the option out")
    return text


#: Options that take a value which may look like an option ("--older-than -1d"):
#: given as one argument, argparse hands the value to its type, which says
#: what is wrong with it (a negative duration) instead of "expected one argument".
_VALUE_OPTIONS = frozenset({"--older-than", "--max-size", "--timeout"})
#: Options every command takes, which go after the command.
_COMMON_OPTIONS = frozenset({"--cache-dir", "--app-name", "--json"})


# -- the parser -------------------------------------------------------------------------------
def _common(*, app_name: bool) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", dest=_P + "cache_dir", metavar="DIR", type=_argtype(_directory, "directory"),
                        help="the cache root (default: as the program resolves it)" if not app_name
                        else "the cache root (default: SAFECACHE_DIR, else the user cache directory)")
    if app_name:
        common.add_argument("--app-name", dest=_P + "app_name", metavar="NAME",
                            help="resolve the location as this application would (its NAME_CACHE_DIR, its user cache dir)")
    common.add_argument("--json", dest=_P + "json", action="store_true", help="print one JSON document instead of text")
    return common


def _add_removal_options(p: argparse.ArgumentParser) -> None:
    """--force and --timeout: what prune and clean do about trees in use."""
    p.add_argument("--force", dest=_P + "force", action="store_true",
                   help="when the wait for processes using a tree runs out, remove it anyway")
    p.add_argument("--timeout", dest=_P + "timeout", metavar="SECONDS", type=_argtype(_positive_seconds, "seconds"),
                   default=60.0, help="how long to wait for processes using what is removed (default 60)")


def add_subcommands(
    parser: argparse.ArgumentParser,
    *,
    prog: str,
    app_name_option: bool,
    commands: Sequence[str] = COMMANDS,
) -> argparse.ArgumentParser:
    """Add the commands to ``parser`` as sub-commands (dest ``safecache_command``)."""
    unknown = [c for c in commands if c not in COMMANDS]
    if unknown:
        raise ValueError(f"unknown commands {unknown}: choose from {', '.join(COMMANDS)}")
    common = _common(app_name=app_name_option)
    sub = parser.add_subparsers(dest=_P + "command", metavar="COMMAND", title="commands")
    made: dict[str, argparse.ArgumentParser] = {}
    for name in commands:
        made[name] = sub.add_parser(name, parents=[common], help=_HELPS[name], description=_HELPS[name],
                                    epilog=EXIT_CODES_HELP)
    if "prune" in made:
        p = made["prune"]
        p.add_argument("--ci", dest=_P + "ci", action="store_true",
                       help="also remove what was fetched (cheap to download again) and keep what was built")
        p.add_argument("--older-than", dest=_P + "older_than", metavar="DURATION", type=_argtype(parse_duration, "duration"),
                       help="also remove entries and trees not used for DURATION (7d, 12h, 30m, 90s)")
        p.add_argument("--max-size", dest=_P + "max_size", metavar="SIZE", type=_argtype(parse_size, "size"),
                       help="then trim, least recently used first, to at most SIZE (500M, 2G, 1.5GiB, bytes)")
        p.add_argument("--bucket", dest=_P + "buckets", metavar="NAME", action="extend", nargs="+",
                       type=_argtype(parse_bucket, "bucket"),
                       help="only these buckets (NAME for all its versions, or NAME/vN); may be repeated")
        _add_removal_options(p)
    if "clean" in made:
        p = made["clean"]
        p.add_argument(_P + "buckets", nargs="*", metavar="BUCKET", type=_argtype(parse_bucket, "bucket"),
                       help="buckets to remove (NAME for all its versions, or NAME/vN); none: everything")
        p.add_argument("--yes", "-y", dest=_P + "yes", action="store_true",
                       help="do not ask for confirmation (asked only when removing everything from a terminal)")
        _add_removal_options(p)
    if "verify" in made:
        made["verify"].add_argument("--repair", dest=_P + "repair", action="store_true",
                                    help="remove every corrupt entry and tree found")
    if "doctor" in made:
        made["doctor"].add_argument("--target", dest=_P + "target", metavar="DIR",
                                    help="test link modes from the cache into DIR (default: the current directory)")
    parser.set_defaults(**{_P + "prog": prog})
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parse ``argv``; an exit code instead when argparse would exit (usage error: 2, --help: 0)."""
    args = list(sys.argv[1:] if argv is None else argv)
    misplaced = _options_before_command(args, parser.prog)
    if misplaced:
        parser.print_usage(sys.stderr)
        sys.stderr.write(f"{parser.prog}: error: {misplaced}\n")
        return EXIT_USAGE
    try:
        return parser.parse_args(_join_values(args))
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)


def _options_before_command(args: list[str], prog: str) -> str:
    """``safecache --json info``: the common options belong to each command
    (argparse would only say "unrecognized arguments").  The message shows
    the command line that works; ``""`` when nothing is misplaced."""
    for i, token in enumerate(args):
        if token in COMMANDS:
            if not any(t.split("=", 1)[0] in _COMMON_OPTIONS for t in args[:i]):
                return ""
            import shlex

            fixed = " ".join(shlex.quote(t) for t in [token, *args[i + 1 :], *args[:i]])
            return f"options go after the command: {prog} {fixed}"
        if token == "--":
            return ""
    return ""


def _join_values(args: list[str]) -> list[str]:
    """``--older-than -1d`` as ``--older-than=-1d`` (see :data:`_VALUE_OPTIONS`)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        following = args[i + 1] if i + 1 < len(args) else ""
        if token in _VALUE_OPTIONS and following[:1] == "-" and (following[1:2].isdigit() or following[1:2] == "."):
            out.append(f"{token}={following}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safecache",
        description="Inspect and look after a safecache cache.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"safecache {_version.version()}")
    add_subcommands(parser, prog="safecache", app_name_option=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``safecache`` command: returns the exit code."""
    parser = _parser()
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    if opt(args, "command") is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    try:
        return run_guarded(lambda: execute(args))
    except BrokenPipeError:
        # The reader went away (`safecache info | head`): not an error of ours.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_PROBLEMS


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
