"""ruff #12284 as a test: pytest-xdist runs a linter plugin in many worker
processes over one project, and every run reads and rewrites one shared
cache.  On Windows the naive cache's ``os.replace`` fails with "Access is
denied" whenever another worker is reading the file, and the test run fails.

The scenario (tests/xdist_scenario/lint_plugin.py) runs in a child
``pytest -n 8 -p safecache.testing.pytest_plugin --emulate-windows``: the
emulator must catch the naive cache's bug (it fails), and safecache must
never fail the run.  ``--stress`` runs it longer, with transient denials.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

import pytest

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the emulator needs Linux OFD locks")
pytest.importorskip("xdist", reason="the scenario needs pytest-xdist (the test extra)")

SCENARIO = Path(__file__).resolve().parent / "xdist_scenario"
SRC = Path(__file__).resolve().parent.parent / "src"
WORKERS = 8


@dataclass
class Run:
    passed: int
    failures: list[str]  # the text of each failure
    seconds: float
    output: str


def _project(root: Path, files: int, seed: int) -> Path:
    """A project of ``files`` modules (each linted twice), from a quarter
    as many distinct sources, so that workers also store the same keys."""
    rng = random.Random(seed)
    project = root / "project"
    project.mkdir()
    (project / "pytest.ini").write_text("[pytest]\n")
    sources = [
        "\n".join(f"value_{i}_{n} = {rng.random()!r}  # {'x' * rng.randrange(60)}" for n in range(16)) + "\n"
        for i in range(max(files // 4, 1))
    ]
    for n in range(files):
        (project / f"mod_{n:04d}.py").write_text(sources[n % len(sources)])
    return project


def _run(root: Path, cache: str, *, files: int, denials: float | None = None) -> Run:
    project = _project(root, files, seed=12284)
    report = root / "report.xml"
    emulate = "--emulate-windows" if denials is None else f"--emulate-windows={denials}"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SAFECACHE_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(SCENARIO), str(SRC)])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # nine interpreters start: only the plugins the scenario names
    command = [
        sys.executable, "-m", "pytest", "-p", "xdist.plugin", "-n", str(WORKERS), "-p", "lint_plugin",
        "-p", "safecache.testing.pytest_plugin", emulate, "-p", "no:cacheprovider", "--assert=plain", "--tb=short",
        f"--lint-cache={cache}", f"--lint-cache-dir={root / 'cache'}", f"--junitxml={report}", "-q", str(project),
    ]  # fmt: skip
    started = time.monotonic()
    proc = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=600)
    seconds = time.monotonic() - started
    output = proc.stdout + proc.stderr
    assert proc.returncode in (0, 1) and report.exists(), f"the scenario did not run ({proc.returncode}):\n{output}"
    cases = ElementTree.parse(report).getroot().iter("testcase")
    passed, failures = 0, []
    for case in cases:
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is None:
            passed += case.find("skipped") is None
        else:
            failures.append(f"{problem.get('message', '')}\n{problem.text or ''}")
    return Run(passed, failures, seconds, output)


def test_a_naive_cache_fails_the_run_under_the_emulator_as_on_windows(tmp_path: Path, stress: bool) -> None:
    files = 400 if stress else 64
    run = _run(tmp_path, "naive", files=files, denials=0.02 if stress else None)
    print(f"naive cache: {len(run.failures)} of {2 * files} items failed in {run.seconds:.1f} s")
    assert run.failures, f"the emulator let ruff #12284 through:\n{run.output[-3000:]}"
    assert len(run.failures) + run.passed == 2 * files
    # Every failure is the emulator's Windows error, not a bug of the scenario.
    for failure in run.failures:
        assert "PermissionError" in failure and "emulated Windows" in failure, failure


def test_safecache_never_fails_the_run(tmp_path: Path, stress: bool) -> None:
    files = 400 if stress else 64
    run = _run(tmp_path, "safecache", files=files, denials=0.02 if stress else None)
    print(f"safecache: {len(run.failures)} of {2 * files} items failed in {run.seconds:.1f} s")
    assert not run.failures, "\n\n".join(run.failures[:3])
    assert run.passed == 2 * files
