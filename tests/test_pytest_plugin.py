"""Tests of the pytest plugin ``-p safecache.testing.pytest_plugin
--emulate-windows[=DENIALS]``: each runs pytest in a child process on a
small test file that reports what it sees.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import safecache

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the emulator needs Linux OFD locks")

SRC = str(Path(safecache.__file__).resolve().parent.parent)
PLUGIN = ["-p", "safecache.testing.pytest_plugin"]

# What a test of the inner run sees: the ops in force, whether the code
# under test is routed, the variable, and what a subprocess sees.
PROBE = """
import json, os, subprocess, sys
from safecache import _osops

def test_probe():
    child = subprocess.run(
        [sys.executable, "-c", "import os, safecache; print(type(safecache._osops.current).__name__)"],
        capture_output=True, text=True,
    )
    seen = {
        "ops": type(_osops.current).__name__,
        "denials": getattr(_osops.current, "transient_denials", None),
        "routed": os.replace.__module__ != "posix",
        "variable": os.environ.get("SAFECACHE_EMULATE_WINDOWS"),
        "child": child.stdout.strip() or child.stderr,
    }
    # Under high denial rates the probe's own write may meet an injected
    # lock violation (as on Windows): retry it, boundedly, like a careful tool.
    for attempt in range(50):
        try:
            with open(os.environ["PROBE_OUT"] + "." + os.environ.get("PYTEST_XDIST_WORKER", "main"), "w") as f:
                f.write(json.dumps(seen))
            break
        except PermissionError:
            if attempt == 49:
                raise
"""


def _pytest(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "SAFECACHE_"))}
    env["PYTHONPATH"] = SRC
    env["PROBE_OUT"] = str(tmp_path / "seen")
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _seen(tmp_path: Path, worker: str = "main") -> dict[str, object]:
    import json

    seen: dict[str, object] = json.loads((tmp_path / f"seen.{worker}").read_text())
    return seen


def test_emulate_windows_routes_the_session_and_its_subprocesses(tmp_path: Path) -> None:
    run = _pytest(tmp_path, *PLUGIN, "--emulate-windows", "test_probe.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Windows file semantics emulated" in run.stdout
    seen = _seen(tmp_path)
    assert seen["ops"] == "WindowsOps" and seen["routed"] and seen["denials"] == 0.0
    assert seen["child"] == "WindowsOps"


def test_denials_set_the_probability_of_transient_denials(tmp_path: Path) -> None:
    run = _pytest(tmp_path, *PLUGIN, "--emulate-windows=0.25")
    assert run.returncode == 0, run.stdout + run.stderr
    assert _seen(tmp_path)["denials"] == 0.25


def test_a_denials_value_may_follow_the_option(tmp_path: Path) -> None:
    run = _pytest(tmp_path, *PLUGIN, "--emulate-windows", "0.5", "test_probe.py")
    assert run.returncode == 0, run.stdout + run.stderr
    assert _seen(tmp_path)["denials"] == 0.5


def test_without_the_option_the_plugin_changes_nothing(tmp_path: Path) -> None:
    run = _pytest(tmp_path, *PLUGIN)
    assert run.returncode == 0, run.stdout + run.stderr
    seen = _seen(tmp_path)
    assert seen["ops"] == "OsOps" and not seen["routed"] and seen["variable"] is None and seen["child"] == "OsOps"


def test_a_denials_value_that_is_not_a_probability_is_a_usage_error(tmp_path: Path) -> None:
    run = _pytest(tmp_path, *PLUGIN, "--emulate-windows=2")
    assert run.returncode == pytest.ExitCode.USAGE_ERROR
    assert "DENIALS is a probability" in run.stderr


def test_xdist_workers_run_under_the_emulator(tmp_path: Path) -> None:
    pytest.importorskip("xdist")
    (tmp_path / "test_second.py").write_text(PROBE.replace("def test_probe", "def test_second"))
    run = _pytest(tmp_path, "-n", "2", *PLUGIN, "--emulate-windows")
    assert run.returncode == 0, run.stdout + run.stderr
    workers = sorted(path.name for path in tmp_path.glob("seen.gw*"))
    assert workers
    for worker in workers:
        assert _seen(tmp_path, worker.split(".")[1])["ops"] == "WindowsOps"


def test_importing_safecache_testing_does_not_import_pytest() -> None:
    code = "import sys, safecache.testing; print('pytest' in sys.modules, '_pytest' in sys.modules)"
    child = subprocess.run(
        [sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=SRC), capture_output=True, text=True
    )
    assert child.stdout.split() == ["False", "False"], child.stderr


def test_the_plugin_is_not_registered_for_every_pytest_run() -> None:
    from importlib.metadata import entry_points

    assert not [ep for ep in entry_points(group="pytest11") if ep.value.startswith("safecache")]


def test_a_bare_option_before_a_path_does_not_swallow_the_path(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "test_only_this.py").write_text("def test_only():\n    pass\n")
    run = _pytest(tmp_path, *PLUGIN, "--emulate-windows", "sub")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 passed" in run.stdout  # only sub/, not test_probe.py
