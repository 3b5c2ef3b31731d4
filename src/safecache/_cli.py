"""The ``safecache`` command line.

Exit codes: 0 healthy / done, 1 problems found, 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

from . import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safecache", description="Inspect and look after a safecache cache.")
    parser.add_argument("--version", action="version", version=f"safecache {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", help="the cache root (default: SAFECACHE_DIR, else the user cache directory)")
    common.add_argument("--app-name", help="resolve the location as this application would (its NAME_CACHE_DIR, its user cache dir)")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("dir", parents=[common], help="print the cache directory and what chose it")
    sub.add_parser("doctor", parents=[common], help="check that every operation the cache needs works there")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors, 0 for --help
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    import warnings

    from ._cache import Cache

    with warnings.catch_warnings():
        # The command reports problems itself; the library's warnings would repeat them.
        warnings.simplefilter("ignore")
        cache = Cache(args.cache_dir, app_name=args.app_name)
        if args.cache_dir and cache.path is not None:
            from ._location import Location

            cache.location = Location(cache.path, "the --cache-dir option")
        if args.command == "dir":
            if args.json:
                print(json.dumps({"path": cache.path, "source": cache.location.source, "state": cache.state}))
            else:
                print(cache.path if cache.path is not None else f"(disabled: {cache.location.source})")
            return 0
        from ._doctor import diagnose, render

        report = diagnose(cache)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(render(report))
    return 0 if report.healthy else 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
