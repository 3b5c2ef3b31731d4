"""The performance suite still runs: ``bench/run.py --quick --smoke`` (tiny
sizes, one or two repetitions, no XFS mount, no profiling) exits 0 and
writes a results file with every section, and its report lists every
target, measured or not; ``bench/compare.py --smoke`` compares two source
trees.  Nothing here looks at a timing: speed is reported by the suite,
never asserted (docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
COMPARE = ROOT / "bench" / "compare.py"
SECTIONS = ("workload", "floor", "large", "trees", "scale", "startup", "contention", "memoize", "entries", "remote")


def test_suite_smoke_run_writes_every_section(tmp_path: Path) -> None:
    results = tmp_path / "smoke.json"
    report = tmp_path / "report" / "performance.md"
    work = tmp_path / "work"
    work.mkdir()
    done = subprocess.run(
        [
            sys.executable,
            str(RUN),
            "--quick",
            "--smoke",
            "--json",
            str(results),
            "--report",
            str(report),
            "--dir",
            str(work),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    data = json.loads(results.read_text(encoding="utf-8"))
    assert data["level"] == "smoke"
    for name in SECTIONS:
        section = data["sections"].get(name)
        assert section is not None, f"section {name} missing"
        assert "error" not in section, f"section {name} failed: {section['error']}"
        assert isinstance(section["targets"], list)
    assert data["targets"], "no target evaluated"
    assert {t["section"] for t in data["targets"]} >= {"1", "2", "3", "4", "5", "6", "8", "9", "10"}
    assert all(t["status"] for t in data["targets"])
    assert report.read_text(encoding="utf-8").startswith("# Performance")
    assert list(work.iterdir()) == [], "the suite left its work directory behind"

    # A section not in the results still lists its targets, as not measured.
    counts = {n: len(data["sections"][n]["targets"]) for n in SECTIONS}
    del data["sections"]["trees"]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(data), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(RUN), "--report-only", str(partial), "--report", str(report), "--no-plots"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    again = json.loads(partial.read_text(encoding="utf-8"))
    trees = [t for t in again["targets"] if t["section"] == "4"]
    assert len(trees) == counts["trees"]
    assert all(t["met"] is None and "section not run" in t["status"] for t in trees)
    assert len(again["targets"]) == sum(counts.values())


def test_compare_smoke_run(tmp_path: Path) -> None:
    results = tmp_path / "compare.json"
    done = subprocess.run(
        [sys.executable, str(COMPARE), "--smoke", "src", "src", "--json", str(results), "--dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    assert done.returncode == 0, f"stdout:\n{done.stdout[-4000:]}\nstderr:\n{done.stderr[-4000:]}"
    data = json.loads(results.read_text(encoding="utf-8"))
    assert set(data["ops"]) == {"get", "put_new", "put_over", "put_same"}
    for op in data["ops"].values():
        assert op["ratio"] > 0 and op["verdict"]
        assert "warning" not in op, op["warning"]
    assert data["sources"]["old"]["origin"] == "working tree"
    assert [p.name for p in tmp_path.iterdir()] == ["compare.json"], "compare left its work directory behind"
