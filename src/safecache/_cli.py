"""The ``safecache`` command line, and the engine behind :mod:`safecache.cli`.

Commands: ``dir``, ``info``, ``prune``, ``clean``, ``verify``, ``doctor``
(docs/cli.md).  Exit codes: 0 healthy / done, 1 problems found (doctor
unhealthy, corruption left unrepaired, an operation skipped or partial),
2 usage error.

Output: text for people, ``--json`` for programs (one document on stdout).
Progress is shown on stderr only when both stdout and stderr are terminals
and ``--json`` is off: with ``rich`` when it is installed and colour is
allowed, else as one plain line rewritten with carriage returns.  ``NO_COLOR``
(any non-empty value) or ``TERM=dumb`` means no ANSI escape at all.  ``rich``
is imported only when a progress bar is about to be shown.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
import time

from . import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import IO, Any

    from ._cache import Cache

    CacheSource = Cache | Callable[[], Cache]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2
#: Every command, in the order help lists them.
COMMANDS = ("dir", "info", "prune", "clean", "verify", "doctor")

# Every option's dest carries this prefix, so the commands can be added to a
# tool's own parser without clashing with (or, through argparse's copying of
# sub-parser defaults, overwriting) the tool's own options.
_P = "safecache_"

EXIT_CODES_HELP = "exit codes: 0 healthy or done, 1 problems found (or skipped, or partial), 2 usage error"


# -- parsing values ---------------------------------------------------------------------------
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([smhdw])", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``7d``, ``12h``, ``30m``, ``90s``,
    ``1.5h`` or ``1h30m`` (units s, m, h, d, w).  Raises ``ValueError`` with
    a message for people."""
    value = text.strip()
    hint = "use a number and a unit (s, m, h, d, w): 7d, 12h, 30m, 90s, 1h30m"
    if not value:
        raise ValueError(f"invalid duration {text!r}: {hint}")
    if re.fullmatch(r"\d+(?:\.\d+)?", value):
        raise ValueError(f"invalid duration {text!r}: a unit is needed ({value}s? {value}d?); {hint}")
    pos = 0
    total = 0.0
    for match in _DURATION_PART.finditer(value):
        if value[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        pos = match.end()
    if pos == 0 or value[pos:].strip():
        raise ValueError(f"invalid duration {text!r}: {hint}")
    return total


_SIZE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)\s*([a-z]*)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgtp", start=1):
    _SIZE_UNITS[_letter] = 1024**_i  # K, M, G: binary, as du, sort and truncate read them
    _SIZE_UNITS[_letter + "ib"] = 1024**_i  # KiB, MiB, GiB
    _SIZE_UNITS[_letter + "b"] = 1000**_i  # KB, MB, GB: decimal (SI)
del _i, _letter


def parse_size(text: str) -> int:
    """Bytes in a size such as ``500M``, ``2G``, ``1.5GiB``, ``100MB`` or
    ``1048576``.  ``K``/``M``/``G``/``T`` and ``KiB``/``MiB``/... are powers
    of 1024; ``KB``/``MB``/``GB``/``TB`` powers of 1000; a bare number is
    bytes.  Case-insensitive.  Raises ``ValueError`` with a message for people."""
    hint = "use bytes or a number and a unit: 500M, 2G, 1.5GiB, 100MB"
    match = _SIZE.fullmatch(text.strip())
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _SIZE_UNITS:
        raise ValueError(f"invalid size {text!r}: {hint}")
    value = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(value):
        raise ValueError(f"invalid size {text!r}: too large")
    return int(value)


def format_size(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units, one decimal (bytes as an integer)."""
    sign = "-" if n < 0 else ""
    n = abs(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{sign}{int(n)} B" if unit == "B" else f"{sign}{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _format_ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 36 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


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
    from ._maintenance import _parse_label

    _parse_label(text)
    return text


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"invalid timeout {text!r}: use a number of seconds (0 or more)")
    return value


# -- the parser -------------------------------------------------------------------------------
def _common(*, app_name: bool) -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", dest=_P + "cache_dir", metavar="DIR",
                        help="the cache root (default: as the program resolves it)" if not app_name
                        else "the cache root (default: SAFECACHE_DIR, else the user cache directory)")
    if app_name:
        common.add_argument("--app-name", dest=_P + "app_name", metavar="NAME",
                            help="resolve the location as this application would (its NAME_CACHE_DIR, its user cache dir)")
    common.add_argument("--json", dest=_P + "json", action="store_true", help="print one JSON document instead of text")
    return common


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
    helps = {
        "dir": "print the cache directory and what chose it",
        "info": "show size, entries, hit rate and errors per bucket",
        "prune": "remove old bucket versions, unused trees, leftovers; optionally by age or size",
        "clean": "remove everything, or the named buckets",
        "verify": "check every entry and tree against its checksum",
        "doctor": "check that every operation the cache needs works there, and say how to fix what does not",
    }
    made: dict[str, argparse.ArgumentParser] = {}
    for name in commands:
        made[name] = sub.add_parser(name, parents=[common], help=helps[name], description=helps[name],
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
        p.add_argument("--force", dest=_P + "force", action="store_true",
                       help="when the wait for processes using a tree runs out, remove it anyway")
        p.add_argument("--timeout", dest=_P + "timeout", metavar="SECONDS", type=_argtype(_positive_seconds, "seconds"),
                       default=60.0, help="how long to wait for processes using what is removed (default 60)")
    if "clean" in made:
        p = made["clean"]
        p.add_argument(_P + "buckets", nargs="*", metavar="BUCKET", type=_argtype(parse_bucket, "bucket"),
                       help="buckets to remove (NAME for all its versions, or NAME/vN); none: everything")
        p.add_argument("--yes", "-y", dest=_P + "yes", action="store_true",
                       help="do not ask for confirmation (asked only when removing everything from a terminal)")
        p.add_argument("--force", dest=_P + "force", action="store_true",
                       help="when the wait for processes using a tree runs out, remove it anyway")
        p.add_argument("--timeout", dest=_P + "timeout", metavar="SECONDS", type=_argtype(_positive_seconds, "seconds"),
                       default=60.0, help="how long to wait for processes using what is removed (default 60)")
    if "verify" in made:
        made["verify"].add_argument("--repair", dest=_P + "repair", action="store_true",
                                    help="remove every corrupt entry and tree found")
    if "doctor" in made:
        made["doctor"].add_argument("--target", dest=_P + "target", metavar="DIR",
                                    help="test link modes from the cache into DIR (default: the current directory)")
    parser.set_defaults(**{_P + "prog": prog})
    return parser


def _opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    return getattr(args, _P + name, default)


# -- terminals, colour, progress --------------------------------------------------------------
def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def ansi_allowed(stream: Any) -> bool:
    """Whether ANSI escapes may be written to ``stream``: a terminal, and
    neither ``NO_COLOR`` (any non-empty value, no-color.org) nor ``TERM=dumb``."""
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return _isatty(stream)


def _load_rich() -> tuple[Any, Any] | None:
    """``(rich.progress, rich.console)``, or None without rich."""
    import importlib

    try:
        return importlib.import_module("rich.progress"), importlib.import_module("rich.console")
    except ImportError:
        return None


class Progress:
    """A progress display for one long operation, used as a context manager
    and as the ``progress(done, total_or_None)`` callback of maintenance.

    ``style`` is ``"rich"``, ``"plain"`` or ``None`` (show nothing)."""

    def __init__(self, label: str, style: str | None, stream: IO[str], modules: tuple[Any, Any] | None = None) -> None:
        self.label = label
        self.style = "plain" if style == "rich" and modules is None else style
        self.stream = stream
        self._modules = modules
        self._rich: Any = None
        self._task: Any = None
        self._last = 0.0
        self._shown = ""

    @classmethod
    def for_command(cls, label: str, *, json_output: bool) -> Progress:
        """The display a command should use: none unless stdout and stderr
        are terminals and the output is text; rich when it is installed and
        ANSI is allowed; else plain text."""
        out, err = sys.stdout, sys.stderr
        if json_output or not (_isatty(out) and _isatty(err)):
            return cls(label, None, err)
        if ansi_allowed(err):
            modules = _load_rich()
            if modules is not None:
                return cls(label, "rich", err, modules)
        return cls(label, "plain", err)

    def __enter__(self) -> Progress:
        if self.style == "rich" and self._modules is not None:
            rp, rc = self._modules
            console = rc.Console(file=self.stream)
            self._rich = rp.Progress(
                rp.SpinnerColumn(),
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                console=console,
                transient=True,
                redirect_stdout=False,
                redirect_stderr=False,
            )
            self._rich.start()
            self._task = self._rich.add_task(self.label, total=None)
        elif self.style == "plain":
            self._write(f"{self.label}...")
        return self

    def __call__(self, done: int, total: int | None = None) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=done, total=total)
        elif self.style == "plain":
            now = time.monotonic()
            if now - self._last < 0.1 and (total is None or done < total):
                return
            self._last = now
            if total:
                self._write(f"{self.label}: {done}/{total} ({100 * done // max(total, 1)}%)")
            else:
                self._write(f"{self.label}: {done}")

    def _write(self, text: str) -> None:
        pad = " " * max(0, len(self._shown) - len(text))
        try:
            self.stream.write(f"\r{text}{pad}")
            self.stream.flush()
        except (OSError, ValueError):
            pass
        self._shown = text

    def __exit__(self, *exc: object) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
        elif self.style == "plain" and self._shown:
            # Leave the line clean for the summary that follows.
            self._write("")
            try:
                self.stream.write("\r")
                self.stream.flush()
            except (OSError, ValueError):
                pass


# -- running ------------------------------------------------------------------------------------
class _Context:
    """What a command needs: the parsed options, the cache, and how to print."""

    def __init__(self, args: argparse.Namespace, cache: Cache) -> None:
        self.args = args
        self.cache = cache
        self.json = bool(_opt(args, "json"))
        self.prog = str(_opt(args, "prog") or "safecache")
        self.color = not self.json and ansi_allowed(sys.stdout)

    def emit(self, doc: dict[str, object], text: str) -> None:
        if self.json:
            print(json.dumps(doc, indent=2, default=str))
        else:
            print(text)

    def progress(self, label: str) -> Progress:
        return Progress.for_command(label, json_output=self.json)


def _open_cache(args: argparse.Namespace, source: CacheSource | None) -> tuple[Cache, bool]:
    """The cache the command works on, and whether the command owns it (and closes it)."""
    from ._cache import Cache
    from ._location import Location

    cache_dir = _opt(args, "cache_dir")
    if source is None:
        cache = Cache(cache_dir, app_name=_opt(args, "app_name"), auto_trim=False)
        owned = True
    else:
        given = source if isinstance(source, Cache) else source()
        if not isinstance(given, Cache):
            raise TypeError(f"cache must be a safecache.Cache or a callable returning one, not {type(given).__name__}")
        if cache_dir is None:
            return given, False
        cache = Cache(
            cache_dir,
            app_name=given.app_name,
            durable=given.durable,
            retry_budget=given.retry_budget,
            lock_timeout=given.lock_timeout,
            max_size=given.max_size,
            max_age=given.max_age,
            trim_interval=given.trim_interval,
            auto_trim=False,
        )
        owned = True
    if cache_dir and cache.path is not None:
        cache.location = Location(cache.path, "the --cache-dir option")
    return cache, owned


def execute(args: argparse.Namespace, source: CacheSource | None = None) -> int:
    """Run the command chosen in ``args`` (parsed by a parser that
    :func:`add_subcommands` built); return its exit code."""
    import warnings

    command = _opt(args, "command")
    if command not in COMMANDS:
        return EXIT_USAGE
    with warnings.catch_warnings():
        # The commands report problems themselves; the library's warnings would repeat them.
        warnings.simplefilter("ignore")
        cache, owned = _open_cache(args, source)
        try:
            ctx = _Context(args, cache)
            handler = _HANDLERS[command]
            return handler(ctx)
        finally:
            if owned:
                cache.close()


def _disabled(ctx: _Context, command: str) -> int:
    """A maintenance command on a cache that is off: nothing done (exit 1)."""
    reason = f"caching is off ({ctx.cache.location.source}): nothing to {command}"
    ctx.emit({"command": command, "path": None, "ok": False, "skipped_reason": reason}, reason)
    return EXIT_PROBLEMS


def _cmd_dir(ctx: _Context) -> int:
    cache = ctx.cache
    ctx.emit(
        {"path": cache.path, "source": cache.location.source, "state": cache.state},
        cache.path if cache.path is not None else f"(disabled: {cache.location.source})",
    )
    return EXIT_OK


def _cmd_info(ctx: _Context) -> int:
    from . import _maintenance

    cache = ctx.cache
    if cache.path is None:
        doc: dict[str, object] = {"path": None, "state": cache.state, "source": cache.location.source}
        ctx.emit(doc, f"cache: (disabled: {cache.location.source})")
        return EXIT_OK
    data = dict(_maintenance.info(cache))
    data.setdefault("source", cache.location.source)
    ctx.emit(data, _render_info(data))
    return EXIT_OK


def _num(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _render_info(data: dict[str, object]) -> str:
    size, entries, limit = _num(data.get("size")), _num(data.get("entries")), data.get("max_size")
    lines = [f"cache:      {data.get('path')} ({data.get('state')})"]
    if data.get("source"):
        lines.append(f"chosen by:  {data['source']}")
    if isinstance(limit, int) and limit > 0:
        lines.append(f"size:       {format_size(size)} of a {format_size(limit)} limit ({100 * size / limit:.1f} %)")
    else:
        lines.append(f"size:       {format_size(size)} (no limit)")
    lines.append(f"entries:    {entries:,}")
    last = data.get("last_trim")
    if isinstance(last, (int, float)) and not isinstance(last, bool) and last > 0:
        lines.append(f"last trim:  {_format_ago(max(0.0, time.time() - float(last)))}")
    elif last:
        lines.append(f"last trim:  {last}")
    else:
        lines.append("last trim:  never")
    buckets = data.get("buckets")
    if not isinstance(buckets, dict) or not buckets:
        lines.append("")
        lines.append("no buckets yet")
        return "\n".join(lines)
    rows = [("BUCKET", "SIZE", "ENTRIES", "HIT RATE", "HITS", "MISSES", "ERRORS")]
    for label in sorted(buckets):
        b = buckets[label] if isinstance(buckets[label], dict) else {}
        rate = b.get("hit_rate")
        hits, misses = _num(b.get("hits")), _num(b.get("misses"))
        if not isinstance(rate, (int, float)) or isinstance(rate, bool):
            rate = hits / (hits + misses) if hits + misses else None
        errors = b.get("errors") if isinstance(b.get("errors"), dict) else {}
        assert isinstance(errors, dict)
        error_text = ", ".join(f"{cause}: {n}" for cause, n in sorted(errors.items(), key=lambda kv: (-_num(kv[1]), kv[0]))
                               if _num(n)) or "-"
        rows.append((
            str(label), format_size(_num(b.get("size"))), f"{_num(b.get('entries')):,}",
            "-" if rate is None else f"{100 * float(rate):.1f} %", f"{hits:,}", f"{misses:,}", error_text,
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    lines.append("")
    for row in rows:
        cells = [cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("  ".join(cells) + "  " + row[-1])
    return "\n".join(lines)


def _report_doc(command: str, ctx: _Context, report: Any, ok: bool) -> dict[str, object]:
    doc: dict[str, object] = {"command": command, "path": ctx.cache.path, "ok": ok}
    doc.update(report.as_dict())
    return doc


def _unrepaired(problems: list[dict[str, object]]) -> list[dict[str, object]]:
    return [p for p in problems if not p.get("repaired")]


#: Text output lists at most this many problems (``--json`` lists them all).
MAX_PROBLEMS_SHOWN = 20


def _count(n: int, one: str, many: str) -> str:
    return f"{n:,} {one if n == 1 else many}"


def _summary(command: str, report: Any, *, repair: bool = False) -> str:
    lines = []
    removed = []
    if report.removed_entries:
        removed.append(_count(report.removed_entries, "entry", "entries"))
    if report.removed_trees:
        removed.append(_count(report.removed_trees, "tree", "trees"))
    if report.removed_temp:
        removed.append(_count(report.removed_temp, "leftover", "leftovers") + " of dead processes")
    if removed:
        lines.append(f"removed {', '.join(removed)}; freed {format_size(report.freed_bytes)}")
    elif command != "verify" and not report.skipped_reason:
        lines.append("nothing to remove")
    if report.kept_in_use:
        lines.append(f"kept {_count(report.kept_in_use, 'tree', 'trees')} in use by other processes "
                     "(run again later, or use --force)")
    for problem in report.problems[:MAX_PROBLEMS_SHOWN]:
        what = problem.get("path") or problem.get("bucket") or "?"
        state = " (removed)" if problem.get("repaired") else ""
        lines.append(f"{problem.get('kind', 'problem')}: {what}: {problem.get('reason', '')}{state}")
    hidden = len(report.problems) - MAX_PROBLEMS_SHOWN
    if hidden > 0:
        lines.append(f"... and {hidden:,} more (--json lists them all)")
    if command == "verify":
        found = _count(len(report.problems), "problem", "problems")
        if not report.problems:
            lines.append("no corruption found")
        elif not _unrepaired(report.problems):
            lines.append(f"{found} found, all repaired")
        elif repair:
            lines.append(f"{found} found; {len(_unrepaired(report.problems)):,} could not be repaired")
        else:
            lines.append(f"{found} found: run `verify --repair` to remove them")
    if report.skipped_reason:
        lines.append(f"skipped: {report.skipped_reason}")
    return "\n".join(lines)


def _finish(ctx: _Context, command: str, report: Any, *, repair: bool = False) -> int:
    from ._location import DISABLED

    if command == "verify":
        # A read-only cache is verified but not repaired (skipped_reason says
        # so): fine when nothing needed repairing.  A disabled one is not verified.
        ok = not _unrepaired(report.problems) and not (report.skipped_reason and ctx.cache.state == DISABLED)
    else:
        ok = not report.skipped_reason and not report.problems and not report.kept_in_use
    text = _summary(command, report, repair=repair)
    if ctx.prog != "safecache":
        text = text.replace("`verify --repair`", f"`{ctx.prog} verify --repair`")
    else:
        text = text.replace("`verify --repair`", "`safecache verify --repair`")
    ctx.emit(_report_doc(command, ctx, report, ok), text)
    return EXIT_OK if ok else EXIT_PROBLEMS


def _cmd_prune(ctx: _Context) -> int:
    from . import _maintenance

    if ctx.cache.path is None:
        return _disabled(ctx, "prune")
    args = ctx.args
    if _nothing_stored(ctx.cache):
        report = _maintenance.Report()  # not "skipped": there is nothing to prune
        return _finish(ctx, "prune", report)
    with ctx.progress("pruning") as progress:
        report = _maintenance.prune(
            ctx.cache,
            ci=bool(_opt(args, "ci")),
            older_than=_opt(args, "older_than"),
            max_size=_opt(args, "max_size"),
            buckets=_opt(args, "buckets") or None,
            force=bool(_opt(args, "force")),
            timeout=float(_opt(args, "timeout", 60.0)),
            progress=progress,
        )
    return _finish(ctx, "prune", report)


def _nothing_stored(cache: Cache) -> bool:
    """A writable cache whose buckets directory does not exist (yet)."""
    from ._layout import BUCKETS as BUCKETS_DIR
    from ._location import READY

    assert cache.path is not None
    return cache.state == READY and not os.path.lexists(os.path.join(cache.path, BUCKETS_DIR))


def _holding(cache: Cache) -> str:
    """`` (12.5 MiB, 1,024 entries)``: what clean would remove, from the counters."""
    from . import _maintenance

    try:
        data = _maintenance.info(cache)
    except Exception:  # noqa: BLE001 - only a hint in a question
        return ""
    return f" ({format_size(_num(data.get('size')))}, {_count(_num(data.get('entries')), 'entry', 'entries')})"


def _confirm(question: str) -> bool:
    try:
        sys.stderr.write(f"{question} [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in ("y", "yes")


def _cmd_clean(ctx: _Context) -> int:
    from . import _maintenance

    if ctx.cache.path is None:
        return _disabled(ctx, "clean")
    args = ctx.args
    buckets = list(_opt(args, "buckets") or [])
    if not buckets and not _opt(args, "yes") and _isatty(sys.stdin):
        if not _confirm(f"Remove every entry and tree in {ctx.cache.path}{_holding(ctx.cache)}?"):
            reason = "not confirmed"
            ctx.emit({"command": "clean", "path": ctx.cache.path, "ok": False, "skipped_reason": reason},
                     "nothing removed (not confirmed; --yes skips the question)")
            return EXIT_PROBLEMS
    with ctx.progress("cleaning") as progress:
        report = _maintenance.clean(
            ctx.cache,
            buckets=buckets or None,
            force=bool(_opt(args, "force")),
            timeout=float(_opt(args, "timeout", 60.0)),
            progress=progress,
        )
    return _finish(ctx, "clean", report)


def _cmd_verify(ctx: _Context) -> int:
    from . import _maintenance

    if ctx.cache.path is None:
        return _disabled(ctx, "verify")
    repair = bool(_opt(ctx.args, "repair"))
    with ctx.progress("verifying") as progress:
        report = _maintenance.verify(ctx.cache, repair=repair, progress=progress)
    return _finish(ctx, "verify", report, repair=repair)


def _cmd_doctor(ctx: _Context) -> int:
    from ._doctor import diagnose, render

    report = diagnose(ctx.cache, target=_opt(ctx.args, "target"), prog=ctx.prog)
    ctx.emit(report.as_dict(), render(report, color=ctx.color))
    return EXIT_OK if report.healthy else EXIT_PROBLEMS


_HANDLERS: dict[str, Callable[[_Context], int]] = {
    "dir": _cmd_dir,
    "info": _cmd_info,
    "prune": _cmd_prune,
    "clean": _cmd_clean,
    "verify": _cmd_verify,
    "doctor": _cmd_doctor,
}


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace | int:
    """Parse ``argv``; an exit code instead when argparse would exit (usage error: 2, --help: 0)."""
    try:
        return parser.parse_args(None if argv is None else list(argv))
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (EXIT_OK if code is None else EXIT_USAGE)


def run_guarded(call: Callable[[], int]) -> int:
    """Run a command: Ctrl-C exits 130 quietly; a maintenance error the
    command could not report exits 1 with a message."""
    try:
        return call()
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except OSError as exc:
        if isinstance(exc, BrokenPipeError):
            raise
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_PROBLEMS


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safecache",
        description="Inspect and look after a safecache cache.",
        epilog=EXIT_CODES_HELP,
    )
    parser.add_argument("--version", action="version", version=f"safecache {__version__}")
    add_subcommands(parser, prog="safecache", app_name_option=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``safecache`` command: returns the exit code."""
    parser = _parser()
    args = parse(parser, argv)
    if isinstance(args, int):
        return args
    if _opt(args, "command") is None:
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
