"""``safecache doctor`` (:mod:`safecache.doctor`), through real subprocesses
where the exit code matters and in-process where a fault must be injected."""

from __future__ import annotations

import errno
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Iterator

import pytest

import safecache
from safecache import _doctor_remedies, _fs, _fsinfo, _layout, _osops, _stats, doctor, maintenance
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


def test_doctor_permission_failure_names_the_root_and_no_recursive_chown(tmp_path: Path) -> None:
    """A denial in a cache that does not exist yet: the remedy names the
    cache's own path, never a recursive chown of the directory it would be
    created in (the previous refactor advised chowning the parent)."""
    root = tmp_path / "c"
    cache = safecache.Cache(root)
    with inject_errors(errno.EACCES, ops=("mkdir", "open")):
        report = doctor.diagnose(cache)
    create = findings(report)["create"]
    assert not report.healthy and create.status == doctor.FAIL
    assert str(root) in create.remedy and "chown -R" not in create.remedy
    assert f"'{tmp_path}'" not in create.remedy and f" {tmp_path} " not in create.remedy


@pytest.mark.parametrize("euid", [12345, 0], ids=["user", "root"])
def test_permission_remedies_shell_quote_the_root_and_chown_only_the_cache(tmp_path: Path, euid: int) -> None:
    """The chown in a remedy is a command to paste: its path is shell-quoted,
    it names the user by number (``$(id -u)`` pasted into a root shell is 0),
    it is about the cache root only, and root is never told to chown a
    user's cache to itself."""
    root = tmp_path / "it's a cache; rm -rf ~"
    root.mkdir()
    if os.geteuid() == 0:
        os.chown(root, 23456, 23456)  # another user's
    advice = _doctor_remedies.Advice(str(root), var="MYTOOL_CACHE_DIR", shared_var="MYTOOL_CACHE_SHARED", uid=euid)
    remedy = _doctor_remedies.remedy_for(PermissionError(errno.EACCES, "denied"), str(root / "x"), "write files", advice)
    if euid == 0:  # modes do not stop root: something else did, and a chown would not help
        assert "SELinux" in remedy and "chown" not in remedy
    else:
        assert f"`sudo chown -R 12345 {shlex.quote(str(root))}`" in remedy
        assert "$(id -u)" not in remedy and "MYTOOL_CACHE_SHARED=1" in remedy
    assert "MYTOOL_CACHE_DIR" in remedy
    outside = _doctor_remedies.remedy_for(PermissionError(errno.EACCES, "denied"), str(tmp_path), "write files", advice)
    assert "chown" not in outside


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


@pytest.mark.parametrize("ops", [("unlink",), ("lock",), ("replace", "rename")], ids=["delete", "lock", "write"])
def test_probe_remedies_name_the_root_not_the_scratch_directory(tmp_path: Path, ops: tuple[str, ...]) -> None:
    """The scratch directory is gone when the user reads the remedy."""
    root = tmp_path / "c"
    with inject_errors(errno.EACCES, ops=ops, path_contains=".doctor-"):
        report = diagnose(root)
    failed = [f for f in report.findings if f.status == doctor.FAIL]
    assert failed, report.findings
    for f in failed:
        assert str(root) in f.remedy and ".doctor-" not in f.remedy, f


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
    """The target is the user's project, not the cache's: never chown it."""
    with inject_errors(errno.EACCES, ops=("mkdir",), path_contains=".safecache-doctor"):
        finding = links(diagnose(tmp_path / "c", target=tmp_path))
    assert finding.status == doctor.WARN and "--target" in finding.remedy and str(tmp_path) in finding.remedy
    assert "chown" not in finding.remedy


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
        size = os.path.getsize(c.bucket("b").path_for("k"))  # type: ignore[arg-type]
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


TREE_ID = "0123456789abcdef" * 2


def _leftovers(root: Path) -> None:
    """What killed processes leave, where maintenance looks for it, old;
    and look-alikes maintenance does not remove, which must not be counted."""
    with safecache.Cache(root) as c:
        c.bucket("b").put("k", b"v")
    version = root / "buckets" / "b" / "v0"
    fan = version / "ab"
    fan.mkdir(parents=True, exist_ok=True)
    for i in range(3):
        (fan / f"{i:032x}.1f-{i}.tmp").write_bytes(b"x" * 100)
        _age(fan / f"{i:032x}.1f-{i}.tmp", 2 * 3600)
    (fan / "fresh.1-1.tmp").write_bytes(b"being written right now")
    objects = version / "tree-objects"
    staging = objects / f"{TREE_ID}.tmp"
    (staging / "sub").mkdir(parents=True)
    (staging / "sub" / "file.tmp").write_bytes(b"inside a staging tree: not counted twice")
    for path in (staging / "sub" / "file.tmp", staging / "sub", staging):
        _age(path, 3 * 3600)
    (objects / f"{TREE_ID[::-1]}.del-ab").mkdir()
    _age(objects / f"{TREE_ID[::-1]}.del-ab", 3 * 3600)
    # Look-alikes: not a tree id, not a shard, inside a committed tree.
    for name in ("0123.tmp", "4567.del-ab"):
        (objects / name).mkdir()
        _age(objects / name, 3 * 3600)
    for odd in (version / "notashard" / "x.1-1.tmp", objects / TREE_ID / "build.tmp"):
        odd.parent.mkdir(parents=True, exist_ok=True)
        odd.write_bytes(b"not a leftover")
        _age(odd, 3 * 3600)


def test_stale_temp_files_and_staging_trees(tmp_path: Path) -> None:
    root = tmp_path / "c"
    _leftovers(root)
    finding = findings(diagnose(root))["stale-temp"]
    assert finding.status == doctor.WARN
    assert finding.data == {"temp_files": 3, "temp_bytes": 300, "staging_trees": 2, "trash": 0, "complete": True}
    assert "`safecache prune`" in finding.remedy


def test_stale_temp_reports_exactly_what_prune_removes(tmp_path: Path) -> None:
    """Doctor and maintenance name leftovers with the same _layout
    predicates: what doctor counts, `safecache prune` removes, and after it
    doctor counts nothing (the look-alikes stay, uncounted)."""
    root = tmp_path / "c"
    _leftovers(root)
    (root / ".trash-0a1b").mkdir()
    _age(root / ".trash-0a1b", 2 * 3600)
    before = findings(diagnose(root))["stale-temp"].data
    assert before["trash"] == 1
    with safecache.Cache(root) as cache:
        pruned = maintenance.prune(cache)
    assert pruned.removed_temp == sum(int(before[k]) for k in ("temp_files", "staging_trees", "trash"))  # type: ignore[call-overload]
    after = findings(diagnose(root))["stale-temp"]
    assert after.status == doctor.OK and after.data["temp_files"] == after.data["staging_trees"] == 0
    assert (root / "buckets" / "b" / "v0" / "tree-objects" / "0123.tmp").is_dir()


def test_remedies_name_the_embedding_tools_command(tmp_path: Path) -> None:
    root = tmp_path / "c"
    (root / "buckets" / "b" / "v0" / "ab").mkdir(parents=True)
    (root / "buckets" / "b" / "v0" / "ab" / "x.1-1.tmp").write_bytes(b"")
    _age(root / "buckets" / "b" / "v0" / "ab" / "x.1-1.tmp", 7200)
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
    assert "real-time scanning" in finding.remedy and f"permission: root was refused to write files in {root}" in finding.remedy
    assert "<dir>" not in finding.remedy
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


# -- hardening: doctor in a hostile root (the hardening issue) ------------------------------------
def tree_state(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every name under ``path`` (itself included) with its inode, size and mtime."""
    out = {}
    for p in [path, *sorted(path.rglob("*"))]:
        st = p.lstat()
        out[str(p)] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A directory a planted link points at: doctor must never write, replace or delete in it."""
    path = tmp_path / "victim"
    path.mkdir(mode=0o700)
    (path / "entry").write_bytes(b"precious")
    (path / "probe.lock").write_bytes(b"precious too")
    return path


def test_doctor_never_follows_or_reuses_a_planted_scratch_name(tmp_path: Path, victim: Path) -> None:
    """The old doctor made `.doctor-<pid>` with makedirs (which accepts a
    directory or a link to one that exists) and wrote, replaced and deleted
    its probe files through it.  The scratch directory is now made
    exclusively under a fresh random name."""
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("b").put("k", b"v")
    planted = root / f".doctor-{os.getpid()}"
    planted.symlink_to(victim, target_is_directory=True)
    before = tree_state(victim)
    report = diagnose(root)
    assert report.healthy, report.findings
    assert tree_state(victim) == before
    assert planted.is_symlink() and sorted(p.name for p in root.iterdir()) == sorted(
        [".gitignore", "CACHEDIR.TAG", "README", "buckets", "stats", planted.name]
    )


@pytest.mark.parametrize("name", [f".doctor-{os.getpid()}", f".doctor-{os.getpid()}-{'0' * 16}"], ids=["old", "new"])
def test_a_stale_scratch_directory_of_a_killed_doctor_is_not_reused(tmp_path: Path, name: str) -> None:
    """Left by a doctor killed mid-run whose pid this process now has
    (``old``: the fixed name doctors used before)."""
    root = tmp_path / "c"
    stale = root / name
    stale.mkdir(parents=True)
    (stale / "entry").write_bytes(b"left by a doctor that was killed")
    report = diagnose(root)
    assert report.healthy, report.findings
    assert (stale / "entry").read_bytes() == b"left by a doctor that was killed"
    assert [p.name for p in root.iterdir() if p.name.startswith(".doctor-")] == [stale.name]


def test_doctor_scratch_names_are_recognisable_by_the_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A doctor killed mid-run leaves its scratch directory in the root and
    its link probe in the target: _layout's predicates name both (and
    nothing else), so maintenance can reclaim them."""
    root, target = tmp_path / "c", tmp_path / "project"
    target.mkdir()
    monkeypatch.setattr(_fs, "discard_tree", lambda path, budget=0.5: None)  # as if killed before cleaning up
    diagnose(root, target=target)
    scratch = [p.name for p in root.iterdir() if p.name.startswith(".")]
    assert [n for n in scratch if _layout.is_doctor_scratch(n)] == [n for n in scratch if n.startswith(".doctor-")]
    assert len([n for n in scratch if _layout.is_doctor_scratch(n)]) == 1
    assert [_layout.is_doctor_probe(p.name) for p in target.iterdir()] == [True]
    for name in (".doctor-", ".doctor-12x", ".doctor-1-xyz", ".gitignore", ".trash-ab", ".safecache-doctor-1"):
        assert not _layout.is_doctor_scratch(name) and not _layout.is_doctor_probe(name), name
    assert _layout.is_doctor_scratch(".doctor-4242")  # the fixed name earlier doctors used


def test_doctor_writes_nothing_into_a_root_another_user_owns(tmp_path: Path, victim: Path) -> None:
    """The cache opens disabled (cause owner) in another user's root, so
    doctor creates no markers and no scratch directory there, and fails."""
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    root = tmp_path / "c"
    root.mkdir()
    (root / f".doctor-{os.getpid()}").symlink_to(victim, target_is_directory=True)
    os.chown(root, 65534, 65534)
    before, victim_before = tree_state(root), tree_state(victim)
    with pytest.warns(safecache.CacheWarning, match="owned by nobody"):
        cache = safecache.Cache(root)
    report = doctor.diagnose(cache)
    found = findings(report)
    assert not report.healthy and report.state == "disabled"
    assert found["owner"].status == doctor.FAIL and "not used" in found["owner"].detail
    assert found["create"].status == doctor.FAIL and found["create"].detail.startswith("not attempted")
    assert not {"write", "markers", "links", "read"} & set(found)
    assert tree_state(root) == before and tree_state(victim) == victim_before


# a marker that is not a regular file
def test_a_fifo_or_a_link_planted_as_a_marker_is_reported_and_never_read(tmp_path: Path) -> None:
    """The marker check read with open(): a FIFO planted as CACHEDIR.TAG hung
    doctor, and a symlinked README was followed.  Doctor runs in a subprocess
    with a timeout, so a hang fails the test instead of the run."""
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("b").put("k", b"v")
    (root / "CACHEDIR.TAG").unlink()
    os.mkfifo(root / "CACHEDIR.TAG")
    good_readme = tmp_path / "elsewhere"
    good_readme.write_text("a perfectly good README\n")
    (root / "README").unlink()
    (root / "README").symlink_to(good_readme)
    proc = run_cli("doctor", "--cache-dir", str(root), "--json")
    markers = {f["name"]: f for f in json.loads(proc.stdout)["findings"]}["markers"]
    assert markers["status"] == "warn"
    assert markers["data"]["markers"] == {"CACHEDIR.TAG": "not-regular", ".gitignore": "ok", "README": "not-regular"}
    assert "CACHEDIR.TAG is a FIFO" in markers["detail"] and "README is a symbolic link" in markers["detail"]
    assert str(root / "CACHEDIR.TAG") in markers["remedy"] and str(root / "README") in markers["remedy"]
    assert (root / "README").is_symlink() and good_readme.read_text() == "a perfectly good README\n"


# remedies name the tool's own variable and real paths
def test_remedies_name_the_tools_own_variable_and_real_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "c"
    monkeypatch.setenv("MYTOOL_CACHE_DIR", str(root))
    cache = safecache.Cache(app_name="mytool", retry_budget=0.01)
    with pytest.warns(safecache.CacheWarning), inject_errors(errno.EACCES, ops=("open",), path_contains="buckets"):
        cache.bucket("lint").put("k", b"v")
    cache.close()
    monkeypatch.setattr(_fsinfo, "read_mounts", lambda: f"/dev/vda / ext4 rw 0 0\ntmpfs {tmp_path} tmpfs rw 0 0\n")
    with inject_errors(errno.EROFS, ops=("mkdir",), path_contains=str(root)):
        report = doctor.diagnose(safecache.Cache(app_name="mytool"))
    found = findings(report)
    assert "chosen by the environment variable MYTOOL_CACHE_DIR" in found["location"].detail
    for name in ("create", "filesystem"):
        assert "MYTOOL_CACHE_DIR" in found[name].remedy and "SAFECACHE_DIR" not in found[name].remedy, found[name]
    assert str(root) in found["errors"].remedy
    for f in report.findings:
        assert "<dir>" not in f.remedy and "$(id -u)" not in f.remedy, f


# the owner check agrees with the trust rules
@pytest.mark.parametrize(
    ("case", "shared", "owner_status", "state"),
    [
        ("own", False, doctor.OK, "ready"),
        ("foreign-root", False, doctor.FAIL, "disabled"),
        ("foreign-root", True, doctor.WARN, "ready"),
        ("foreign-locks", False, doctor.FAIL, "disabled"),
        ("symlinked-buckets", False, doctor.FAIL, "disabled"),
        ("symlinked-buckets", True, doctor.FAIL, "disabled"),
    ],
)
def test_the_owner_check_fails_exactly_when_the_trust_rules_refuse_the_cache(
    tmp_path: Path, case: str, shared: bool, owner_status: str, state: str
) -> None:
    if os.geteuid() != 0:
        pytest.skip("giving a directory to another user needs root")
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("b").put("k", b"v")
    if case == "foreign-root":
        os.chown(root, 65534, 65534)
    elif case == "foreign-locks":
        (root / "locks").mkdir(exist_ok=True)
        os.chown(root / "locks", 65534, 65534)
    elif case == "symlinked-buckets":
        (root / "buckets").rename(tmp_path / "elsewhere")
        (root / "buckets").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = safecache.Cache(root, shared=shared)
    assert bool(caught) == (state == "disabled")  # the cache warns once when it is not used
    report = doctor.diagnose(cache)
    owner = findings(report)["owner"]
    assert (owner.status, report.state, cache.state) == (owner_status, state, state), owner
    assert ("state" in findings(report)) == (state != "ready")
    if owner_status == doctor.FAIL:
        assert "not used" in owner.detail and owner.remedy


def test_root_over_a_users_cache_is_told_sudo_h_never_to_chown_it(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("this is about running as root")
    root = tmp_path / "c"
    with safecache.Cache(root) as c:
        c.bucket("b").put("k", b"v")
    for p in [root, *root.rglob("*")]:
        os.lchown(p, 65534, 65534)
    with pytest.warns(safecache.CacheWarning, match="sudo -H"):
        cache = safecache.Cache(root)
    owner = findings(doctor.diagnose(cache))["owner"]
    assert owner.status == doctor.FAIL and "nobody" in owner.detail
    assert "sudo -H" in owner.remedy and "SAFECACHE_SHARED=1" in owner.remedy
    assert "chown -R" not in owner.remedy and "Do not chown that user's cache to root" in owner.remedy


def test_shared_mode_is_reported_with_who_can_write_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "c"
    root.mkdir()
    os.chmod(root, 0o2775)  # a group-shared cache, as docs/security.md sets one up
    monkeypatch.setenv("SAFECACHE_SHARED", "1")
    report = diagnose(root)
    owner = findings(report)["owner"]
    assert owner.status == doctor.WARN and report.healthy
    assert "shared mode is on (the environment variable SAFECACHE_SHARED)" in owner.detail
    assert "every member of the group" in owner.detail and "read bytes of their choosing" in owner.detail
    assert owner.data["shared"] is True and owner.data["writers"]
    assert "SAFECACHE_SHARED" in owner.remedy
    monkeypatch.delenv("SAFECACHE_SHARED")
    private = findings(diagnose(root))["owner"]
    assert private.status == doctor.OK and private.data["shared"] is False and "shared" not in private.detail
