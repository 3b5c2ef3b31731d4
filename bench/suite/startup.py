"""Section 6: start-up: ``import safecache`` and ``safecache dir`` in a fresh
interpreter, against ``import diskcache`` and ``python -c pass``.

Bytecode is compiled first (``python -m compileall`` on safecache,
diskcache and platformdirs) and every command runs twice untimed, so no
run compiles anything.  ``PYTHONDONTWRITEBYTECODE`` is set in the
development environment this suite was written in: it is removed from the
timed children's environment, as it is absent from a user's.  The commands
run in interleaved rounds (A B C D, B C D A, ...); the figure is the median
wall time, and the cost of an import is its difference from ``-c pass``.
Cross-checks: the children's CPU time (``getrusage``) and ``-X importtime``
(cumulative figure of the top-level module).  ``safecache dir`` is the
console script the package installs, run once with no ``SAFECACHE_DIR``
(the platform's default location is resolved, which imports platformdirs)
and once with it set.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
from typing import Any

from .common import Ctx, child_env, iqr, md_table, optional_module, perf_ns, target

TITLE = "6. Start-up: import safecache and `safecache dir`, against import diskcache and python -c pass"
TARGETS = {"import_ms": 10.0, "import_ms_aim": 5.0, "import_vs_diskcache": 0.5}


def config(ctx: Ctx) -> dict[str, Any]:
    return ctx.pick(
        full={"runs": 30, "importtime_runs": 11},
        quick={"runs": 10, "importtime_runs": 3},
        smoke={"runs": 2, "importtime_runs": 1},
    )


def _children_cpu_ms() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (ru.ru_utime + ru.ru_stime) * 1000.0


def run(ctx: Ctx) -> dict[str, Any]:
    cfg = config(ctx)
    py = sys.executable
    cwd = ctx.subdir("startup")
    env = child_env()
    env.pop("SAFECACHE_DIR", None)
    env_set = child_env(SAFECACHE_DIR=os.path.join(cwd, "cache"))
    dirs = []
    for name in ("safecache", "diskcache", "platformdirs"):
        mod, _ = optional_module(name)
        if mod is not None:
            dirs.append(os.path.dirname(mod.__file__))
    subprocess.run([py, "-m", "compileall", "-q", *dirs], env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    script = shutil.which("safecache", path=os.path.dirname(py))
    dir_cmd = [script, "dir"] if script else [py, "-m", "safecache", "dir"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "python -c pass": ([py, "-c", "pass"], env),
        "import safecache": ([py, "-c", "import safecache"], env),
        "safecache dir": (dir_cmd, env),
        "safecache dir, SAFECACHE_DIR set": (dir_cmd, env_set),
    }
    dc, why = optional_module("diskcache")
    if dc is not None:
        commands["import diskcache"] = ([py, "-c", "import diskcache"], env)
    for argv, e in commands.values():  # check they work, and let any missing .pyc be written now
        for _ in range(2):
            subprocess.run(argv, env=e, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    names = list(commands)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    ctx.log(f"  [startup] {cfg['runs']} interleaved rounds of {len(names)} commands ...")
    for r in range(cfg["runs"]):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            argv, e = commands[name]
            c0 = _children_cpu_ms()
            t0 = perf_ns()
            subprocess.run(argv, env=e, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
            wall[name].append((perf_ns() - t0) / 1e6)
            cpu[name].append(_children_cpu_ms() - c0)

    def importtime(module: str) -> float | None:
        cums = []
        for _ in range(cfg["importtime_runs"]):
            res = subprocess.run(
                [py, "-X", "importtime", "-c", f"import {module}"],
                env=env,
                cwd=cwd,
                capture_output=True,
                text=True,
                check=True,
            )
            for line in res.stderr.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[2].strip() == module:
                    cums.append(int(parts[1]))
        return statistics.median(cums) / 1000.0 if cums else None

    def cli_imports() -> dict[str, Any]:
        """What `safecache dir` imports: -X importtime of the console script (median over runs of each
        module's self time), the top modules, and the cumulative figures of the big ones."""
        selfs: dict[str, list[int]] = {}
        cums: dict[str, list[int]] = {}
        argv = [py, "-X", "importtime", script, "dir"] if script else [py, "-X", "importtime", "-m", "safecache", "dir"]
        for _ in range(max(3, cfg["importtime_runs"])):
            res = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, check=True)
            for line in res.stderr.splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[0].startswith("import time:") and parts[1].strip().isdigit():
                    name = parts[2].strip()
                    selfs.setdefault(name, []).append(int(parts[0].split(":")[1]))
                    cums.setdefault(name, []).append(int(parts[1]))
        med_self = {k: statistics.median(v) / 1000 for k, v in selfs.items()}
        med_cum = {k: statistics.median(v) / 1000 for k, v in cums.items()}
        top = sorted(med_cum.items(), key=lambda kv: -kv[1])
        return {
            "total_self_ms": sum(med_self.values()),
            "top_cumulative": [{"module": k, "cumulative_ms": v, "self_ms": med_self[k]} for k, v in top[:14]],
        }

    med = {n: statistics.median(v) for n, v in wall.items()}
    cpu_med = {n: statistics.median(v) for n, v in cpu.items()}
    base = med["python -c pass"]
    results = {
        n: {
            "wall_ms": med[n],
            "wall_iqr_ms": iqr(wall[n]),
            "cpu_ms": cpu_med[n],
            "over_pass_ms": med[n] - base,
            "cpu_over_pass_ms": cpu_med[n] - cpu_med["python -c pass"],
            "runs_ms": wall[n],
        }
        for n in names
    }
    return {
        "config": cfg,
        "results": results,
        "missing": {"diskcache": why} if why else {},
        "dir_command": "console script `safecache dir`" if script else "`python -m safecache dir`",
        "importtime_ms": {
            "safecache": importtime("safecache"),
            "diskcache": importtime("diskcache") if dc is not None else None,
        },
        "cli_importtime": cli_imports(),
        "bytecode": "compileall on safecache, diskcache and platformdirs; PYTHONDONTWRITEBYTECODE removed from "
        "the timed children's environment",
        "pythondontwritebytecode_in_env": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }


def targets(result: dict[str, Any] | None) -> list[dict[str, Any]]:
    r = (result or {}).get("results", {})
    sc = r.get("import safecache", {}).get("over_pass_ms")
    dc = r.get("import diskcache", {}).get("over_pass_ms")
    return [
        target("6", "import safecache < 10 ms", sc, TARGETS["import_ms"], unit="ms", source="issue 2"),
        target("6", "import safecache < 5 ms (aim)", sc, TARGETS["import_ms_aim"], unit="ms", source="issue 2"),
        target(
            "6",
            "import safecache < 0.5x import diskcache",
            sc / dc if sc is not None and dc else None,
            TARGETS["import_vs_diskcache"],
            source="issue 2",
            note="" if dc else "diskcache not installed",
        ),
    ]


def markdown(result: dict[str, Any]) -> str:
    r = result["results"]
    base = r["python -c pass"]["wall_ms"]
    rows = []
    for name, e in r.items():
        rows.append(
            [
                f"`{name}`" if name != "python -c pass" else "`python -c pass`",
                f"{e['wall_ms']:.1f}",
                f"{e['wall_iqr_ms']:.1f}",
                "" if name == "python -c pass" else f"{e['over_pass_ms']:+.1f}",
                f"{e['cpu_ms']:.1f}",
                "" if name == "python -c pass" else f"{e['cpu_over_pass_ms']:+.1f}",
            ]
        )
    it = result["importtime_ms"]
    parts = [
        (
            f"Median of {result['config']['runs']} interleaved runs of each command (ms). `safecache dir` is the "
            f"{result['dir_command']}; {result['bytecode']} (it was {result['pythondontwritebytecode_in_env']!r} "
            "in the environment of this run)."
        ),
        md_table(["command", "wall", "IQR", "over `-c pass`", "CPU (children)", "CPU over `-c pass`"], rows, "lrrrrr"),
        "`-X importtime`, cumulative: "
        + ", ".join(f"{k} {v:.2f} ms" for k, v in it.items() if v is not None)
        + f". `python -c pass` took {base:.1f} ms.",
    ]
    cli = result.get("cli_importtime")
    if cli:
        rows = [[f"`{m['module']}`", f"{m['cumulative_ms']:.2f}", f"{m['self_ms']:.2f}"] for m in cli["top_cumulative"]]
        parts.append(
            f"What `safecache dir` (no `SAFECACHE_DIR`) imports, from `-X importtime` (median of runs; all "
            f"imports together {cli['total_self_ms']:.1f} ms, including those `python -c pass` makes), "
            "largest cumulative first:\n\n" + md_table(["module", "cumulative ms", "self ms"], rows, "lrr")
        )
    return "\n\n".join(parts)
