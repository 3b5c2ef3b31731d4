"""One test per failure reported against a tool's cache, named after the report.

Each docstring quotes what happened to the tool; the test puts safecache in
the same situation (for real where we can: other processes, an unprivileged
user, the Windows emulator; by fault injection where we cannot: a read-only
file system, a file system without locks) and checks that the caller is not
broken.  The reports are summarised, with their sources, in the project's
reference notes (reference/python-tool-caches.md, uv-cache.md, python-libs.md).
"""

from __future__ import annotations

import contextlib
import errno
import json
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _unpriv_cases import (
    BUCKET,
    DOCTOR,
    ENTRIES,
    cache_warnings,
    doctor_findings,
    owned_by,
    restored_cache,
    run_case,
    snapshot,
)

import safecache
from safecache import _fs
from safecache.testing import WinError, enable_windows_semantics, holding, inject_errors, windows_semantics

ctx = multiprocessing.get_context("fork")

OLD, NEW = b"old value", b"new value"  # same length: put must read the header to tell them apart
BUDGET = 0.05  # retry budget: enough for several attempts, short enough to keep the file fast


@contextlib.contextmanager
def recorded() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning issued inside the block."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def cache_warning_messages(caught: list[warnings.WarningMessage]) -> list[str]:
    assert all(issubclass(w.category, safecache.CacheWarning) for w in caught), [str(w.message) for w in caught]
    return [str(w.message) for w in caught]


def temp_files(root: Path | str) -> list[Path]:
    return list(Path(root).rglob("*.tmp"))


# -- ruff #12284 ---------------------------------------------------------------------------------
def _hold_open(path: str, ready: Any, release: Any) -> None:
    """Child: hold ``path`` open with a plain handle (no FILE_SHARE_DELETE),
    as another ruff process reading the cache file does, until told to stop."""
    with holding(path, share_delete=False):
        ready.set()
        release.wait(60)


@contextlib.contextmanager
def held_by_another_process(path: str) -> Iterator[None]:
    ready, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold_open, args=(path, ready, release))
    holder.start()
    try:
        while not ready.wait(0.05):
            assert holder.is_alive(), f"the holder process died (exit code {holder.exitcode})"
        yield
    finally:
        release.set()
        holder.join(30)
    assert holder.exitcode == 0


@pytest.fixture
def windows_bucket(tmp_path: Path) -> Iterator[tuple[safecache.Bucket, Any]]:
    """A bucket holding OLD under key "k", used under the Windows emulator:
    (bucket, the emulator)."""
    with windows_semantics() as ops:
        bucket = safecache.Cache(tmp_path / "cache", retry_budget=BUDGET).bucket("lint")
        assert bucket.put("k", OLD)
        yield bucket, ops


def test_ruff_12284_put_over_a_file_another_process_holds_open_is_skipped_not_raised(
    windows_bucket: tuple[safecache.Bucket, Any],
) -> None:
    """ruff #12284: pytest-xdist ran many ruff processes on one project; on
    Windows, renaming the new cache file over one another process had open
    failed with "failed to persist temporary file: Access is denied. (os
    error 5)", and ruff exited 2, failing the whole test run."""
    bucket, ops = windows_bucket
    path = bucket.path_for("k")
    assert path is not None
    with held_by_another_process(path), recorded() as caught:
        assert bucket.put("k", NEW) is False  # write skipped after retries
        assert bucket.put("k", NEW) is False  # again: still no exception, no second warning
        assert bucket.get("k") == OLD  # the entry already there stays valid and served
    assert ops.stats.get("rule.5", 0) >= 2  # the emulator really refused the replace, with error 5
    messages = cache_warning_messages(caught)
    assert len(messages) == 1, messages
    assert "busy" in messages[0] and "attempts" in messages[0]
    assert temp_files(Path(path).parents[4]) == []  # the refused temp file was removed


def test_ruff_12284_identical_put_over_a_held_file_succeeds_without_touching_it(
    windows_bucket: tuple[safecache.Bucket, Any],
) -> None:
    """ruff #12284: every process wrote the same cache file with the same
    contents; the one that renames over an identical entry need not rename."""
    bucket, _ = windows_bucket
    path = bucket.path_for("k")
    assert path is not None
    before = os.stat(path)
    recorder = inject_errors(errno.EIO, ops=())  # fails nothing, records every call
    with held_by_another_process(path), recorded() as caught, recorder as calls:
        assert bucket.put("k", OLD) is True
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    mutations = [c for c in calls.calls if c.op in ("replace", "rename", "link", "unlink", "write", "mkdir")]
    assert mutations == []
    assert caught == []


def test_ruff_12284_put_succeeds_once_the_holder_closes(windows_bucket: tuple[safecache.Bucket, Any]) -> None:
    """ruff #12284: the failure is transient; once the reader closes the file
    the next write must go through."""
    bucket, _ = windows_bucket
    path = bucket.path_for("k")
    assert path is not None
    with recorded():
        with held_by_another_process(path):
            assert bucket.put("k", NEW) is False
        assert bucket.put("k", NEW) is True
    assert bucket.get("k") == NEW


def test_ruff_12284_strict_mode_raises_cache_busy_carrying_winerror_5(tmp_path: Path) -> None:
    """ruff #12284, for a caller that asked for errors: a typed error that
    keeps the real "Access is denied" (winerror 5), not a generic one."""
    with windows_semantics():
        bucket = safecache.Cache(tmp_path / "cache", strict=True, retry_budget=BUDGET).bucket("lint")
        assert bucket.put("k", OLD)
        path = bucket.path_for("k")
        assert path is not None
        with held_by_another_process(path):
            with pytest.raises(safecache.CacheBusyError) as info:
                bucket.put("k", NEW)
            assert bucket.get("k") == OLD
    original = info.value.original
    assert isinstance(original, PermissionError)
    assert original.winerror == 5  # type: ignore[attr-defined]
    assert info.value.__cause__ is original
    assert temp_files(tmp_path) == []


# -- uv #11409 -----------------------------------------------------------------------------------
UV_11409_READ = f"""
from safecache.testing import enable_windows_semantics
enable_windows_semantics()  # the runner was Windows
cache = safecache.Cache(ROOT, retry_budget=0.05)
bucket = cache.bucket({BUCKET!r})
out["state"] = cache.state
out["hits"] = {{key: show(bucket.get(key)) for key in ENTRIES}}
out["get_or_create"] = show(bucket.get_or_create("small", lambda: b"recomputed"))
out["put"] = bucket.put("new", b"value")
"""


@pytest.mark.unprivileged
def test_uv_11409_restored_cache_owned_by_another_user_is_refused_and_says_how_to_use_it(unprivileged: Any) -> None:
    """uv #11409: a GitLab Windows runner restored a cached cache directory;
    installing then failed with "Failed to read from the distribution cache:
    Access is denied (os error 5)".  A cache another account wrote is not
    trusted by default (docs/security.md): nothing raises, nothing is served
    or written, and the one warning names the owner and both ways out."""
    root = restored_cache(unprivileged.workdir())
    before = snapshot(root)
    report = run_case(unprivileged, UV_11409_READ, root)
    assert "raised" not in report, report["raised"]
    assert report["state"] == "disabled"
    assert report["get_or_create"] == "recomputed"  # the factory ran: another user's bytes are not served
    assert report["put"] is False
    (warning,) = cache_warnings(report)
    assert "owned by root" in warning and "chown" in warning and "SAFECACHE_SHARED" in warning
    assert snapshot(root) == before


@pytest.mark.unprivileged
def test_uv_11409_restored_cache_shared_on_purpose_serves_hits(unprivileged: Any) -> None:
    """The same restored cache, with the job opting into a shared cache: the
    entries it can read are served, nothing is written, one warning."""
    root = restored_cache(unprivileged.workdir())
    before = snapshot(root)
    report = run_case(unprivileged, UV_11409_READ, root, shared=True)
    assert "raised" not in report, report["raised"]
    assert report["state"] == "read-only"
    assert report["hits"] == {key: value.decode() for key, value in ENTRIES.items()}
    assert report["get_or_create"] == ENTRIES["small"].decode()  # a hit: the factory did not run
    assert report["put"] is False
    assert len(cache_warnings(report)) == 1, report["warnings"]
    assert snapshot(root) == before


@pytest.mark.unprivileged
def test_uv_11409_doctor_explains_a_restored_cache_owned_by_another_user(unprivileged: Any) -> None:
    """uv #11409: the user asked how to debug "Access is denied" from the
    cache, and nothing in the tool could tell them."""
    root = restored_cache(unprivileged.workdir())
    report = run_case(unprivileged, DOCTOR, root)
    findings = doctor_findings(report)
    assert report["returncode"] == 1, findings
    failing = [f for f in findings.values() if f["status"] == "fail"]
    assert failing, findings
    remedy = " ".join(f["remedy"] for f in failing)
    assert "owner" in remedy and "chown" in remedy, failing
    assert "root" in findings["owner"]["detail"]  # it names who owns the cache


# -- ruff #8147 ----------------------------------------------------------------------------------
READ_CORRUPT = """
import json, sys, tracemalloc
import safecache
tracemalloc.start()
bucket = safecache.Cache(sys.argv[1], strict=True).bucket("fmt")
value = bucket.get("k") if sys.argv[2] == "get" else bucket.open("k")
print(json.dumps({"value": repr(value), "peak": tracemalloc.get_traced_memory()[1]}))
"""


@pytest.mark.parametrize("reader", ["get", "open"])
@pytest.mark.parametrize("size", [100, 100_000], ids=["small", "large"])
def test_ruff_8147_huge_length_field_read_by_a_fresh_process_is_a_miss(tmp_path: Path, size: int, reader: str) -> None:
    """ruff #8147: a corrupt cache file made ruff abort with "memory
    allocation of 7453010365139656813 bytes failed"."""
    root = tmp_path / "cache"
    bucket = safecache.Cache(root).bucket("fmt")
    assert bucket.put("k", b"x" * size)
    path = Path(bucket.path_for("k"))  # type: ignore[arg-type]
    raw = path.read_bytes()
    head = bytearray(raw[:44])
    head[8:16] = (7453010365139656813).to_bytes(8, "little")
    path.write_bytes(bytes(head) + zlib.crc32(bytes(head)).to_bytes(4, "little") + raw[48:])  # a valid header CRC
    proc = subprocess.run(
        [sys.executable, "-c", READ_CORRUPT, str(root), reader], check=False, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "MemoryError" not in proc.stderr
    report = json.loads(proc.stdout)
    assert report["value"] == "None"
    assert report["peak"] < 16 * 2**20  # memory bounded by the file, never by the length field
    assert not path.exists()  # the corrupt entry was removed


# -- black #5192 ---------------------------------------------------------------------------------
def test_black_5192_empty_cache_files_and_an_empty_temp_file_are_misses_then_recomputed(tmp_path: Path) -> None:
    """black #5192: an empty cache file (left by a crash or a full disk)
    raised EOFError and stopped black."""
    bucket = safecache.Cache(tmp_path / "cache", strict=True).bucket("fmt")
    keys = [f"file{i}.py" for i in range(20)]
    for key in keys:
        assert bucket.put(key, b"formatted " + key.encode())
        Path(bucket.path_for(key)).write_bytes(b"")  # type: ignore[arg-type]
    # An empty temp file with the very name the next write will try first: a
    # crashed writer's leftover whose pid this process now has.
    first = bucket.path_for(keys[0])
    assert first is not None
    leftover = Path(f"{first}.{os.getpid():x}-{_fs._counter + 1:x}.tmp")
    leftover.write_bytes(b"")
    assert [bucket.get(key) for key in keys] == [None] * len(keys)
    assert [key in bucket for key in keys] == [False] * len(keys)
    with inject_errors(errno.EIO, ops=()) as recorder:  # fails nothing, records every call
        made = [bucket.get_or_create(key, lambda key=key: b"recomputed " + key.encode()) for key in keys]
    assert made == [b"recomputed " + key.encode() for key in keys]
    assert [bucket.get(key) for key in keys] == made  # stored, not just returned
    assert bucket.counters.corrupt_removed == len(keys)
    assert ("open", str(leftover)) in [(c.op, c.path) for c in recorder.calls]  # the name clash did happen
    assert leftover.read_bytes() == b""  # and O_EXCL kept the write out of the leftover


# -- pytest #12381 -------------------------------------------------------------------------------
def _create_root_on_windows(root: str, name: str, start: Any, queue: Any) -> None:
    import traceback

    try:
        enable_windows_semantics()
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a CacheWarning would be a failure too
            start.wait(30)
            cache = safecache.Cache(root, strict=True, retry_budget=2.0)
            assert cache.bucket("b").put(name, b"v")
            assert cache.bucket("b").get(name) == b"v"
        queue.put((name, None))
    except BaseException:  # noqa: BLE001 - reported to the parent
        queue.put((name, traceback.format_exc()))


def test_pytest_12381_many_processes_creating_the_root_at_once_on_windows(tmp_path: Path) -> None:
    """pytest #12381: under xdist, workers creating the cache directory at
    once failed with "OSError: [Errno 39] Directory not empty"; on Windows
    the loser got FileExistsError instead (#12580).  Here under the Windows
    emulator, where mkdir and link of an existing name raise winerror 183."""
    root = tmp_path / "race" / "deep" / "cache"
    start, queue = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_create_root_on_windows, args=(str(root), f"w{i}", start, queue)) for i in range(8)]
    for p in procs:
        p.start()
    start.set()
    results = dict(queue.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
    assert {name: error for name, error in results.items() if error} == {}
    assert [p.exitcode for p in procs] == [0] * 8
    assert sorted(p.name for p in root.iterdir()) == [".gitignore", "CACHEDIR.TAG", "README", "buckets"]
    assert (root / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert temp_files(root) == []
    bucket = safecache.Cache(root, strict=True).bucket("b")
    assert [bucket.get(f"w{i}") for i in range(8)] == [b"v"] * 8


# -- pip #7488 -----------------------------------------------------------------------------------
PIP_7488 = f"""
import io
cache = safecache.Cache(ROOT, retry_budget=0.05, lock_timeout=5)
bucket = cache.bucket({BUCKET!r})
out["state"] = cache.state
out["get_or_create"] = show(bucket.get_or_create("wheel", lambda: b"built wheel"))
out["put"] = bucket.put("wheel", b"built wheel")
out["put_stream"] = bucket.put_stream("big-wheel", io.BytesIO(b"w" * 100_000))
out["put_stream_iter"] = bucket.put_stream("other", iter([b"a", b"b"]))
out["delete"] = bucket.delete("small")
out["hit"] = show(bucket.get("small"))
"""


@pytest.mark.unprivileged
@pytest.mark.parametrize("bucket_mode", [0o755, 0o777], ids=["bucket-0755", "bucket-world-writable"])
def test_pip_7488_cache_owned_by_another_user_never_reaches_a_failing_write(
    unprivileged: Any, bucket_mode: int
) -> None:
    """pip #7488: with a cache directory owned by another user, pip warned
    "The cache has been disabled" and then crashed anyway with "[Errno 13]
    Permission denied" writing to cache/wheels.  One decision must hold for
    every operation, even where a deeper directory would let a write in."""
    root = restored_cache(unprivileged.workdir())
    os.chmod(root / "buckets" / BUCKET, bucket_mode)
    before = snapshot(root)
    report = run_case(unprivileged, PIP_7488, root)
    assert "raised" not in report, report["raised"]
    assert report["state"] == "disabled"
    assert report["get_or_create"] == "built wheel"
    assert (report["put"], report["put_stream"], report["put_stream_iter"], report["delete"]) == (
        False,
        False,
        False,
        False,
    )
    assert report["hit"] is None  # pip's rule in full: the cache is disabled, not read-only
    assert len(cache_warnings(report)) == 1, report["warnings"]
    assert snapshot(root) == before
    assert owned_by(root, unprivileged.uid) == []


# -- mypy #21495 ---------------------------------------------------------------------------------
@contextlib.contextmanager
def read_only_file_system() -> Iterator[list[Any]]:
    """EROFS from every call that would create or change a name: mkdir,
    replace, rename, link, unlink, and opens that create (temp files, lock
    files).  Plain reads still work, as on a read-only mount."""
    with contextlib.ExitStack() as stack:
        faults = [
            stack.enter_context(inject_errors(errno.EROFS, ops=("mkdir", "replace", "rename", "link", "unlink"))),
            stack.enter_context(inject_errors(errno.EROFS, ops=("open",), path_contains=".tmp")),
            stack.enter_context(inject_errors(errno.EROFS, ops=("open",), path_contains=".lock")),
        ]
        yield faults


def test_mypy_21495_read_only_file_system_on_a_fresh_root_degrades_to_no_cache(tmp_path: Path) -> None:
    """mypy #21495: on a read-only file system, mypy stopped with
    "OSError: [Errno 30] Read-only file system" from os.makedirs, reported
    as an INTERNAL ERROR."""
    root = tmp_path / "cache"
    bucket = safecache.Cache(root, retry_budget=BUDGET).bucket("mypy")
    with read_only_file_system() as faults, recorded() as caught:
        assert bucket.get_or_create("a", lambda: b"computed") == b"computed"
        assert bucket.put("b", b"value") is False
        assert bucket.put_stream("c", iter([b"value"])) is False
        assert bucket.get("b") is None
        assert bucket.get_or_create("b", lambda: b"again") == b"again"
    assert sum(f.fired for f in faults) >= 1
    messages = cache_warning_messages(caught)
    assert len(messages) == 1, messages
    assert "Read-only file system" in messages[0]
    assert not root.exists()


def test_mypy_21495_read_only_file_system_still_serves_existing_entries(tmp_path: Path) -> None:
    """mypy #21495, with a cache that was filled before the file system
    became read-only (a container image, a read-only bind mount)."""
    root = tmp_path / "cache"
    bucket = safecache.Cache(root, retry_budget=BUDGET).bucket("mypy")
    assert bucket.put("old", OLD)
    bucket = safecache.Cache(root, retry_budget=BUDGET).bucket("mypy")
    before = snapshot(root)
    with read_only_file_system(), recorded() as caught:
        assert bucket.get("old") == OLD
        assert bucket.get_or_create("old", lambda: b"unused") == OLD
        assert bucket.get_or_create("new", lambda: b"computed") == b"computed"
        assert bucket.put("old", NEW) is False
        assert bucket.delete("old") is False
        assert bucket.get("old") == OLD
    assert len(cache_warning_messages(caught)) == 1
    assert snapshot(root) == before


def test_mypy_21495_read_only_file_system_in_strict_mode_raises_cache_read_only_error(tmp_path: Path) -> None:
    """mypy #21495, for a caller that asked for errors: a typed
    CacheReadOnlyError (a PermissionError), not an internal error."""
    bucket = safecache.Cache(tmp_path / "cache", strict=True, retry_budget=BUDGET).bucket("mypy")
    with read_only_file_system(), pytest.raises(safecache.CacheReadOnlyError) as info:
        bucket.put("b", b"value")
    assert isinstance(info.value, PermissionError)
    assert info.value.errno == errno.EROFS
    assert isinstance(info.value.__cause__, OSError) and info.value.__cause__.errno == errno.EROFS


# -- uv #9050 ------------------------------------------------------------------------------------
def _open_descriptors() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("code", [errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP], ids=errno.errorcode.get)
def test_uv_9050_file_system_without_locks_computes_without_the_lock(tmp_path: Path, code: int) -> None:
    """uv #9050: on a file system that cannot lock (a network or FUSE mount),
    taking the cache lock failed and uv could not run at all."""
    bucket = safecache.Cache(tmp_path / "cache", retry_budget=BUDGET).bucket("uv")
    keys = [f"pkg{i}" for i in range(10)]
    runs: list[str] = []

    def factory(key: str) -> bytes:
        runs.append(key)
        return f"built {key}".encode()

    descriptors = _open_descriptors()
    with inject_errors(code, ops=("lock",)) as faults, recorded() as caught:
        first = [bucket.get_or_create(key, lambda key=key: factory(key)) for key in keys]
        second = [bucket.get_or_create(key, lambda key=key: factory(key)) for key in keys]
    assert first == second == [f"built {key}".encode() for key in keys]
    assert runs == keys  # each value computed once, then read back from the cache
    assert faults.fired == len(keys)  # the second round were hits: no lock needed
    messages = cache_warning_messages(caught)
    assert len(messages) == 1, messages
    assert "lock-unsupported" in messages[0]
    assert _open_descriptors() == descriptors  # a failed lock leaks no descriptor


# -- joblib #1855 --------------------------------------------------------------------------------
def test_joblib_1855_exhausted_retries_raise_the_real_error(tmp_path: Path) -> None:
    """joblib #1855: when joblib's retry window on Windows ran out, its bare
    `raise` produced "RuntimeError: No active exception to reraise" instead
    of the real PermissionError."""
    bucket = safecache.Cache(tmp_path / "cache", strict=True, retry_budget=BUDGET).bucket("memory")
    assert bucket.put("k", OLD)
    with inject_errors(WinError(32), ops=("replace",)) as faults, pytest.raises(safecache.CacheBusyError) as info:
        bucket.put("k", NEW)
    err = info.value
    assert faults.fired >= 2  # it did retry before giving up
    assert isinstance(err, OSError)
    assert isinstance(err.original, PermissionError)
    assert err.original.winerror == 32  # type: ignore[attr-defined]
    assert err.__cause__ is err.original
    match = re.search(r"(\d+) attempts over (\d+\.\d+) s", str(err))
    assert match is not None, str(err)
    assert int(match.group(1)) == faults.fired
    copy = pickle.loads(pickle.dumps(err))
    assert type(copy) is safecache.CacheBusyError
    assert (str(copy), copy.errno, copy.filename, copy.cause) == (str(err), err.errno, err.filename, "busy")
    assert isinstance(copy.original, PermissionError) and copy.original.winerror == 32  # type: ignore[attr-defined]
    assert copy.__cause__ is copy.original
    assert bucket.get("k") == OLD


# -- found while writing these tests (fixed): read-only targets, markers before locks ------------
def test_replacing_a_read_only_entry_on_windows_is_not_retried_as_busy(tmp_path: Path) -> None:
    """A cache restored by CI (uv #11409's setting) can arrive with read-only
    files.  On Windows, replacing a read-only file fails with "Access is
    denied" (5) every time: retrying it spends the whole budget on every put
    of that key, and the warning blames another process ("busy")."""
    with windows_semantics():
        bucket = safecache.Cache(tmp_path / "cache", retry_budget=0.2).bucket("lint")
        assert bucket.put("k", OLD)
        os.chmod(bucket.path_for("k"), 0o444)  # type: ignore[arg-type]  # the read-only attribute
        with recorded() as caught, inject_errors(errno.EIO, ops=()) as recorder:
            bucket.put("k", NEW)
    replaces = [c for c in recorder.calls if c.op == "replace"]
    assert len(replaces) <= 2, f"{len(replaces)} replace attempts on a permanently read-only target"
    assert not any("(busy)" in str(w.message) for w in caught), [str(w.message) for w in caught]


def test_get_or_create_on_a_fresh_root_never_leaves_a_root_without_its_markers(tmp_path: Path) -> None:
    """docs/format.md: "The first write creates the root, its markers and the
    directories it needs."  A tool that keeps its cache in the project
    (.mypy_cache, .ruff_cache) relies on the root's ``.gitignore`` of ``*``;
    without it the lock files show up in ``git status``."""
    root = tmp_path / "cache"
    bucket = safecache.Cache(root).bucket("lint")

    def factory() -> bytes:
        raise RuntimeError("the tool's own error")

    with pytest.raises(RuntimeError):
        bucket.get_or_create("k", factory)
    if root.exists():
        assert (root / "CACHEDIR.TAG").exists() and (root / ".gitignore").exists(), sorted(
            str(p.relative_to(root)) for p in root.rglob("*")
        )
