"""What each command does: open the cache, call the public library, print the result.

The commands call only the public :mod:`safecache.maintenance` and
:mod:`safecache.doctor`, each imported when its command runs (so
``safecache dir`` never loads maintenance).  Exit codes: 0 healthy / done,
1 problems found (doctor unhealthy, corruption left unrepaired, an operation
skipped or partial), 2 usage error.  The grammar that fills ``args`` is
:mod:`._cli`; the text is :mod:`._cli_format`.
"""

from __future__ import annotations

import json
import os
import sys

from . import _layout, _location
from ._cli_format import count, num, render_info, summary
from ._progress import Progress, ansi_allowed, isatty
from ._units import format_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from collections.abc import Callable
    from typing import Any

    from ._cache import Cache
    from .maintenance import Report

    CacheSource = Cache | Callable[[], Cache]

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_USAGE = 2

# Every option's dest carries this prefix, so the commands can be added to a
# tool's own parser without clashing with (or, through argparse's copying of
# sub-parser defaults, overwriting) the tool's own options.
OPTION_PREFIX = "safecache_"


def opt(args: argparse.Namespace, name: str, default: Any = None) -> Any:
    """The value of option ``name`` (without the prefix) in ``args``."""
    return getattr(args, OPTION_PREFIX + name, default)


class _Context:
    """What a command needs: the parsed options, the cache, and how to print."""

    def __init__(self, args: argparse.Namespace, cache: Cache) -> None:
        self.args = args
        self.cache = cache
        self.json = bool(opt(args, "json"))
        self.prog = str(opt(args, "prog") or "safecache")
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

    cache_dir = opt(args, "cache_dir")
    if source is None:
        cache = Cache(cache_dir, app_name=opt(args, "app_name"), auto_trim=False)
        owned = True
    else:
        given = source if isinstance(source, Cache) else source()
        if not isinstance(given, Cache):
            raise TypeError(f"cache must be a safecache.Cache or a callable returning one, not {type(given).__name__}")
        if cache_dir is None:
            return given, False
        # The tool's own cache, moved: every setting but the location
        # (its trust mode and its variable's name included, so doctor checks
        # the right rules and names the right variable).
        cache = Cache(
            cache_dir,
            app_name=given.app_name,
            env_var=given.env_var,
            durable=given.durable,
            retry_budget=given.retry_budget,
            lock_timeout=given.lock_timeout,
            max_size=given.max_size,
            max_age=given.max_age,
            trim_interval=given.trim_interval,
            auto_trim=False,
            shared=given.shared,
        )
        owned = True
    if cache_dir and cache.path is not None:
        cache.location = _location.Location(cache.path, "the --cache-dir option")
    return cache, owned


def execute(args: argparse.Namespace, source: CacheSource | None = None) -> int:
    """Run the command chosen in ``args`` (parsed by a parser that
    :func:`._cli.add_subcommands` built); return its exit code."""
    import warnings

    command = opt(args, "command")
    if command not in HANDLERS:
        return EXIT_USAGE
    with warnings.catch_warnings():
        # The commands report problems themselves; the library's warnings would repeat them.
        warnings.simplefilter("ignore")
        cache, owned = _open_cache(args, source)
        try:
            ctx = _Context(args, cache)
            handler = HANDLERS[command]
            return handler(ctx)
        finally:
            if owned:
                cache.close()


def _why(cache: Cache) -> str:
    """Why the cache is not ready (disabled or read-only), for people; ``""`` when it is."""
    if cache.state == _location.READY:
        return ""
    return cache.state_reason or cache.location.source


def _disabled(ctx: _Context, command: str) -> int:
    """A maintenance command on a cache that is off: nothing done (exit 1)."""
    reason = f"caching is off ({_why(ctx.cache)}): nothing to {command}"
    ctx.emit({"command": command, "path": None, "ok": False, "skipped_reason": reason}, reason)
    return EXIT_PROBLEMS


def _cmd_dir(ctx: _Context) -> int:
    cache = ctx.cache
    doc: dict[str, object] = {"path": cache.path, "source": cache.location.source, "state": cache.state}
    why = _why(cache)
    if why:
        doc["reason"] = why
    if cache.path is None:
        ctx.emit(doc, f"(disabled: {why})")
        return EXIT_OK
    ctx.emit(doc, cache.path)  # stdout stays the path alone: scripts use it
    if why and not ctx.json:
        sys.stderr.write(f"{ctx.prog}: the cache is {cache.state}: {why}\n")
    return EXIT_OK


def _cmd_info(ctx: _Context) -> int:
    from . import maintenance

    cache = ctx.cache
    why = _why(cache)
    if cache.path is None:
        doc: dict[str, object] = {"path": None, "state": cache.state, "source": cache.location.source, "reason": why}
        ctx.emit(doc, f"cache: (disabled: {why})")
        return EXIT_OK
    data = dict(maintenance.info(cache))
    data.setdefault("source", cache.location.source)
    if why:
        data["reason"] = why
    ctx.emit(data, render_info(data))
    return EXIT_OK


def _report_doc(command: str, ctx: _Context, report: Report, ok: bool) -> dict[str, object]:
    doc: dict[str, object] = {"command": command, "path": ctx.cache.path, "ok": ok}
    doc.update(report.as_dict())
    return doc


def _finish(
    ctx: _Context, command: str, report: Report, *, repair: bool = False, not_found: list[str] | None = None
) -> int:
    if command == "verify":
        # As fsck: 1 whenever something was found, repaired or not (a CI step
        # must notice that its cache was damaged).  A read-only cache is
        # verified but not repaired (skipped_reason says so): fine when
        # nothing was found.  A disabled one is not verified.
        ok = not report.problems and not (report.skipped_reason and ctx.cache.state == _location.DISABLED)
    else:
        ok = not report.skipped_reason and not report.problems and not report.kept_in_use
    text = summary(command, report, repair=repair)
    if not_found:
        text += "\n" + _not_found_text(ctx.cache, not_found)
    text = text.replace("`verify --repair`", f"`{ctx.prog} verify --repair`")
    doc = _report_doc(command, ctx, report, ok)
    if not_found is not None:
        doc["not_found"] = not_found
    ctx.emit(doc, text)
    return EXIT_OK if ok else EXIT_PROBLEMS


def _not_found(cache: Cache, selection: list[str]) -> list[str]:
    """The bucket selections (``NAME``, ``NAME/vN``) that match nothing on disk."""
    from . import maintenance

    if not selection or cache.state == _location.DISABLED:
        return []  # a disabled cache says why it did nothing
    on_disk = set(maintenance.list_buckets(cache))
    names = {name for name, _version in on_disk}
    missing = []
    for spec in selection:
        name, version = _layout.parse_label(spec)
        if (name not in names) if version is None else ((name, version) not in on_disk):
            missing.append(spec)
    return missing


def _not_found_text(cache: Cache, missing: list[str]) -> str:
    from . import maintenance

    held = sorted({_layout.label(name, version) for name, version in maintenance.list_buckets(cache)})
    which = ", ".join(missing)
    there = f"its buckets: {', '.join(held)}" if held else "it holds no buckets"
    return f"no bucket {which} in this cache ({there})"


def _cmd_prune(ctx: _Context) -> int:
    from . import maintenance

    if ctx.cache.path is None:
        return _disabled(ctx, "prune")
    args = ctx.args
    selection = list(opt(args, "buckets") or [])
    not_found = _not_found(ctx.cache, selection)
    if _nothing_stored(ctx.cache):
        report = maintenance.Report()  # not "skipped": there is nothing to prune
        return _finish(ctx, "prune", report, not_found=not_found)
    with ctx.progress("pruning") as progress:
        report = maintenance.prune(
            ctx.cache,
            ci=bool(opt(args, "ci")),
            older_than=opt(args, "older_than"),
            max_size=opt(args, "max_size"),
            buckets=selection or None,
            force=bool(opt(args, "force")),
            timeout=float(opt(args, "timeout", 60.0)),
            progress=progress,
        )
    return _finish(ctx, "prune", report, not_found=not_found)


def _nothing_stored(cache: Cache) -> bool:
    """A writable cache whose buckets directory does not exist (yet)."""
    assert cache.path is not None
    return cache.state == _location.READY and not os.path.lexists(_layout.buckets_dir(cache.path))


def _holding(cache: Cache) -> str:
    """`` (12.5 MiB, 1,024 entries)``: what clean would remove, from the counters."""
    from . import maintenance

    try:
        data = maintenance.info(cache)
    except Exception:  # noqa: BLE001 - only a hint in a question
        return ""
    return f" ({format_size(num(data.get('size')))}, {count(num(data.get('entries')), 'entry', 'entries')})"


def _confirm(question: str) -> bool:
    try:
        sys.stderr.write(f"{question} [y/N] ")
        sys.stderr.flush()
        answer = sys.stdin.readline()
    except (OSError, ValueError):
        return False
    return answer.strip().lower() in ("y", "yes")


def _cmd_clean(ctx: _Context) -> int:
    from . import maintenance

    if ctx.cache.path is None:
        return _disabled(ctx, "clean")
    args = ctx.args
    buckets = list(opt(args, "buckets") or [])
    if not buckets and not opt(args, "yes") and isatty(sys.stdin):
        if not _confirm(f"Remove every entry and tree in {ctx.cache.path}{_holding(ctx.cache)}?"):
            reason = "not confirmed"
            ctx.emit({"command": "clean", "path": ctx.cache.path, "ok": False, "skipped_reason": reason},
                     "nothing removed (not confirmed; --yes skips the question)")
            return EXIT_PROBLEMS
    not_found = _not_found(ctx.cache, buckets)
    with ctx.progress("cleaning") as progress:
        report = maintenance.clean(
            ctx.cache,
            buckets=buckets or None,
            force=bool(opt(args, "force")),
            timeout=float(opt(args, "timeout", 60.0)),
            progress=progress,
        )
    return _finish(ctx, "clean", report, not_found=not_found)


def _cmd_verify(ctx: _Context) -> int:
    from . import maintenance

    if ctx.cache.path is None:
        return _disabled(ctx, "verify")
    repair = bool(opt(ctx.args, "repair"))
    with ctx.progress("verifying") as progress:
        report = maintenance.verify(ctx.cache, repair=repair, progress=progress)
    return _finish(ctx, "verify", report, repair=repair)


def _cmd_doctor(ctx: _Context) -> int:
    from . import doctor

    report = doctor.diagnose(ctx.cache, target=opt(ctx.args, "target"), prog=ctx.prog)
    ctx.emit(report.as_dict(), doctor.render(report, color=ctx.color))
    return EXIT_OK if report.healthy else EXIT_PROBLEMS


#: Every command and what runs it, in the order help lists them.
HANDLERS: dict[str, Callable[[_Context], int]] = {
    "dir": _cmd_dir,
    "info": _cmd_info,
    "prune": _cmd_prune,
    "clean": _cmd_clean,
    "verify": _cmd_verify,
    "doctor": _cmd_doctor,
}


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
