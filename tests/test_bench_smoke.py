"""The performance suite still runs: ``bench/run.py --quick --smoke`` (tiny
sizes, one or two repetitions, no XFS mount, no profiling) exits 0 and
writes a results file with every section.  Nothing here looks at a timing:
speed is reported by the suite, never asserted (docs/performance.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "bench" / "run.py"
SECTIONS = ("workload", "floor", "large", "trees", "scale", "startup", "contention")


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
    assert report.read_text(encoding="utf-8").startswith("# Performance")
    assert list(work.iterdir()) == [], "the suite left its work directory behind"
