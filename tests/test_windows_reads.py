"""Windows reads: a present entry is not a miss.

Under Windows semantics an open for reading fails with error 5 while the
file is pending delete (another process deleted it while a handle was still
open) and with 5 or 32 while a scanner holds it.  Reads retry these within
the budget, as Go's robustio does; a genuinely unreadable entry (an ACL, the
restored cache of uv #11409) costs no budget when its NT status says so, and
at most one budget per directory per process when nothing says so.

Budgets are measured on a virtual clock (``_workers.VirtualClock``: the
retry loop's sleeps are counted, not waited for); nothing here asserts
wall-clock time.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import sys
import warnings
from pathlib import Path
from typing import Any, Iterator

import pytest

import _workers
import safecache
from safecache import _bucket, _fs, _osops
from safecache.testing import (
    STATUS_ACCESS_DENIED,
    STATUS_DELETE_PENDING,
    WinError,
    holding,
    inject_errors,
    make_oserror,
    windows_semantics,
)

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the emulator needs Linux OFD locks")

FORK = multiprocessing.get_context("fork")
VALUE = b"stored value"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> _workers.VirtualClock:
    """The retry loop's clock, virtual: sleeps are counted and cost nothing."""
    virtual = _workers.VirtualClock()
    monkeypatch.setattr(_fs, "time", virtual)
    return virtual


@pytest.fixture(autouse=True)
def _fresh_denial_memory() -> Iterator[None]:
    _fs.forget_read_denials()
    yield
    _fs.forget_read_denials()


def _stored(root: Path, key: str = "k", value: bytes = VALUE, **options: Any) -> tuple[safecache.Bucket, str]:
    """A bucket holding ``key`` (written before any emulation) and its entry's path."""
    bucket = safecache.Cache(root, **options).bucket("reads")
    assert bucket.put(key, value)
    path = bucket.path_for(key)
    assert path is not None
    return bucket, path


# -- many processes --------------------------------------------------------------------------------


def test_four_processes_reading_under_transient_read_denials_get_no_false_misses(tmp_path: Path) -> None:
    """4 real processes get 50 stored entries 10 times each while 5 % of
    their opens for reading are refused (32 from a scanner, or 5 with
    STATUS_DELETE_PENDING).  Every get returns the stored bytes: no false
    miss, no wrong value, no warning."""
    root = str(tmp_path / "cache")
    keys = [f"k{i}" for i in range(50)]
    bucket = safecache.Cache(root).bucket("reads")
    for i, key in enumerate(keys):
        assert bucket.put(key, _workers.make_value(key, 0, i, [10, 1000, 70_000][i % 3]))
    windows = {"transient_read_denials": 0.05, "transient_lock_violations": 0.0, "seed": 11409}
    queue = FORK.Queue()
    procs = [
        FORK.Process(target=_workers.stored_reader, args=(root, i, keys, 10, windows, queue)) for i in range(4)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    denials = {code: sum(r["emulator"].get(f"transient.open.{code}", 0) for r in results) for code in (5, 32)}
    summary = {
        "gets": sum(r["gets"] for r in results),
        "denials": denials,
        "false_misses": sum(r["false_misses"] for r in results),
        "warnings": sum(r["warnings"] for r in results),
    }
    print(f"\n{summary}")  # the measured numbers (pytest -s)
    assert [p for r in results for p in r["problems"]] == []
    assert not any(r["timed_out"] for r in results)
    assert summary["gets"] == 4 * 10 * 50
    # The denials really were in play, of both kinds...
    assert denials[5] > 20 and denials[32] > 20, summary
    # ...and none of them turned a stored entry into a miss.
    assert summary["false_misses"] == 0, summary
    assert summary["warnings"] == 0, summary


# -- pending deletes -------------------------------------------------------------------------------


def _put_in_another_process(root: Path, key: str, value: bytes) -> None:
    proc = FORK.Process(target=lambda: safecache.Cache(root).bucket("reads").put(key, value))
    proc.start()
    proc.join(timeout=60)
    assert proc.exitcode == 0


def test_a_pending_delete_is_retried_and_then_read(tmp_path: Path, clock: _workers.VirtualClock) -> None:
    """Another program holds the entry (sharing delete) while a process
    deletes it: with classic delete the name stays pending, and an open fails
    with 5 / STATUS_DELETE_PENDING.  The reader retries; once the handle is
    closed and another process has put a new value, it reads that value."""
    root = tmp_path / "cache"
    bucket, path = _stored(root)
    with windows_semantics(posix_delete=False) as ops, contextlib.ExitStack() as held:
        held.enter_context(holding(path, share_delete=True))
        assert bucket.delete("k")  # the name stays, pending delete
        with pytest.raises(PermissionError) as refused:
            ops.open(path, _osops.READ_FLAGS)
        assert getattr(refused.value, "ntstatus", None) == STATUS_DELETE_PENDING

        def the_holder_closes_and_another_process_puts() -> None:
            held.close()
            _put_in_another_process(root, "k", b"new value")

        clock.on_first_sleep = the_holder_closes_and_another_process_puts
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no warning: nothing went wrong
            assert bucket.get("k") == b"new value"
    assert clock.sleeps >= 1  # it was retried


def test_a_pending_delete_that_ends_in_removal_is_a_quiet_miss(tmp_path: Path, clock: _workers.VirtualClock) -> None:
    root = tmp_path / "cache"
    bucket, path = _stored(root)
    with windows_semantics(posix_delete=False), contextlib.ExitStack() as held:
        held.enter_context(holding(path, share_delete=True))
        assert bucket.delete("k")
        clock.on_first_sleep = held.close  # the last handle closes: the name goes
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert bucket.get("k") is None
    assert clock.sleeps >= 1
    assert bucket.counters.errors == {}


def test_the_strict_error_after_an_exhausted_budget_is_cache_busy(tmp_path: Path, clock: _workers.VirtualClock) -> None:
    """A name that stays pending delete through the whole budget: strict mode
    raises CacheBusyError (not a permission error), carrying the first error
    and the attempts; lenient mode counts it as "busy"."""
    root = tmp_path / "cache"
    strict, path = _stored(root, strict=True)
    lenient = safecache.Cache(root).bucket("reads")
    with windows_semantics(posix_delete=False), holding(path, share_delete=True):
        assert strict.delete("k")
        with pytest.raises(safecache.CacheBusyError) as busy:
            strict.get("k")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert lenient.get("k") is None
    assert getattr(busy.value.original, "ntstatus", None) == STATUS_DELETE_PENDING
    assert "attempts" in str(busy.value)
    assert clock.slept <= strict.cache.retry_budget * 2  # one budget for each of the two gets
    assert lenient.counters.errors == {"busy": 1}


def test_a_pending_delete_is_retried_even_where_a_denial_was_remembered(
    tmp_path: Path, clock: _workers.VirtualClock
) -> None:
    """The memory of unreadable directories holds only errors of unknown
    cause: a 5 that says "delete pending" is retried there too."""
    root = tmp_path / "cache"
    bucket, path = _stored(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with inject_errors(WinError(5), ops="open", path_contains=path):
            assert bucket.get("k") is None  # unknown cause, outlasts the budget: remembered
    assert clock.sleeps > 0
    spent = clock.sleeps
    pending = make_oserror(WinError(5, ntstatus=STATUS_DELETE_PENDING), path)
    with inject_errors(pending, ops="open", path_contains=path, times=2) as faults:
        assert bucket.get("k") == VALUE
    assert faults.fired == 2
    assert clock.sleeps == spent + 1  # the retry loop's first attempt is at once


# -- denials that do not clear ---------------------------------------------------------------------


def test_an_access_denied_status_costs_no_budget(tmp_path: Path, clock: _workers.VirtualClock) -> None:
    """An ACL denial, as Windows reports it (5 with STATUS_ACCESS_DENIED), is
    a miss at once: lenient mode warns once ("permission"), strict mode
    raises CachePermissionError, and the retry loop never sleeps."""
    root = tmp_path / "cache"
    bucket, path = _stored(root)
    strict = safecache.Cache(root, strict=True).bucket("reads")
    with windows_semantics(acl_denied=[path]) as ops:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert [bucket.get("k") for _ in range(20)] == [None] * 20
        with pytest.raises(safecache.CachePermissionError) as denied:
            strict.get("k")
    assert getattr(denied.value.original, "ntstatus", None) == STATUS_ACCESS_DENIED
    assert clock.sleeps == 0
    assert ops.stats["acl"] == 21  # one open per get: nothing retried
    assert len(caught) == 1 and "(permission)" in str(caught[0].message)
    assert bucket.counters.errors == {"permission": 20}


def test_a_denial_of_unknown_cause_costs_one_budget_per_directory(tmp_path: Path, clock: _workers.VirtualClock) -> None:
    """A 5 without a telling NT status may be a pending delete: the first get
    retries it for the whole budget; once it has outlasted the budget, the
    directory is remembered and later gets of it (or of other entries in the
    same directory) are misses at once.  The error is a permission denial,
    not "busy"."""
    root = tmp_path / "cache"
    bucket, path = _stored(root)
    strict = safecache.Cache(root, strict=True).bucket("reads")
    with inject_errors(WinError(5), ops="open", path_contains=str(Path(path).parent)) as faults:
        with pytest.raises(safecache.CachePermissionError):
            strict.get("k")
        after_first = (clock.sleeps, clock.slept, faults.fired)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert [bucket.get("k") for _ in range(20)] == [None] * 20
    sleeps, slept, fired = after_first
    assert sleeps > 0 and slept <= strict.cache.retry_budget  # one budget, spent once
    assert clock.sleeps == sleeps  # ...and never again
    assert faults.fired == fired + 20  # one open per later get
    assert [str(w.message) for w in caught if "(permission)" in str(w.message)] != []
    assert bucket.counters.errors == {"permission": 20}


def test_a_transient_denial_of_unknown_cause_is_retried_and_not_remembered(
    tmp_path: Path, clock: _workers.VirtualClock
) -> None:
    root = tmp_path / "cache"
    bucket, path = _stored(root)
    for _ in range(2):
        with inject_errors(WinError(5), ops="open", path_contains=path, times=3) as faults:
            assert bucket.get("k") == VALUE
        assert faults.fired == 3  # retried both times: a denial that cleared is not remembered
    assert clock.sleeps == 2 * 2  # the retry loop's first attempt is at once


@pytest.mark.parametrize("status", ["access-denied", "unknown"])
def test_an_unreadable_entry_costs_at_most_one_budget_per_process(tmp_path: Path, status: str) -> None:
    """4 real processes each get two unreadable entries of one directory 10
    times.  With STATUS_ACCESS_DENIED (an ACL, as the emulator's
    ``acl_denied`` reports it) no process spends any budget; with 5 and no
    status (a fault injector) each process spends at most one budget, in one
    get.  Measured on each process's virtual clock."""
    root = tmp_path / "cache"
    keys = ["a", "b"]
    bucket = safecache.Cache(root).bucket("reads")
    for key in keys:
        assert bucket.put(key, VALUE)
    paths = [bucket.path_for(k) or "" for k in keys]
    directory = str(Path(paths[0]).parent)
    # Two keys whose entries share a fan-out directory (the first byte of the digest).
    other = next(f"x{i}" for i in range(10_000) if str(Path(bucket.path_for(f"x{i}") or "").parent) == directory)
    assert bucket.put(other, VALUE)
    keys = [keys[0], other]
    fault: Any = None
    windows: dict[str, Any] = {}
    if status == "access-denied":
        windows = {"acl_denied": [directory]}
    else:
        fault = ((WinError(5),), {"ops": "open", "path_contains": directory})
    queue = FORK.Queue()
    procs = [
        FORK.Process(target=_workers.unreadable_reader, args=(str(root), keys, 10, windows, fault, queue))
        for _ in range(4)
    ]
    for p in procs:
        p.start()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert [p for r in results for p in r["problems"]] == []
    for r in results:
        assert r["values"] == [None] * 20  # unreadable: misses, and nothing raised
        if status == "access-denied":
            assert r["slept"] == 0 and r["gets_that_slept"] == 0
        else:
            assert 0 < r["slept"] <= r["budget"]
            assert r["gets_that_slept"] == 1


# -- what is not retried ---------------------------------------------------------------------------


def test_a_missing_entry_is_not_retried(tmp_path: Path, clock: _workers.VirtualClock) -> None:
    """As Go's robustio: a file that is not there may genuinely not exist."""
    bucket = safecache.Cache(tmp_path / "cache").bucket("reads")
    with windows_semantics():
        assert bucket.get("absent") is None
    assert clock.sleeps == 0


def test_the_posix_fast_path_falls_back_to_the_retrying_reader(
    tmp_path: Path, clock: _workers.VirtualClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bucket.get's fast path (plain os.open, taken while the real OS is in
    force on POSIX) hands any error to _fs.read_file, whose open retries: a
    refusal of both is not a miss."""
    bucket, path = _stored(tmp_path / "cache")
    assert _osops.current is _osops.fast_path

    def refused(*args: Any) -> int:
        raise make_oserror(WinError(32), path)

    real_open = _osops.real.open
    refusals = [make_oserror(WinError(5, ntstatus=STATUS_DELETE_PENDING), path)]

    opens: list[str] = []

    def refused_once(name: str, flags: int, mode: int = 0o666, *, share_delete: bool = True) -> int:
        opens.append(name)
        if refusals:
            raise refusals.pop()
        return real_open(name, flags, mode, share_delete=share_delete)

    monkeypatch.setattr(_bucket, "_os_open", refused)  # the fast path's own open
    monkeypatch.setitem(vars(_osops.real), "open", refused_once)  # still the fast path's object
    assert bucket.get("k") == VALUE
    assert opens == [path, path]  # read_file's open, refused; the retry's, which worked
