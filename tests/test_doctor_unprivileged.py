"""``safecache doctor`` run as an unprivileged user, against the caches a CI
runner or a full disk hands it: each finding named, with its remedy, in the
JSON it prints.

We run as root, and ``chmod`` does not stop root: each case builds the
situation as root, then runs doctor in a child switched to ``nobody``
(``conftest.unprivileged``) that imports the readable copy of safecache.
Faults the file system here cannot produce (no hard links) are injected
inside the child with ``safecache.testing``.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import subprocess
from pathlib import Path
from typing import Any, Iterator

import pytest
from _unpriv_cases import child_code, doctor_findings, owned_by, restored_cache, run_case, snapshot

from safecache import _cli

pytestmark = pytest.mark.unprivileged


def doctor_body(*, target: str | None = None, wrap: str | None = None, setup: str = "") -> str:
    """A child body that runs ``safecache doctor --cache-dir ROOT --json``
    (``--target`` if given) and reports its exit code and JSON.

    Without ``wrap``, through a real ``python -m safecache`` subprocess; with
    ``wrap`` (a ``with`` statement's head, e.g. an ``inject_errors(...)``
    call), in-process inside that block, so the injected fault applies."""
    extra = f", '--target', {target!r}" if target else ""
    if wrap is None:
        return f"""
import subprocess
proc = subprocess.run(
    [sys.executable, "-m", "safecache", "doctor", "--cache-dir", ROOT, "--json"{extra}],
    capture_output=True, text=True, timeout=60,
)
out["returncode"] = proc.returncode
out["stderr"] = proc.stderr
out["report"] = json.loads(proc.stdout) if proc.stdout.strip() else None
"""
    return f"""
import contextlib, errno, io
from safecache import _cli, _fsinfo, testing
{setup}
buffer = io.StringIO()
with {wrap}:
    with contextlib.redirect_stdout(buffer):
        out["returncode"] = _cli.main(["doctor", "--cache-dir", ROOT, "--json"{extra}])
out["stderr"] = ""
out["report"] = json.loads(buffer.getvalue())
"""


def every_problem_has_a_remedy(findings: dict[str, dict[str, Any]]) -> None:
    for name, finding in findings.items():
        assert set(finding) == {"name", "status", "detail", "remedy", "data"}, finding
        if finding["status"] != "ok":
            assert finding["remedy"], f"{name} has no remedy: {finding}"


def owned_dir(unprivileged: Any, name: str) -> Path:
    """A directory the unprivileged user owns (to create a cache or a target in)."""
    path = unprivileged.workdir() / name
    path.mkdir()
    os.chown(path, unprivileged.uid, unprivileged.gid)
    return path


def protected_hardlinks() -> bool:
    try:
        return Path("/proc/sys/fs/protected_hardlinks").read_text().strip() == "1"
    except OSError:
        return False


# -- 1. a root-owned cache, in the default private mode: not used at all ------------------------
@pytest.fixture(scope="module")
def foreign(unprivileged: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]], bool]:
    root = restored_cache(unprivileged.workdir())
    target = owned_dir(unprivileged, "venv")
    before = snapshot(root)
    report = run_case(unprivileged, doctor_body(target=str(target)), root)
    return report, doctor_findings(report), snapshot(root) == before


def test_another_users_cache_fails_the_owner_check_and_is_not_read(foreign: Any) -> None:
    """The trust rules disable a cache another user owns (cause owner), and
    the owner check agrees: it fails, names the owner, says the cache is not
    used, and doctor neither writes nor reads anything in it."""
    report, findings, unchanged = foreign
    assert report["returncode"] == 1 and report["report"]["state"] == "disabled", report
    owner = findings["owner"]
    assert owner["status"] == "fail" and "root (uid 0)" in owner["detail"] and "not used" in owner["detail"]
    assert findings["state"]["status"] == "fail" and findings["create"]["status"] == "fail"
    assert "not attempted" in findings["create"]["detail"]
    assert not {"read", "markers", "write", "links", "stale-temp", "errors"} & set(findings)
    assert unchanged
    every_problem_has_a_remedy(findings)


def test_another_users_cache_gets_both_ways_out(foreign: Any, unprivileged: Any) -> None:
    """Give it back if it is yours (the cache root only, to this user by
    number, shell-quoted), or opt into shared mode if every writer is trusted."""
    _, findings, _ = foreign
    remedy = findings["owner"]["remedy"]
    root = findings["location"]["data"]["path"]
    assert f"`sudo chown -R {unprivileged.uid} {root}`" in remedy and "CI" in remedy
    assert "SAFECACHE_SHARED=1" in remedy and "read bytes of their choosing" in remedy


# -- 2. the same cache, shared on purpose: this user can read it but not write it -----------------
@pytest.fixture(scope="module")
def read_only(unprivileged: Any) -> tuple[dict[str, Any], dict[str, dict[str, Any]], bool]:
    root = restored_cache(unprivileged.workdir())
    target = owned_dir(unprivileged, "venv")
    before = snapshot(root)
    report = run_case(unprivileged, doctor_body(target=str(target)), root, shared=True)
    return report, doctor_findings(report), snapshot(root) == before


def test_read_only_root_is_unhealthy_and_says_why(read_only: Any) -> None:
    report, findings, unchanged = read_only
    assert report["returncode"] == 1, report
    assert report["report"]["healthy"] is False and report["report"]["state"] == "read-only"
    assert unchanged  # doctor wrote nothing into a cache it may not write
    every_problem_has_a_remedy(findings)


def test_read_only_root_names_the_owner_and_the_fix(read_only: Any) -> None:
    _, findings, _ = read_only
    owner = findings["owner"]
    assert owner["status"] == "ok" and "root (uid 0)" in owner["detail"]  # shared mode accepts the owner...
    assert "shared mode is on (the environment variable SAFECACHE_SHARED)" in owner["detail"]  # ...and says so
    assert findings["state"]["status"] == "warn" and "read-only" in findings["state"]["detail"]
    assert findings["create"]["status"] == "fail"
    assert "chown" in findings["create"]["remedy"] and "CI" in findings["create"]["remedy"]
    assert findings["read"]["status"] == "ok" and "hits are served" in findings["read"]["detail"]


def test_read_only_root_still_gets_the_checks_that_need_no_writing(read_only: Any) -> None:
    _, findings, _ = read_only
    assert findings["markers"]["status"] == "ok"
    assert findings["stale-temp"]["status"] == "ok" and findings["errors"]["status"] == "ok"
    assert "free-space" in findings and "filesystem" in findings


def test_read_only_root_links_from_the_files_already_there(read_only: Any) -> None:
    """Linking a root-owned file: Linux's protected_hardlinks refuses it, so
    trees from this cache would be copied, and doctor says why."""
    _, findings, _ = read_only
    links = findings["links"]
    assert links["data"]["target_source"] == "--target"
    assert links["data"]["modes"]["copy"]["works"] is True
    if protected_hardlinks():
        assert links["status"] == "warn" and links["data"]["auto"] == "copy"
        assert "protected_hardlinks" in links["remedy"] and "chown" in links["remedy"]


# -- 3. a shared cache this user cannot even read ----------------------------------------------
def test_unreadable_root(unprivileged: Any) -> None:
    root = restored_cache(unprivileged.workdir(), dirs=0o700, files=0o600)
    report = run_case(unprivileged, doctor_body(), root, shared=True)
    findings = doctor_findings(report)
    assert report["returncode"] == 1 and report["report"]["state"] == "disabled", report
    assert findings["state"]["status"] == "fail" and "not readable" in findings["state"]["detail"]
    assert findings["create"]["status"] == "fail" and "chown" in findings["create"]["remedy"]
    assert findings["read"]["status"] == "fail" and "chown" in findings["read"]["remedy"]
    assert "free-space" in findings
    every_problem_has_a_remedy(findings)


# -- 4. a file system without hard links (injected in the child) --------------------------------
@pytest.mark.parametrize(
    ("wrap", "remedy"),
    [
        ("testing.inject_errors(errno.EPERM, ops=('link',))", "refuses hard links"),
        ("testing.windows_semantics(hardlinks=False)", "no hard links (FAT/exFAT"),
    ],
    ids=["eperm", "fat"],
)
def test_no_hard_links(unprivileged: Any, wrap: str, remedy: str) -> None:
    root = owned_dir(unprivileged, "home") / "cache"
    target = owned_dir(unprivileged, "venv")
    report = run_case(unprivileged, doctor_body(target=str(target), wrap=wrap), root)
    findings = doctor_findings(report)
    links = findings["links"]
    assert links["status"] == "warn" and links["data"]["auto"] == "copy", links
    assert links["data"]["modes"]["hardlink"]["works"] is False
    assert remedy in links["remedy"]
    assert report["returncode"] == 0 and report["report"]["healthy"] is True  # slower, not broken
    assert findings["create"]["status"] == "ok"
    every_problem_has_a_remedy(findings)
    assert list(target.iterdir()) == []


# -- 5. a full disk -------------------------------------------------------------------------------
def test_full_disk_injected(unprivileged: Any) -> None:
    root = owned_dir(unprivileged, "home") / "cache"
    setup = "_fsinfo.disk_usage = lambda path: (10**9, 10**9, 0)  # and the disk says so"
    report = run_case(unprivileged, doctor_body(wrap="testing.inject_errors(errno.ENOSPC, ops=('write',))", setup=setup), root)
    findings = doctor_findings(report)
    assert report["returncode"] == 1
    assert findings["create"]["status"] == "fail" and "full" in findings["create"]["remedy"]
    assert findings["free-space"]["status"] == "warn" and findings["free-space"]["data"]["free"] == 0
    every_problem_has_a_remedy(findings)


@pytest.fixture
def small_tmpfs(unprivileged: Any) -> Iterator[Path]:
    """A 1 MiB tmpfs, filled by root, with a directory the user owns on it."""
    mount_point = unprivileged.workdir() / "small"
    mount_point.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(mount_point)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the injected case covers a full disk")
    try:
        home = mount_point / "home"
        home.mkdir()
        os.chown(home, unprivileged.uid, unprivileged.gid)
        with open(mount_point / "filler", "wb") as f:
            try:
                while True:
                    f.write(b"\0" * 65536)
                    f.flush()
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        yield home
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_on_a_real_tmpfs(unprivileged: Any, small_tmpfs: Path) -> None:
    report = run_case(unprivileged, doctor_body(), small_tmpfs / "cache")
    findings = doctor_findings(report)
    assert report["returncode"] == 1, report
    create = findings["create"]
    assert create["status"] == "fail" and "full" in create["remedy"], create
    free = findings["free-space"]
    assert free["status"] == "warn" and free["data"]["free"] < 1 << 20
    fs = findings["filesystem"]
    assert fs["data"]["type"] == "tmpfs" and fs["status"] == "warn" and fs["remedy"]
    every_problem_has_a_remedy(findings)


# -- 6. doctor as root in a cache another user planted --------------------------------------------
def test_doctor_in_a_foreign_root_writes_nothing_and_follows_no_planted_link(unprivileged: Any) -> None:
    """The hardening issue: doctor, run by root in a root that a real second
    user made, wrote root-owned markers there, then followed a planted
    ``.doctor-<pid>`` scratch symlink and overwrote and deleted files in a
    root-only directory, and exited 0.  Now the cache is not used (another
    user owns it), so doctor writes nothing in it, follows nothing, exits 1."""
    shared_tmp = unprivileged.workdir()
    shared_tmp.chmod(0o1777)
    victim = unprivileged.workdir() / "root-only"
    victim.mkdir(mode=0o700)
    for name in ("entry", "probe.lock", "link-source"):
        (victim / name).write_bytes(b"root's own")
    root = shared_tmp / "cache"
    plant = f"""
cache = safecache.Cache(ROOT)
out["put"] = cache.bucket("b").put("k", b"attacker bytes")
cache.close()
os.symlink({str(victim)!r}, os.path.join(ROOT, ".doctor-{os.getpid()}"))
os.remove(os.path.join(ROOT, "README"))
os.symlink({str(victim / "entry")!r}, os.path.join(ROOT, "README"))
out["uid"] = os.getuid()
"""
    planted = run_case(unprivileged, plant, root)
    assert planted["put"] is True and planted["uid"] == unprivileged.uid, planted
    before, victim_before = snapshot(root), snapshot(victim)
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        returncode = _cli.main(["doctor", "--cache-dir", str(root), "--json"])
    findings = {f["name"]: f for f in json.loads(buffer.getvalue())["findings"]}
    assert returncode == 1
    assert findings["owner"]["status"] == "fail" and "nobody" in findings["owner"]["detail"]
    assert "sudo -H" in findings["owner"]["remedy"] and "chown -R" not in findings["owner"]["remedy"]
    assert not {"write", "markers", "links", "read"} & set(findings)
    assert snapshot(root) == before and owned_by(root, 0) == []
    assert snapshot(victim) == victim_before
    assert all((victim / name).read_bytes() == b"root's own" for name in ("entry", "probe.lock", "link-source"))


# -- 7. HOME missing ---------------------------------------------------------------------------------
DOCTOR_DEFAULT_LOCATION = """
import subprocess
proc = subprocess.run([sys.executable, "-m", "safecache", "doctor", "--json"], capture_output=True, text=True, timeout=60)
out["returncode"] = proc.returncode
out["stderr"] = proc.stderr
out["report"] = json.loads(proc.stdout) if proc.stdout.strip() else None
"""


def test_doctor_with_home_missing_names_home_and_advises_no_chown(unprivileged: Any) -> None:
    """The default location under a HOME that does not exist: the previous
    doctor advised `chown -R $(id -u) '/'` and never said that HOME does not
    exist.  Never a recursive chown of a directory the cache does not own."""
    home = "/nonexistent-safecache-home"
    assert not os.path.lexists(home)
    env = {"HOME": home, "SAFECACHE_TEST_ROOT": "-", "SAFECACHE_TEST_ENTRIES": "{}"}
    report = unprivileged.run_json(child_code(DOCTOR_DEFAULT_LOCATION), env=env)
    assert isinstance(report, dict)
    findings = doctor_findings(report)
    assert report["returncode"] == 1 and report["report"]["state"] == "disabled", report
    assert report["report"]["path"].startswith(home + "/")
    create = findings["create"]
    assert create["status"] == "fail" and f"HOME ({home}) does not exist" in create["detail"], create
    assert "set HOME" in create["remedy"] and "SAFECACHE_DIR" in create["remedy"]
    for f in findings.values():
        assert "chown" not in f["remedy"] and "'/'" not in f["remedy"], f
    every_problem_has_a_remedy(findings)
