"""``safecache doctor`` and the command line, through real subprocesses where
the exit code matters and in-process where a fault must be injected."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import safecache
from safecache import _doctor
from safecache.testing import WinError, inject_errors, windows_semantics


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "safecache", *args], capture_output=True, text=True, env=full_env, timeout=60)


def findings(report: _doctor.Report) -> dict[str, _doctor.Finding]:
    return {f.name: f for f in report.findings}


def test_doctor_on_a_healthy_cache_exits_0(tmp_path: Path) -> None:
    proc = run_cli("doctor", "--cache-dir", str(tmp_path / "c"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for name in ("create", "write", "read", "replace-open", "lock", "delete"):
        assert f"[ok  ] {name}:" in proc.stdout
    assert "chosen by: the --cache-dir option" in proc.stdout
    assert proc.stdout.rstrip().endswith("healthy")


def test_doctor_leaves_no_probe_files_behind(tmp_path: Path) -> None:
    root = tmp_path / "c"
    assert run_cli("doctor", "--cache-dir", str(root)).returncode == 0
    assert sorted(p.name for p in root.iterdir()) == [".gitignore", "CACHEDIR.TAG", "README"]


def test_doctor_json_names_every_check(tmp_path: Path) -> None:
    proc = run_cli("doctor", "--cache-dir", str(tmp_path / "c"), "--json")
    data = json.loads(proc.stdout)
    assert data["healthy"] is True and data["path"] == str(tmp_path / "c")
    assert [f["name"] for f in data["findings"]] == ["location", "owner", "create", "write", "read", "replace-open", "lock", "delete"]
    assert all(set(f) == {"name", "status", "detail", "remedy"} for f in data["findings"])


def test_doctor_reports_which_setting_chose_the_location(tmp_path: Path) -> None:
    proc = run_cli("doctor", "--json", env={"SAFECACHE_DIR": str(tmp_path / "env")})
    assert "SAFECACHE_DIR" in json.loads(proc.stdout)["source"]


def test_doctor_where_nothing_can_be_created_exits_1_with_a_remedy(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a directory")
    proc = run_cli("doctor", "--cache-dir", str(tmp_path / "file" / "cache"))
    assert proc.returncode == 1
    assert "[FAIL] create" in proc.stdout and "fix:" in proc.stdout


def test_doctor_permission_failure_names_the_owner_fix(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c")
    with inject_errors(errno.EACCES, ops=("mkdir", "open")):
        report = _doctor.diagnose(cache)
    create = findings(report)["create"]
    assert not report.healthy and create.status == _doctor.FAIL
    assert "chown" in create.remedy


def test_doctor_read_only_file_system(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c")
    with inject_errors(errno.EROFS, ops=("mkdir", "open")):
        report = _doctor.diagnose(cache)
    assert "read-only" in findings(report)["create"].remedy


def test_doctor_full_disk(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c")
    with inject_errors(errno.ENOSPC, ops=("write",)):
        report = _doctor.diagnose(cache)
    failed = [f for f in report.findings if f.status == _doctor.FAIL]
    assert failed and "full" in failed[0].remedy


def test_doctor_without_locks_says_compute_once_degrades(tmp_path: Path) -> None:
    """uv #9050: a file system without locks."""
    cache = safecache.Cache(tmp_path / "c")
    with inject_errors(errno.ENOLCK, ops=("lock",)):
        report = _doctor.diagnose(cache)
    lock = findings(report)["lock"]
    assert lock.status == _doctor.FAIL and "locks" in lock.remedy


def test_doctor_under_windows_semantics_explains_replace_over_an_open_file(tmp_path: Path) -> None:
    """ruff #12284's failure, diagnosed: replacing a file another handle has
    open fails on Windows; safecache copes, other tools do not."""
    cache = safecache.Cache(tmp_path / "c", retry_budget=0.05)
    with windows_semantics():
        report = _doctor.diagnose(cache)
    replace = findings(report)["replace-open"]
    assert replace.status == _doctor.WARN and "Windows" in replace.detail
    assert report.healthy  # a platform trait safecache handles, not a fault


def test_doctor_antivirus_holding_files_is_explained(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c", retry_budget=0.05)
    with inject_errors(WinError(32), ops=("unlink",)):
        report = _doctor.diagnose(cache)
    delete = findings(report)["delete"]
    assert delete.status == _doctor.FAIL and "antivirus" in delete.remedy


def test_doctor_on_a_disabled_cache(tmp_path: Path) -> None:
    proc = run_cli("doctor", "--cache-dir", str(tmp_path / "c"), env={"SAFECACHE_DISABLE": "1"})
    assert proc.returncode == 0
    assert "caching is off" in proc.stdout


# -- the rest of the command line -------------------------------------------------------
def test_dir_prints_the_path(tmp_path: Path) -> None:
    proc = run_cli("dir", env={"SAFECACHE_DIR": str(tmp_path / "x")})
    assert (proc.returncode, proc.stdout.strip()) == (0, str(tmp_path / "x"))


def test_dir_json(tmp_path: Path) -> None:
    data = json.loads(run_cli("dir", "--json", "--cache-dir", str(tmp_path / "x")).stdout)
    assert data == {"path": str(tmp_path / "x"), "source": "the --cache-dir option", "state": "ready"}


@pytest.mark.parametrize("args", [[], ["frobnicate"], ["doctor", "--no-such-flag"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert run_cli(*args).returncode == 2


def test_version() -> None:
    proc = run_cli("--version")
    assert proc.returncode == 0 and safecache.__version__ in proc.stdout
