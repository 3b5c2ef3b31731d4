#!/usr/bin/env python3
"""safecache's performance suite: every section in one run, one results file,
and the report (docs/performance.md with plots in docs/perf/).

    .venv/bin/python bench/run.py                 # full run, recorded: bench/results/<UTC date>.json + docs
    .venv/bin/python bench/run.py --quick         # under two minutes, for everyday use
    .venv/bin/python bench/run.py --quick --smoke --json "$(mktemp -d)/smoke.json"   # what CI runs (via the test)

Sections: 1 workload (diskcache's benchmark_core), 2 floor (get/put against
the system calls), 3 large (streaming 100 MiB against cp and cat, peak
memory), 4 trees (placing 10,000 files against cp -r), 5 scale (1,000 vs
1,000,000 entries; info, trim and clean), 6 startup (import and `safecache
dir`), 7 contention (1-8 processes, same and disjoint keys), 8 memoize (a
warm call against a bare get), 9 entries (the writer against put, get_meta
against get, set_meta against a put), 10 remote (a remote hit against the
bare client, put with upload, a CI runner's fresh cache against a tar
restore; on loopback servers: nginx, redis-server, moto).
``--sections`` picks some (names or numbers).  Nothing here asserts on
times: a missed target is reported, never an error, and every target is
listed in every run (not measured, with the reason, when it was not).  The
run exits non-zero only if a section fails to run.  ``bench/compare.py OLD
NEW`` measures section 2's 1 KiB get/put against two source trees in one
run.

Levels: the default is the full run, which writes ``bench/results/<UTC
date>.json`` and regenerates ``docs/performance.md`` and ``docs/perf/*.png``.
``--quick`` writes ``bench/results/tmp/quick-<UTC date>.json`` and a report
in ``bench/results/tmp/`` (ignored by git) unless ``--report`` says where.
``--smoke`` (for CI) uses tiny sizes, no XFS mount, no profiling, and writes
no report unless ``--report`` is given.  The full run also profiles
(cProfile) what limits the missed targets; ``--quick --profile`` does too.  ``--report-only RESULTS.json``
regenerates the report from a results file without measuring (after
editing bench/notes/*.md).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import json
import os
import shutil
import sys
import tempfile
import time
import traceback

BENCH = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH)

from suite import RUN_ORDER, SECTIONS
from suite.common import REPO, Ctx, loadavg, machine, source_commit, unmeasured


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    ap.add_argument("--quick", action="store_true", help="smaller sizes and fewer rounds: under two minutes")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1-2 repetitions (CI: checks the suite runs)")
    ap.add_argument("--sections", help="comma-separated section names or numbers (default: all)")
    ap.add_argument("--dir", help="create the work directory under DIR (default: the system temp directory)")
    ap.add_argument("--keep", action="store_true", help="do not remove the work directory afterwards")
    ap.add_argument("--json", metavar="PATH", help="results file (default depends on the level, see below)")
    ap.add_argument("--report", metavar="PATH", help="write the Markdown report here (plots beside it in perf/)")
    ap.add_argument("--no-report", action="store_true", help="write no report")
    ap.add_argument("--plots-dir", metavar="DIR", help="where the PNG plots go (default: perf/ beside the report)")
    ap.add_argument("--no-plots", action="store_true", help="skip the plots")
    ap.add_argument("--no-xfs", action="store_true", help="trees: skip the loop-mounted XFS image")
    ap.add_argument("--profile", action="store_true", help="also profile in a --quick run (the full run always does)")
    ap.add_argument("--no-profile", action="store_true", help="skip the cProfile runs of a full run")
    ap.add_argument(
        "--report-only", metavar="RESULTS", help="regenerate the report from a results file; measure nothing"
    )
    return ap.parse_args(argv)


def selected(spec: str | None) -> list[str]:
    if not spec:
        return list(RUN_ORDER)
    out = []
    for part in spec.split(","):
        part = part.strip()
        if part.isdigit() and 1 <= int(part) <= len(SECTIONS):
            out.append(SECTIONS[int(part) - 1])
        elif part in SECTIONS:
            out.append(part)
        else:
            raise SystemExit(f"unknown section {part!r}: choose from {', '.join(SECTIONS)} or 1-{len(SECTIONS)}")
    return [s for s in RUN_ORDER if s in out]


def default_paths(level: str, day: str) -> tuple[str, str | None]:
    results = os.path.join(BENCH, "results")
    if level == "full":
        return os.path.join(results, f"{day}.json"), os.path.join(REPO, "docs", "performance.md")
    if level == "quick":
        return os.path.join(results, "tmp", f"quick-{day}.json"), os.path.join(results, "tmp", "performance-quick.md")
    return os.path.join(results, "tmp", f"smoke-{day}.json"), None


def scrub(text: str, work: str) -> str:
    """No machine-specific paths in the results: the work directory, the
    checkout, the temp directory and the home directory become placeholders."""
    pairs = [(work, "<work>"), (REPO, "<repo>"), (tempfile.gettempdir(), "<tmp>"), (os.path.expanduser("~"), "<home>")]
    for path, placeholder in pairs:
        if path and len(path) > 1:
            text = text.replace(json.dumps(path)[1:-1], placeholder)
    return text


def write_report(results: dict, report: str, plots_dir: str | None, no_plots: bool) -> None:
    from suite import report as report_mod

    plots_dir = plots_dir or os.path.join(os.path.dirname(os.path.abspath(report)), "perf")
    report_mod.write(results, report, plots_dir, plots=not no_plots)
    print(
        f"report written to {os.path.relpath(report)}"
        + ("" if no_plots else f", plots in {os.path.relpath(plots_dir)}")
    )


def section_targets(name: str, res: dict | None) -> list[dict]:
    """A section's targets with their status; a section that was not run or
    failed still lists every target, as not measured, so that no target
    drops out of the report."""
    mod = importlib.import_module(f"suite.{name}")
    if res is not None and "error" not in res:
        return mod.targets(res)
    return unmeasured(mod.targets(None), "section not run" if res is None else "section failed in this run")


def refresh_targets(results: dict) -> None:
    """Recompute every section's targets from its figures."""
    results["targets"] = []
    for name in RUN_ORDER:
        res = results["sections"].get(name)
        found = section_targets(name, res)
        if res is not None:
            res["targets"] = found
        results["targets"].extend(found)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_only:
        with open(args.report_only, encoding="utf-8") as f:
            results = json.load(f)
        refresh_targets(results)  # the same figures; statuses as the current code words them
        with open(args.report_only, "w", encoding="utf-8") as f:
            f.write(json.dumps(results, indent=1, default=str) + "\n")
        report = args.report or default_paths(results["level"], results["utc"][:10])[1]
        if report is None:
            raise SystemExit("--report PATH is needed for a smoke results file")
        write_report(results, report, args.plots_dir, args.no_plots)
        return 0

    level = "smoke" if args.smoke else "quick" if args.quick else "full"
    now = _dt.datetime.now(_dt.timezone.utc)
    day = now.strftime("%Y-%m-%d")
    json_path, report = default_paths(level, day)
    json_path = args.json or json_path
    report = None if args.no_report else (args.report or report)
    names = selected(args.sections)

    parent = args.dir or tempfile.gettempdir()
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix="safecache-suite-", dir=parent)
    ctx = Ctx(
        level=level,
        work=work,
        xfs=not args.no_xfs and level != "smoke",
        profile=(level == "full" and not args.no_profile) or (level == "quick" and args.profile),
    )
    started = time.monotonic()
    results: dict = {
        "suite": "bench/run.py",
        "level": level,
        "utc": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "argv": sys.argv[1:] if argv is None else list(argv),
        "source_commit": source_commit(),
        "machine": machine(work),
        "environment": {
            "PYTHONDONTWRITEBYTECODE_in_env": os.environ.get("PYTHONDONTWRITEBYTECODE"),
            "note": "timed child processes run without PYTHONDONTWRITEBYTECODE (bytecode compiled first)",
        },
        "sections": {},
        "targets": [],
    }
    results["machine"]["loadavg_before"] = loadavg()
    print(f"safecache performance suite, {level} run; work directory {work}", flush=True)
    print(f"load average before: {results['machine']['loadavg_before']}", flush=True)
    failed = []
    try:
        for name in names:
            mod = importlib.import_module(f"suite.{name}")
            print(f"\n== {mod.TITLE}", flush=True)
            t0 = time.monotonic()
            load0 = loadavg()
            try:
                res = mod.run(ctx)
            except Exception:  # noqa: BLE001 - the other sections still run; the exit status says it failed
                traceback.print_exc()
                res = {"error": traceback.format_exc(limit=8)}
                failed.append(name)
            res["targets"] = section_targets(name, res)
            res["seconds"] = round(time.monotonic() - t0, 1)
            res["loadavg_before"], res["loadavg_after"] = load0, loadavg()
            results["sections"][name] = res
            for t in res["targets"]:
                print(f"  target: {t['target']}: {t['status']}", flush=True)
            print(f"  ({res['seconds']} s)", flush=True)
    finally:
        if args.keep:
            print(f"work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    refresh_targets(results)  # every section's, the ones not run included
    results["machine"]["loadavg_after"] = loadavg()
    results["seconds"] = round(time.monotonic() - started, 1)
    results["notes"] = ctx.notes

    text = scrub(json.dumps(results, indent=1, default=str), work)
    os.makedirs(os.path.dirname(os.path.abspath(json_path)), exist_ok=True)
    with open(json_path, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(
        f"\n{results['seconds']} s; load average before {results['machine']['loadavg_before']}, "
        f"after {results['machine']['loadavg_after']}; results written to {os.path.relpath(json_path)}"
    )
    if report:
        write_report(json.loads(text), report, args.plots_dir, args.no_plots)
    if failed:
        print(f"FAILED sections: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
