"""``safecache doctor`` (:mod:`safecache.doctor`), through real subprocesses
where the exit code matters and in-process where a fault must be injected."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

import safecache
from safecache import _fsinfo, _osops, _stats, doctor
from safecache.testing import WinError, inject_errors, windows_semantics


def run_cli(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess[str]:
    full_env = dict(os.environ)
    full_env.update(env or {})
    # doctor probes link modes into the current directory: keep it out of the work tree.
    return subprocess.run([sys.executable, "-m", "safecache", *args], capture_output=True, text=True, env=full_env,
                          timeout=60, cwd=cwd or tempfile.gettempdir())


@pytest.fixture(autouse=True)
def _chdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process doctors probe link modes into the current directory: a scratch one."""
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


#: Every check a healthy, writable cache gets, in order (docs/doctor.md).
HEALTHY_CHECKS = [
    "location", "owner", "filesystem", "create", "markers", "write", "read", "replace-open", "lock",
    "shared-lock", "delete", "links", "free-space", "stale-temp", "errors",
]


def findings(report: doctor.Report) -> dict[str, doctor.Finding]:
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
    assert [f["name"] for f in data["findings"]] == HEALTHY_CHECKS
    assert all(set(f) == {"name", "status", "detail", "remedy", "data"} for f in data["findings"])
    environment = ("filesystem", "free-space")  # tmpfs or a nearly full disk under the test run: a caveat, not a fault
    assert all(f["status"] == "ok" and f["remedy"] == "" for f in data["findings"] if f["name"] not in environment)
    assert (data["schema"], data["state"], data["status"]) == (1, "ready", "ok")


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
        report = doctor.diagnose(cache)
    create = findings(report)["create"]
    assert not report.healthy and create.status == doctor.FAIL
    assert "chown" in create.remedy


def test_doctor_read_only_file_system(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c")
    with inject_errors(errno.EROFS, ops=("mkdir", "open")):
        report = doctor.diagnose(cache)
    assert "read-only" in findings(report)["create"].remedy


def test_doctor_full_disk(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c")
    with inject_errors(errno.ENOSPC, ops=("write",)):
        report = doctor.diagnose(cache)
    failed = [f for f in report.findings if f.status == doctor.FAIL]
    assert failed and "full" in failed[0].remedy


def test_doctor_without_locks_says_compute_once_degrades(tmp_path: Path) -> None:
    """uv #9050: a file system without locks."""
    cache = safecache.Cache(tmp_path / "c")
    with inject_errors(errno.ENOLCK, ops=("lock",)):
        report = doctor.diagnose(cache)
    lock = findings(report)["lock"]
    assert lock.status == doctor.FAIL and "locks" in lock.remedy


def test_doctor_under_windows_semantics_explains_replace_over_an_open_file(tmp_path: Path) -> None:
    """ruff #12284's failure, diagnosed: replacing a file another handle has
    open fails on Windows; safecache copes, other tools do not."""
    cache = safecache.Cache(tmp_path / "c", retry_budget=0.05)
    with windows_semantics():
        report = doctor.diagnose(cache)
    replace = findings(report)["replace-open"]
    assert replace.status == doctor.WARN and "Windows" in replace.detail
    assert report.healthy  # a platform trait safecache handles, not a fault


def test_doctor_antivirus_holding_files_is_explained(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c", retry_budget=0.05)
    with inject_errors(WinError(32), ops=("unlink",)):
        report = doctor.diagnose(cache)
    delete = findings(report)["delete"]
    assert delete.status == doctor.FAIL and "antivirus" in delete.remedy


def test_doctor_on_a_disabled_cache(tmp_path: Path) -> None:
    proc = run_cli("doctor", "--cache-dir", str(tmp_path / "c"), env={"SAFECACHE_DISABLE": "1"})
    assert proc.returncode == 0
    assert "caching is off" in proc.stdout


# -- the complete doctor: each new check, with faults injected in-process -----------------------
def diagnose(path: Path, **kwargs: object) -> doctor.Report:
    return doctor.diagnose(safecache.Cache(path, retry_budget=0.05), **kwargs)  # type: ignore[arg-type]


def test_every_finding_that_is_not_ok_has_a_remedy(tmp_path: Path) -> None:
    with windows_semantics(hardlinks=False):
        report = diagnose(tmp_path / "c")
    assert [f.name for f in report.findings if f.status != doctor.OK]  # something to remedy
    assert all(f.remedy for f in report.findings if f.status != doctor.OK), report.findings


# locks
def test_shared_locks_are_checked(tmp_path: Path) -> None:
    shared = findings(diagnose(tmp_path / "c"))["shared-lock"]
    assert shared.status == doctor.OK and "exclusive lock out" in shared.detail


def test_without_locks_both_lock_checks_fail_with_the_remedy(tmp_path: Path) -> None:
    with inject_errors(errno.ENOLCK, ops=("lock",)):
        report = diagnose(tmp_path / "c")
    for name in ("lock", "shared-lock"):
        assert findings(report)[name].status == doctor.FAIL
        assert "does not support locks" in findings(report)[name].remedy


class _IgnoredLocks(_osops.OsOps):
    """A file system that accepts every lock and enforces none (some FUSE and network mounts)."""

    def lock(self, fd: int, *, blocking: bool, shared: bool = False) -> None:
        return None

    def unlock(self, fd: int) -> None:
        return None


def test_locks_that_do_not_exclude_are_a_failure(tmp_path: Path) -> None:
    _osops.current = _IgnoredLocks()  # restored by conftest's autouse fixture
    report = diagnose(tmp_path / "c")
    shared = findings(report)["shared-lock"]
    assert shared.status == doctor.FAIL and "do not exclude" in shared.detail
    assert "local disk" in shared.remedy and not report.healthy


# link modes
def links(report: doctor.Report) -> doctor.Finding:
    return findings(report)["links"]


def test_links_into_a_target_report_every_mode_and_what_auto_picks(tmp_path: Path) -> None:
    target = tmp_path / "venv"
    target.mkdir()
    finding = links(diagnose(tmp_path / "c", target=target))
    assert finding.status == doctor.OK, finding
    data = finding.data
    assert data["target"] == str(target) and data["target_source"] == "--target"
    modes = data["modes"]
    assert isinstance(modes, dict) and set(modes) == {"clone", "hardlink", "symlink", "copy"}
    assert modes["hardlink"]["works"] and modes["copy"]["works"]  # same file system
    assert data["auto"] == ("clone" if modes["clone"]["works"] else "hardlink")
    assert f"auto uses {data['auto']}" in finding.detail
    assert list(target.iterdir()) == []  # the probe directory is gone


def test_links_default_to_the_current_directory(tmp_path: Path) -> None:
    finding = links(diagnose(tmp_path / "c"))
    assert finding.data["target"] == os.getcwd() and finding.data["target_source"] == "the current directory"
    assert os.listdir(os.getcwd()) == []


def test_links_fall_back_to_the_cache_when_the_current_directory_is_not_writable(tmp_path: Path) -> None:
    with inject_errors(errno.EACCES, ops=("mkdir",), path_contains=".safecache-doctor"):
        finding = links(diagnose(tmp_path / "c"))
    assert finding.status == doctor.OK
    assert finding.data["target"] == str(tmp_path / "c") and "pass --target" in finding.detail


def test_links_into_a_target_this_user_cannot_write(tmp_path: Path) -> None:
    with inject_errors(errno.EACCES, ops=("mkdir",), path_contains=".safecache-doctor"):
        finding = links(diagnose(tmp_path / "c", target=tmp_path))
    assert finding.status == doctor.WARN and "chown" in finding.remedy


def test_no_hard_links_fat_windows(tmp_path: Path) -> None:
    """FAT/exFAT: CreateHardLinkW fails with error 1; auto copies."""
    with windows_semantics(hardlinks=False):
        report = diagnose(tmp_path / "c", target=tmp_path)
    finding = links(report)
    assert finding.status == doctor.WARN and finding.data["auto"] == "copy"
    assert finding.data["modes"]["hardlink"]["works"] is False  # type: ignore[index]
    assert "no hard links" in finding.remedy and "FAT" in finding.remedy
    assert report.healthy  # slower, not broken


def test_no_hard_links_eperm(tmp_path: Path) -> None:
    """Linux refuses link() with EPERM on vfat."""
    with inject_errors(errno.EPERM, ops=("link",)):
        finding = links(diagnose(tmp_path / "c", target=tmp_path))
    assert finding.status == doctor.WARN and finding.data["auto"] == "copy"
    assert "refuses hard links" in finding.remedy


def test_cross_device_target(tmp_path: Path) -> None:
    with inject_errors(errno.EXDEV, ops=("link", "clone"), path_contains=".safecache-doctor"):
        finding = links(diagnose(tmp_path / "c", target=tmp_path))
    assert finding.status == doctor.WARN and finding.data["auto"] == "copy"
    assert "different file systems" in finding.remedy and "SAFECACHE_DIR" in finding.remedy


def test_a_full_target_makes_placing_fail(tmp_path: Path) -> None:
    with inject_errors(errno.ENOSPC, ops=("link", "clone", "copyfile", "symlink"), path_contains=".safecache-doctor"):
        report = diagnose(tmp_path / "c", target=tmp_path)
    finding = links(report)
    assert finding.status == doctor.FAIL and finding.data["auto"] is None and "full" in finding.remedy
    assert not report.healthy


def test_a_configured_link_mode_that_does_not_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_LINK_MODE", "symlink")
    with windows_semantics():  # no symlink privilege
        finding = links(diagnose(tmp_path / "c", target=tmp_path))
    assert finding.status == doctor.WARN and "SAFECACHE_LINK_MODE=symlink" in finding.detail
    assert "SAFECACHE_LINK_MODE" in finding.remedy


def test_an_invalid_link_mode_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_LINK_MODE", "teleport")
    finding = links(diagnose(tmp_path / "c", target=tmp_path))
    assert finding.status == doctor.WARN and finding.data["configured"] == "invalid"


# the file system
@pytest.mark.parametrize(
    ("fstype", "wsl", "words", "remedy"),
    [
        ("nfs4", False, "locks are unreliable", "local disk"),
        ("cifs", False, "SMB/CIFS", "local disk"),
        ("overlay", False, "copied up", "volume"),
        ("9p", True, "WSL", "Linux file system"),
        ("tmpfs", False, "reboot", "SAFECACHE_DIR"),
        ("fuse.sshfs", False, "FUSE", "local disk"),
        ("vfat", False, "no hard links", "NTFS"),
    ],
)
def test_file_systems_with_caveats(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fstype: str, wsl: bool, words: str, remedy: str
) -> None:
    monkeypatch.setattr(_fsinfo, "read_mounts", lambda: f"/dev/vda / ext4 rw 0 0\nsrv:/x {tmp_path} {fstype} rw 0 0\n")
    monkeypatch.setattr(_fsinfo, "is_wsl", lambda: wsl)
    finding = findings(diagnose(tmp_path / "c"))["filesystem"]
    assert finding.status == doctor.WARN and words in finding.detail and remedy in finding.remedy
    assert finding.data["type"] == fstype and finding.data["mount_point"] == str(tmp_path)


def test_a_plain_local_file_system_is_ok(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fsinfo, "read_mounts", lambda: "/dev/vda / ext4 rw 0 0\n")
    finding = findings(diagnose(tmp_path / "c"))["filesystem"]
    assert (finding.status, finding.data["type"], finding.data["mount_point"]) == (doctor.OK, "ext4", "/")


def test_an_unknown_file_system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fsinfo, "read_mounts", lambda: None)
    finding = findings(diagnose(tmp_path / "c"))["filesystem"]
    assert (finding.status, finding.data["type"]) == (doctor.OK, "unknown")


# free space
def test_free_space_below_what_the_cache_may_grow_by(tmp_path: Path) -> None:
    report = doctor.diagnose(safecache.Cache(tmp_path / "c", max_size=2**62))
    finding = findings(report)["free-space"]
    assert finding.status == doctor.WARN and "fills before" in finding.detail
    assert "max_size" in finding.remedy and finding.data["max_size"] == 2**62
    assert report.healthy


def test_free_space_counts_what_the_cache_already_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("b").put("k", b"x" * 1000)
    size = 48 + 1000
    monkeypatch.setattr(_fsinfo, "disk_usage", lambda path: (10**9, 10**9 - 100, 100))
    enough = findings(doctor.diagnose(safecache.Cache(root, max_size=size + 50)))["free-space"]
    assert enough.status == doctor.OK and enough.data["size"] == size
    short = findings(doctor.diagnose(safecache.Cache(root, max_size=size + 500)))["free-space"]
    assert short.status == doctor.WARN


def test_free_space_without_a_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert findings(doctor.diagnose(safecache.Cache(tmp_path / "c", max_size=None)))["free-space"].status == doctor.OK
    monkeypatch.setattr(_fsinfo, "disk_usage", lambda path: (10**12, 10**12 - 10, 10))
    full = findings(doctor.diagnose(safecache.Cache(tmp_path / "c", max_size=None)))["free-space"]
    assert full.status == doctor.WARN and "no size limit" in full.detail


def test_full_disk_is_named_by_create_and_free_space(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fsinfo, "disk_usage", lambda path: (10**9, 10**9, 0))
    with inject_errors(errno.ENOSPC, ops=("write",)):
        report = diagnose(tmp_path / "c")
    found = findings(report)
    assert found["create"].status == doctor.FAIL and "full" in found["create"].remedy
    assert found["free-space"].status == doctor.WARN


# markers
def test_a_missing_marker_is_recreated(tmp_path: Path) -> None:
    root = tmp_path / "c"
    safecache.Cache(root).bucket("b").put("k", b"v")
    (root / ".gitignore").unlink()
    finding = findings(diagnose(root))["markers"]
    assert finding.status == doctor.OK and "created the missing .gitignore" in finding.detail
    assert (root / ".gitignore").read_text().splitlines()[-1] == "*"


def test_a_wrong_marker_is_named_with_its_remedy(tmp_path: Path) -> None:
    root = tmp_path / "c"
    safecache.Cache(root).bucket("b").put("k", b"v")
    (root / "CACHEDIR.TAG").write_text("not a tag\n")
    (root / ".gitignore").write_text("build/\n")
    finding = findings(diagnose(root))["markers"]
    assert finding.status == doctor.WARN
    assert "CACHEDIR.TAG is wrong" in finding.detail and ".gitignore is wrong" in finding.detail
    assert "remove" in finding.remedy and str(root / "CACHEDIR.TAG") in finding.remedy
    assert finding.data["markers"] == {"CACHEDIR.TAG": "wrong", ".gitignore": "wrong", "README": "ok"}


# leftovers
def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_stale_temp_files_and_staging_trees(tmp_path: Path) -> None:
    root = tmp_path / "c"
    safecache.Cache(root).bucket("b").put("k", b"v")
    fan = root / "buckets" / "b" / "v0" / "ab"
    fan.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (fan / f"{i:032x}.1f-{i}.tmp").write_bytes(b"x" * 100)
        _age(fan / f"{i:032x}.1f-{i}.tmp", 2 * 3600)
    (fan / "fresh.1-1.tmp").write_bytes(b"being written right now")
    objects = root / "buckets" / "b" / "v0" / "tree-objects"
    (objects / "0123.tmp" / "sub").mkdir(parents=True)
    (objects / "0123.tmp" / "sub" / "file.tmp").write_bytes(b"inside a staging tree: not counted twice")
    _age(objects / "0123.tmp", 3 * 3600)
    (objects / "4567.del-ab").mkdir()
    _age(objects / "4567.del-ab", 3 * 3600)
    finding = findings(diagnose(root))["stale-temp"]
    assert finding.status == doctor.WARN
    assert finding.data == {"temp_files": 3, "temp_bytes": 300, "staging_trees": 2, "complete": True}
    assert "`safecache prune`" in finding.remedy


def test_remedies_name_the_embedding_tools_command(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "buckets").mkdir(parents=True)
    (root / "buckets" / "x.1-1.tmp").write_bytes(b"")
    _age(root / "buckets" / "x.1-1.tmp", 7200)
    report = doctor.diagnose(safecache.Cache(root), prog="mytool cache")
    assert "`mytool cache prune`" in findings(report)["stale-temp"].remedy


def test_no_leftovers(tmp_path: Path) -> None:
    finding = findings(diagnose(tmp_path / "c"))["stale-temp"]
    assert finding.status == doctor.OK and finding.data["temp_files"] == 0


# the counters' error causes
def test_error_causes_from_the_counters(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root, retry_budget=0.01) as cache:
        bucket = cache.bucket("lint", version=3)
        with pytest.warns(safecache.CacheWarning), inject_errors(WinError(32), ops=("replace", "rename")):
            for i in range(12):
                bucket.put(f"k{i}", b"v")
        with pytest.warns(safecache.CacheWarning), inject_errors(errno.EACCES, ops=("open",), path_contains="buckets"):
            bucket.put("denied", b"v")
    assert _stats.read_totals(str(root))["lint/v3"]["errors"] == {"busy": 12, "permission": 1}
    finding = findings(diagnose(root))["errors"]
    assert finding.status == doctor.WARN
    assert "busy: 12 — files held open by another process (antivirus?" in finding.detail
    assert "permission: 1" in finding.detail
    assert "real-time scanning" in finding.remedy and "chown" in finding.remedy
    assert finding.data["by_cause"] == {"busy": 12, "permission": 1}
    assert finding.data["by_bucket"] == {"lint/v3": {"busy": 12, "permission": 1}}


def test_no_errors_recorded(tmp_path: Path) -> None:
    root = tmp_path / "c"
    with safecache.Cache(root) as cache:
        cache.bucket("lint").put("k", b"v")
    finding = findings(diagnose(root))["errors"]
    assert finding.status == doctor.OK and finding.data["by_cause"] == {}


# the command line's side of it
def test_doctor_target_through_the_command_line(tmp_path: Path) -> None:
    target = tmp_path / "dest"
    target.mkdir()
    proc = run_cli("doctor", "--cache-dir", str(tmp_path / "c"), "--target", str(target), "--json")
    data = json.loads(proc.stdout)
    found = {f["name"]: f for f in data["findings"]}
    assert proc.returncode == 0 and found["links"]["data"]["target"] == str(target)


def test_doctor_on_an_unwritable_cache_still_runs_the_read_only_checks(tmp_path: Path) -> None:
    root = tmp_path / "c"
    safecache.Cache(root).bucket("b").put("k", b"v")
    with inject_errors(errno.EACCES, ops=("mkdir",), path_contains=str(root)):
        report = diagnose(root)
    names = [f.name for f in report.findings]
    assert findings(report)["create"].status == doctor.FAIL
    assert {"read", "markers", "free-space", "stale-temp", "errors"} <= set(names)


# -- real file systems: a reflink one, and a target on another device ---------------------------


def test_links_on_a_reflink_file_system_auto_clones(reflink_dir: Path) -> None:
    work = Path(tempfile.mkdtemp(dir=reflink_dir))
    (work / "target").mkdir()
    finding = links(diagnose(work / "c", target=work / "target"))
    assert finding.status == doctor.OK and finding.data["auto"] == "clone", finding
    assert finding.data["modes"]["clone"]["works"] is True  # type: ignore[index]


@pytest.fixture
def other_device(tmp_path: Path) -> Iterator[Path]:
    """A directory on a small tmpfs: another device than tmp_path's."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "other"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount_point)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_links_to_another_device_fall_back_to_copy(tmp_path: Path, other_device: Path) -> None:
    if os.stat(tmp_path).st_dev == os.stat(other_device).st_dev:
        pytest.skip("the tmpfs is not another device")
    finding = links(diagnose(tmp_path / "c", target=other_device))
    assert finding.status == doctor.WARN and finding.data["auto"] == "copy", finding
    assert "EXDEV" in finding.data["modes"]["hardlink"]["error"]  # type: ignore[index]
    assert "different file systems" in finding.remedy
