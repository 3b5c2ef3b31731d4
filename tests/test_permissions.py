"""Caches this user may not write, or not read, as an unprivileged user sees them.

A cache owned by another user is not used at all (docs/security.md) unless
the user opts into a shared cache; the read-only and unreadable cases below
opt in (``shared=True``), as a CI job reading a cache another account
restored would, to check what the file modes then allow.

We run as root, and ``chmod`` does not stop root: each case builds a cache as
root, sets owners and modes, then runs a short child as ``nobody`` (see
``_unpriv_cases``) that prints what it observed; the parent asserts on it.
Expected everywhere (PRODUCT.md, promise 1): nothing raises in lenient mode,
hits are served where the files can be read, writes become no-ops, and one
``CacheWarning`` says why.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from _unpriv_cases import (
    BUCKET,
    DOCTOR,
    ENTRIES,
    cache_warnings,
    child_code,
    doctor_findings,
    entry_path,
    owned_by,
    restored_cache,
    run_case,
    snapshot,
)

import safecache

pytestmark = pytest.mark.unprivileged

SMALL, LARGE = ENTRIES["small"].decode(), ENTRIES["large"].decode()

# What a lenient child does with a cache it may not write: every operation of
# the minimal API, in the order a tool would use them.
LENIENT_OPERATIONS = f"""
cache = safecache.Cache(ROOT, retry_budget=0.05, lock_timeout=5)
out["state"] = cache.state
bucket = cache.bucket({BUCKET!r})
out["get_small"] = show(bucket.get("small"))
out["get_large"] = show(bucket.get("large"))
out["contains"] = "small" in bucket
out["put_new"] = bucket.put("new", b"value")
out["put_existing"] = bucket.put("small", b"replacement")
out["delete"] = bucket.delete("small")
out["get_or_create_missing"] = show(bucket.get_or_create("computed", lambda: b"made here"))
out["get_or_create_present"] = show(bucket.get_or_create("small", lambda: b"made here"))
out["get_new"] = show(bucket.get("new"))
out["get_small_after"] = show(bucket.get("small"))
out["state_after"] = cache.state
"""


def _only_cache_warnings(report: dict[str, Any]) -> list[str]:
    """The CacheWarnings, after checking that no other warning was issued."""
    assert [c for c, _ in report["warnings"] if c != "CacheWarning"] == [], report["warnings"]
    return cache_warnings(report)


# -- 0. a cache owned by another user, without the shared opt-in ------------------------------
@pytest.fixture(scope="module")
def foreign(unprivileged: Any) -> tuple[Path, dict[str, Any], bool]:
    """A root-owned cache used as nobody, who did not opt into sharing."""
    root = restored_cache(unprivileged.workdir())
    before = snapshot(root)
    report = run_case(unprivileged, LENIENT_OPERATIONS, root)
    return root, report, snapshot(root) == before


def test_another_users_cache_is_not_used(foreign: tuple[Path, dict[str, Any], bool]) -> None:
    _, report, unchanged = foreign
    assert "raised" not in report, report["raised"]
    assert (report["state"], report["state_after"]) == ("disabled", "disabled")
    assert (report["get_small"], report["get_large"], report["contains"]) == (None, None, False)
    assert report["get_or_create_present"] == "made here"  # another user's bytes are never served
    assert (report["put_new"], report["delete"]) == (False, False)
    assert unchanged


def test_another_users_cache_warns_once_naming_the_owner_and_the_ways_out(
    foreign: tuple[Path, dict[str, Any], bool],
) -> None:
    root, report, _ = foreign
    warnings = _only_cache_warnings(report)
    assert len(warnings) == 1, warnings
    assert str(root) in warnings[0] and "owned by root" in warnings[0]
    assert "chown" in warnings[0] and "SAFECACHE_SHARED" in warnings[0]


# -- 1. a root-owned cache this user can read but not write --------------------------------
@pytest.fixture(scope="module")
def read_only(unprivileged: Any) -> tuple[Path, dict[str, Any], bool]:
    """A restored root-owned cache (dirs 0755, files 0644) used as nobody, in
    shared mode: (root, the child's report, whether the tree is unchanged)."""
    root = restored_cache(unprivileged.workdir())
    before = snapshot(root)
    report = run_case(unprivileged, LENIENT_OPERATIONS, root, shared=True)
    return root, report, snapshot(root) == before


def test_read_only_cache_opens_read_only(read_only: tuple[Path, dict[str, Any], bool]) -> None:
    _, report, _ = read_only
    assert "raised" not in report, report["raised"]
    assert (report["state"], report["state_after"]) == ("read-only", "read-only")


def test_read_only_cache_serves_its_hits(read_only: tuple[Path, dict[str, Any], bool]) -> None:
    _, report, _ = read_only
    assert (report["get_small"], report["get_large"], report["contains"]) == (SMALL, LARGE, True)
    assert report["get_or_create_present"] == SMALL
    assert report["get_small_after"] == SMALL


def test_read_only_cache_puts_and_deletes_are_no_ops(read_only: tuple[Path, dict[str, Any], bool]) -> None:
    _, report, unchanged = read_only
    assert (report["put_new"], report["put_existing"], report["delete"]) == (False, False, False)
    assert report["get_new"] is None
    assert unchanged  # nothing created, replaced or removed, not even a lock file


def test_read_only_cache_get_or_create_returns_the_factory_value(
    read_only: tuple[Path, dict[str, Any], bool],
) -> None:
    _, report, _ = read_only
    assert report["get_or_create_missing"] == "made here"


def test_read_only_cache_warns_once_naming_the_path_and_the_reason(
    read_only: tuple[Path, dict[str, Any], bool],
) -> None:
    root, report, _ = read_only
    warnings = _only_cache_warnings(report)
    assert len(warnings) == 1, warnings
    assert str(root) in warnings[0]
    assert "not writable" in warnings[0]


STRICT_READ_ONLY = f"""
cache = safecache.Cache(ROOT, strict=True, retry_budget=0.05)
out["state"] = cache.state
bucket = cache.bucket({BUCKET!r})
out["get"] = show(bucket.get("small"))
for name, call in [("put", lambda: bucket.put("new", b"v")), ("delete", lambda: bucket.delete("small"))]:
    try:
        out[name] = call()
    except Exception as exc:
        out[name + "_error"] = error(exc)
out["get_after"] = show(bucket.get("small"))
"""


def test_read_only_cache_in_strict_mode_raises_on_writes_and_still_reads(unprivileged: Any) -> None:
    root = restored_cache(unprivileged.workdir())
    report = run_case(unprivileged, STRICT_READ_ONLY, root, shared=True)
    assert "raised" not in report, report["raised"]
    assert report["state"] == "read-only"
    for name in ("put", "delete"):
        err = report.get(name + "_error")
        assert err is not None, f"strict {name} returned {report.get(name)!r} instead of raising"
        assert (err["type"], err["cache_error"], err["permission_error"]) == ("CacheReadOnlyError", True, True)
    assert report["get"] == report["get_after"] == SMALL


# -- 2. a root-owned cache this user cannot read -------------------------------------------
def test_unreadable_cache_is_disabled_and_nothing_raises(unprivileged: Any) -> None:
    root = restored_cache(unprivileged.workdir(), dirs=0o700, files=0o600)
    report = run_case(unprivileged, LENIENT_OPERATIONS, root, shared=True)
    assert "raised" not in report, report["raised"]
    assert report["state"] == "disabled"
    assert (report["get_small"], report["get_large"], report["contains"]) == (None, None, False)
    assert (report["put_new"], report["delete"]) == (False, False)
    assert report["get_or_create_missing"] == report["get_or_create_present"] == "made here"


def test_unreadable_cache_warns_once_naming_the_path(unprivileged: Any) -> None:
    root = restored_cache(unprivileged.workdir(), dirs=0o700, files=0o600)
    warnings = _only_cache_warnings(run_case(unprivileged, LENIENT_OPERATIONS, root, shared=True))
    assert len(warnings) == 1, warnings
    assert str(root) in warnings[0] and "not readable" in warnings[0]


STRICT_OPEN = """
try:
    cache = safecache.Cache(ROOT, strict=True)
    out["state"] = cache.state
except Exception as exc:
    out["open_error"] = error(exc)
"""


def test_unreadable_cache_in_strict_mode_raises_a_permission_error_on_open(unprivileged: Any) -> None:
    root = restored_cache(unprivileged.workdir(), dirs=0o700, files=0o600)
    report = run_case(unprivileged, STRICT_OPEN, root, shared=True)
    err = report.get("open_error")
    assert err is not None, f"strict open succeeded with state {report.get('state')!r}"
    assert (err["cache_error"], err["permission_error"]) == (True, True), err


# -- 3. a cache whose parent cannot be entered -----------------------------------------------
def _behind_closed_parent(unprivileged: Any) -> Path:
    parent = unprivileged.workdir() / "private"
    parent.mkdir()
    root = restored_cache(parent)
    os.chmod(parent, 0o700)  # root's own; the cache inside is 0755/0644
    return root


def test_cache_behind_a_parent_that_cannot_be_entered_is_disabled(unprivileged: Any) -> None:
    root = _behind_closed_parent(unprivileged)
    report = run_case(unprivileged, LENIENT_OPERATIONS, root)
    assert "raised" not in report, report["raised"]
    assert report["state"] == "disabled"
    assert (report["get_small"], report["put_new"], report["delete"]) == (None, False, False)
    assert report["get_or_create_missing"] == "made here"
    warnings = _only_cache_warnings(report)
    assert len(warnings) == 1 and str(root) in warnings[0], warnings


def test_another_users_cache_in_strict_mode_raises_a_permission_error_on_open(unprivileged: Any) -> None:
    report = run_case(unprivileged, STRICT_OPEN, restored_cache(unprivileged.workdir()))
    err = report.get("open_error")
    assert err is not None, f"strict open succeeded with state {report.get('state')!r}"
    assert (err["cache_error"], err["permission_error"]) == (True, True), err


def test_cache_behind_a_parent_that_cannot_be_entered_raises_in_strict_mode(unprivileged: Any) -> None:
    report = run_case(unprivileged, STRICT_OPEN, _behind_closed_parent(unprivileged))
    err = report.get("open_error")
    assert err is not None, f"strict open succeeded with state {report.get('state')!r}"
    assert (err["cache_error"], err["permission_error"]) == (True, True), err


# -- 4. a root that does not exist, under a parent this user cannot write ----------------------
CREATE_OPERATIONS = f"""
cache = safecache.Cache(ROOT, retry_budget=0.05, lock_timeout=5)
out["state"] = cache.state
bucket = cache.bucket({BUCKET!r})
out["get"] = show(bucket.get("k"))
out["get_or_create"] = show(bucket.get_or_create("k", lambda: b"made here"))
out["put"] = bucket.put("k", b"value")
out["put_stream"] = bucket.put_stream("s", iter([b"chunk"]))
out["get_after"] = show(bucket.get("k"))
out["state_after"] = cache.state
"""


def test_root_that_cannot_be_created_misses_and_stores_nothing(unprivileged: Any) -> None:
    parent = unprivileged.workdir()  # root's, 0755
    root = parent / "cache"
    report = run_case(unprivileged, CREATE_OPERATIONS, root)
    assert "raised" not in report, report["raised"]
    assert (report["get"], report["get_after"]) == (None, None)
    assert report["get_or_create"] == "made here"
    assert (report["put"], report["put_stream"]) == (False, False)
    assert report["state_after"] == "disabled"  # nothing to read either: there is no root
    assert not root.exists()


def test_root_that_cannot_be_created_warns_once(unprivileged: Any) -> None:
    root = unprivileged.workdir() / "cache"
    warnings = _only_cache_warnings(run_case(unprivileged, CREATE_OPERATIONS, root))
    assert len(warnings) == 1, warnings
    assert str(root) in warnings[0]


def test_root_that_cannot_be_created_warning_says_the_cache_is_disabled(unprivileged: Any) -> None:
    root = unprivileged.workdir() / "cache"
    warnings = _only_cache_warnings(run_case(unprivileged, CREATE_OPERATIONS, root))
    assert len(warnings) == 1, warnings
    assert "disabled" in warnings[0], warnings[0]


# -- 5. entry files this user cannot read, in a cache it can ---------------------------------
UNREADABLE_ENTRY = f"""
cache = safecache.Cache(ROOT, retry_budget=0.05)
bucket = cache.bucket({BUCKET!r})
out["get_small"] = show(bucket.get("small"))
out["contains_small"] = "small" in bucket
out["open_small"] = bucket.open("small") is not None
out["get_large"] = show(bucket.get("large"))
"""


def test_unreadable_entry_files_are_misses(unprivileged: Any) -> None:
    root = restored_cache(unprivileged.workdir())
    path = entry_path(root, "small")
    os.chmod(path, 0o600)  # root's: unreadable; the large entry stays 0644
    report = run_case(unprivileged, UNREADABLE_ENTRY, root, shared=True)
    assert "raised" not in report, report["raised"]
    assert (report["get_small"], report["contains_small"], report["open_small"]) == (None, False, False)
    assert report["get_large"] == LARGE  # the rest of the cache still works
    assert path.exists()  # unreadable is not corrupt: it is not removed


# -- 6. sanity: the user's own cache works ------------------------------------------------------
OWN_CACHE = f"""
cache = safecache.Cache(ROOT, strict=True)
out["state"] = cache.state
bucket = cache.bucket({BUCKET!r})
out["put"] = bucket.put("k", b"value")
out["get"] = show(bucket.get("k"))
out["put_stream"] = bucket.put_stream("s", iter([b"str", b"eam"]))
out["get_stream"] = show(bucket.get("s"))
out["get_or_create"] = show(bucket.get_or_create("g", lambda: b"made"))
out["delete"] = bucket.delete("k")
out["uid"] = os.getuid()
"""


def _own_dir(unprivileged: Any) -> Path:
    own = unprivileged.workdir() / "home"
    own.mkdir()
    os.chown(own, unprivileged.uid, unprivileged.gid)
    return own


def test_users_own_cache_works_normally(unprivileged: Any) -> None:
    root = _own_dir(unprivileged) / "cache"
    report = run_case(unprivileged, OWN_CACHE, root)
    assert "raised" not in report, report["raised"]
    assert report["uid"] == unprivileged.uid != 0  # the child really was unprivileged
    assert report["state"] == "ready"
    assert (report["put"], report["get"]) == (True, "value")
    assert (report["put_stream"], report["get_stream"]) == (True, "stream")
    assert (report["get_or_create"], report["delete"]) == ("made", True)
    assert _only_cache_warnings(report) == []
    assert owned_by(root, 0) == []  # everything it made is the user's


# -- 7. `safecache doctor` as the user -----------------------------------------------------------
def test_doctor_on_a_shared_read_only_cache_fails_create_and_names_the_owner(unprivileged: Any) -> None:
    root = restored_cache(unprivileged.workdir())
    before = snapshot(root)
    report = run_case(unprivileged, DOCTOR, root, shared=True)
    findings = doctor_findings(report)
    assert report["returncode"] == 1, report
    assert report["report"]["healthy"] is False
    create = findings["create"]
    assert create["status"] == "fail", create
    assert "owner" in create["remedy"] and "chown" in create["remedy"], create
    assert findings["read"]["status"] == "ok"  # and it says hits are still served
    assert snapshot(root) == before


def test_doctor_on_the_users_own_cache_is_healthy(unprivileged: Any) -> None:
    root = _own_dir(unprivileged) / "cache"
    run_case(unprivileged, OWN_CACHE, root)
    report = run_case(unprivileged, DOCTOR, root)
    findings = doctor_findings(report)
    assert report["returncode"] == 0, findings
    assert all(f["status"] == "ok" for f in findings.values()), findings
    assert {"create", "write", "read", "lock", "delete"} <= set(findings)


# -- 8. attacks by a second local user ------------------------------------------------------------
ATTACKER_PLANTS = f"""
cache = safecache.Cache(ROOT)
bucket = cache.bucket({BUCKET!r})
out["planted"] = bucket.put("wheel", b"attacker bytes")
out["tree"] = bucket.trees.get_or_create("tool", lambda path: open(os.path.join(path, "run.sh"), "w").write("evil")) is not None
out["uid"] = os.getuid()
"""


def test_a_cache_another_user_planted_serves_root_nothing(unprivileged: Any) -> None:
    """The attacker (a real second user) creates the cache first, in a
    directory both can write; root then opens it: no attacker bytes, no
    attacker tree, nothing written by root into it."""
    shared_tmp = unprivileged.workdir()
    shared_tmp.chmod(0o1777)
    root = shared_tmp / "cache"
    report = run_case(unprivileged, ATTACKER_PLANTS, root)
    assert report["planted"] is True and report["tree"] is True and report["uid"] != 0
    before = snapshot(root)
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cache = safecache.Cache(root)
        bucket = cache.bucket(BUCKET)
        assert cache.state == "disabled"
        assert bucket.get("wheel") is None
        assert bucket.get_or_create("wheel", lambda: b"root's own") == b"root's own"
        assert bucket.trees.get("tool") is None
        cache.close()
    assert any("owned by" in str(w.message) for w in caught)
    assert snapshot(root) == before  # root wrote nothing into the attacker's cache


PROBE_LOCK = """
import errno, fcntl
path = os.environ["SAFECACHE_TEST_LOCK"]
try:
    fd = os.open(path, os.O_RDONLY)
except OSError as exc:
    out["open"] = errno.errorcode[exc.errno]
else:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        out["open"] = "locked"
    except OSError as exc:
        out["open"] = "opened, not locked: " + errno.errorcode[exc.errno]
"""


def test_another_user_cannot_open_our_compute_once_locks(unprivileged: Any) -> None:
    """flock needs only read access: a lock file other users can open is a
    lock they can hold, stalling get_or_create until its timeout."""
    root = unprivileged.workdir() / "cache"
    cache = safecache.Cache(root)
    cache.bucket(BUCKET).get_or_create("k", lambda: b"v")
    cache.close()
    locks = [p for p in root.rglob("*.lock") if "stats" not in p.parts]
    assert locks
    for lock in locks:
        proc = unprivileged.run(child_code(PROBE_LOCK), env={"SAFECACHE_TEST_LOCK": str(lock), "SAFECACHE_TEST_ROOT": str(root), "SAFECACHE_TEST_ENTRIES": "{}"})
        assert proc.returncode == 0, proc.stderr
        assert '"open": "EACCES"' in proc.stdout, (lock, proc.stdout)
