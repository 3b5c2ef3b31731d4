"""safecache.adapters.hishel: hishel 2's storages in a bucket.

The contract of hishel's base classes (create_entry stores the body as the
consumer reads it and publishes it at the end; get_entries returns complete,
unexpired entries and restarts their idle time; update_headers and
remove_entry; no storage failure fails a request; a body is served whole or
raises), then hishel's own storage tests run against the adapter from the
released sdist, then the 8-process trial against a local server.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import hashlib
import importlib.metadata
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from hishel import AsyncBaseStorage, BaseStorage, Headers, Request, Response
from hishel.httpx import AsyncCacheTransport, CacheTransport
from time_machine import travel

import safecache
from safecache import _osops
from safecache.adapters import hishel as adapter
from safecache.adapters.hishel import AsyncStorage, SyncStorage
from safecache.testing import OPERATIONS, OsOps, WinError, inject_errors, windows_semantics

ROOT = Path(__file__).resolve().parent.parent
URL = "https://example.com/a"
START = datetime(2026, 1, 1, tzinfo=timezone.utc)


def at(seconds: float) -> Any:
    return travel(START + timedelta(seconds=seconds), tick=False)


@pytest.fixture
def bucket(cache: safecache.Cache) -> safecache.Bucket:
    return cache.bucket("http", version=1)


def request() -> Request:
    return Request(method="GET", url=URL, headers=Headers({"accept": "*/*"}))


def store(storage: SyncStorage, key: str = "k", body: bytes = b"data", **limits: Any) -> uuid.UUID:
    entry = storage.create_entry(request(), Response(200, Headers({"etag": '"1"'}), iter([body])), key, **limits)
    assert b"".join(entry.response.stream) == body  # type: ignore[arg-type]
    return entry.id


def read(entry: Any) -> bytes:
    return b"".join(entry.response.stream)


def stored_entries(bucket: safecache.Bucket) -> int:
    return sum(1 for info in bucket.items() if info.key[0] == "hishel-entry")


def files(bucket: safecache.Bucket) -> list[str]:
    """Every file under the bucket's directory (entries, sidecars, temp files)."""
    assert bucket.directory is not None
    return [name for _dir, _subdirs, names in os.walk(bucket.directory) for name in names]


class Origin:
    """An httpx mock server that counts its requests."""

    def __init__(self, body: bytes = b"hello" * 1000) -> None:
        self.body = body
        self.requests = 0

    def __call__(self, req: httpx.Request) -> httpx.Response:
        self.requests += 1
        return httpx.Response(200, content=self.body, headers={"cache-control": "max-age=3600", "etag": '"v1"'})


# -- the shape ----------------------------------------------------------------------------------------
def test_the_storages_are_hishels_base_classes(bucket: safecache.Bucket) -> None:
    assert isinstance(SyncStorage(bucket), BaseStorage)
    assert isinstance(AsyncStorage(bucket), AsyncBaseStorage)


def test_without_hishel_the_import_error_names_the_extra() -> None:
    code = (
        "import sys\nsys.modules['hishel'] = None\n"
        "try:\n import safecache.adapters.hishel\nexcept ImportError as e: print(e)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pip install 'safecache[hishel]'" in out


# -- storing and serving --------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024])
def test_a_response_is_stored_as_it_is_read_then_served_from_the_cache(bucket: safecache.Bucket, size: int) -> None:
    origin = Origin(os.urandom(size))
    client = httpx.Client(transport=CacheTransport(httpx.MockTransport(origin), storage=SyncStorage(bucket)))
    first, second = client.get(URL), client.get(URL)
    assert first.content == second.content == origin.body
    assert second.extensions["caching"]["from_cache"] and origin.requests == 1


@pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024])
def test_the_async_storage_stores_and_serves_the_same(bucket: safecache.Bucket, size: int) -> None:
    origin = Origin(os.urandom(size))

    async def main() -> list[httpx.Response]:
        transport = AsyncCacheTransport(httpx.MockTransport(origin), storage=AsyncStorage(bucket))
        async with httpx.AsyncClient(transport=transport) as client:
            return [await client.get(URL), await client.get(URL)]

    first, second = asyncio.run(main())
    assert first.content == second.content == origin.body
    assert second.extensions["caching"]["from_cache"] and origin.requests == 1


def test_an_entry_is_invisible_until_its_body_is_read_to_the_end(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    entry = storage.create_entry(request(), Response(200, stream=iter([b"a", b"b"])), "k")
    stream = iter(entry.response.stream)  # type: ignore[arg-type]
    assert next(stream) == b"a"
    assert storage.get_entries("k") == []
    assert list(stream) == [b"b"]
    [got] = storage.get_entries("k")
    assert read(got) == b"ab" and got.id == entry.id and got.request.url == URL


def test_a_stream_closed_early_stores_nothing_and_leaves_no_file(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    entry = storage.create_entry(request(), Response(200, stream=iter([b"x" * 100_000] * 3)), "k")
    next(iter(entry.response.stream))  # type: ignore[arg-type]
    entry.response.stream.close()  # type: ignore[union-attr]
    assert storage.get_entries("k") == [] and files(bucket) == []


def test_a_stream_dropped_half_read_stores_nothing_and_leaves_no_file(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    entry = storage.create_entry(request(), Response(200, stream=iter([b"x" * 100_000] * 3)), "k")
    next(iter(entry.response.stream))  # type: ignore[arg-type]
    del entry
    gc.collect()
    assert storage.get_entries("k") == [] and files(bucket) == []
    assert not storage._writes._writing


def test_an_error_from_the_body_propagates_and_stores_nothing(bucket: safecache.Bucket) -> None:
    def body() -> Iterator[bytes]:
        yield b"x" * 1000
        raise ValueError("upstream")

    storage = SyncStorage(bucket)
    entry = storage.create_entry(request(), Response(200, stream=body()), "k")
    with pytest.raises(ValueError, match="upstream"):
        read(entry)
    assert storage.get_entries("k") == [] and files(bucket) == []


def test_a_body_over_max_stream_size_is_served_whole_and_not_stored(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket, max_stream_size=1000)
    entry = storage.create_entry(request(), Response(200, stream=iter([b"x" * 700] * 3)), "k")
    assert read(entry) == b"x" * 2100
    assert storage.get_entries("k") == [] and files(bucket) == []


def test_headers_too_large_for_metadata_are_served_and_not_stored(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    huge = Headers({"x-big": "v" * safecache.MAX_META})
    entry = storage.create_entry(request(), Response(200, huge, iter([b"data"])), "k")
    assert read(entry) == b"data" and storage.get_entries("k") == []


def test_entries_are_shared_by_storages_on_one_cache(cache: safecache.Cache) -> None:
    store(SyncStorage(cache.bucket("http", version=1)), body=b"shared")
    [got] = SyncStorage(safecache.Cache(cache.path).bucket("http", version=1)).get_entries("k")
    assert read(got) == b"shared"


# -- expiry -------------------------------------------------------------------------------------------------
def test_the_ttl_counts_from_create_entry_and_the_store_expires_it_too(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket, default_ttl=100)
    with at(0):
        entry = storage.create_entry(request(), Response(200, stream=iter([b"a"])), "k")
    with at(60):
        read(entry)
        [info] = [i for i in bucket.items() if i.key[0] == "hishel-entry"]
        assert info.expires == pytest.approx(START.timestamp() + 100)
    with at(99):
        assert len(storage.get_entries("k")) == 1
    with at(101):
        assert storage.get_entries("k") == []


def test_an_expired_entry_found_by_a_lookup_is_deleted(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket, default_tti=100)
    with at(0):
        store(storage)
    with at(500):
        assert storage.get_entries("k") == []
        assert stored_entries(bucket) == 0 and bucket.get(("hishel-key", "k")) is None


def test_the_idle_time_restarts_at_each_lookup_and_most_lookups_write_nothing(
    bucket: safecache.Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SyncStorage(bucket, default_tti=100)
    writes: list[object] = []
    set_meta = bucket.set_meta
    monkeypatch.setattr(bucket, "set_meta", lambda key, meta: writes.append(key) or set_meta(key, meta))
    with at(0):
        store(storage)
    for t in (10, 20, 30, 40):  # within half the idle time: nothing written
        with at(t):
            assert len(storage.get_entries("k")) == 1
    assert writes == []
    for t in (80, 160, 240):  # each lookup keeps it alive past its first deadline
        with at(t):
            assert len(storage.get_entries("k")) == 1
    assert len(writes) == 3
    with at(339):
        assert len(storage.get_entries("k")) == 1
    with at(450):
        assert storage.get_entries("k") == []


def test_the_ttl_caps_the_idle_time(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket, default_ttl=200, default_tti=100)
    with at(0):
        store(storage)
    for t in (80, 160):
        with at(t):
            assert len(storage.get_entries("k")) == 1
    with at(201):
        assert storage.get_entries("k") == []


def test_a_read_only_cache_serves_an_entry_whose_use_it_cannot_record(cache_dir: Path) -> None:
    with at(0):
        store(SyncStorage(safecache.Cache(cache_dir).bucket("http", version=1), default_tti=100))
    import safecache._location as location

    with at(60), pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore", safecache.CacheWarning)
        mp.setattr(location, "_read_only_fs", lambda path: True)
        read_only = safecache.Cache(cache_dir)
        assert read_only.state == "read-only"
        [got] = SyncStorage(read_only.bucket("http", version=1)).get_entries("k")
        assert read(got) == b"data"


# -- headers, removal ---------------------------------------------------------------------------------------
def test_update_headers_replaces_the_headers_without_rewriting_the_body(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    with at(0):
        entry_id = store(storage, body=b"body", ttl=100)
        path = bucket.path_for(("hishel-entry", entry_id.hex))
        assert path is not None
        before = os.stat(path)
        storage.update_headers(entry_id, Headers({"etag": '"2"'}))
        [got] = storage.get_entries("k")
    assert got.response.headers["etag"] == '"2"' and read(got) == b"body"
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    with at(101):
        assert storage.get_entries("k") == []  # the TTL is kept


def test_remove_entry_hides_it_at_once_and_removes_its_file(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    entry_id = store(storage)
    storage.remove_entry(entry_id)
    assert storage.get_entries("k") == [] and files(bucket) == []


def test_update_and_remove_of_a_missing_entry_do_nothing(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    storage.update_headers(uuid.uuid4(), Headers({"a": "b"}))
    storage.remove_entry(uuid.uuid4())


def test_a_body_already_returned_is_served_whole_after_its_entry_is_removed(bucket: safecache.Bucket) -> None:
    body = os.urandom(3 * 1024 * 1024)
    storage = SyncStorage(bucket)
    entry_id = store(storage, body=body)
    [got] = storage.get_entries("k")
    stream = iter(got.response.stream)  # type: ignore[arg-type]
    first = next(stream)
    storage.remove_entry(entry_id)
    assert first + b"".join(stream) == body


def test_a_removal_during_the_write_is_honoured_and_the_consumer_served(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    entry = storage.create_entry(request(), Response(200, stream=iter([b"a", b"b", b"c"])), "k")
    stream = iter(entry.response.stream)  # type: ignore[arg-type]
    received = [next(stream)]
    storage.remove_entry(entry.id)
    assert b"".join(received + list(stream)) == b"abc"
    assert storage.get_entries("k") == [] and files(bucket) == []


def test_a_removal_between_lookup_and_idle_time_refresh_is_a_miss(
    bucket: safecache.Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = SyncStorage(bucket, default_tti=100)
    with at(0):
        entry_id = store(storage)
    real = storage._keep

    def removed_first(*args: Any) -> bool:
        storage.remove_entry(entry_id)
        return real(*args)

    monkeypatch.setattr(storage, "_keep", removed_first)
    with at(90):
        assert storage.get_entries("k") == []


def test_a_key_keeps_its_newest_entries(bucket: safecache.Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(adapter, "MAX_ENTRIES_PER_KEY", 3)
    storage = SyncStorage(bucket)
    ids = [store(storage, body=b"%d" % i) for i in range(5)]
    assert [e.id for e in storage.get_entries("k")] == ids[2:]
    assert stored_entries(bucket) == 3


def test_a_closed_storage_refuses_use_and_leaves_the_bucket_open(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    store(storage)
    storage.close()
    with pytest.raises(RuntimeError, match="closed"):
        storage.get_entries("k")
    assert len(SyncStorage(bucket).get_entries("k")) == 1


# -- failures -----------------------------------------------------------------------------------------------
def test_a_corrupt_entry_is_a_miss_and_leaves_the_index(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    entry_id = store(storage, body=b"x" * 10_000)
    path = bucket.path_for(("hishel-entry", entry_id.hex))
    assert path is not None
    with open(path, "r+b") as f:
        f.seek(-100, os.SEEK_END)
        f.write(b"garbage")
    assert storage.get_entries("k") == []
    assert bucket.get(("hishel-key", "k")) is None


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize(
    "error, ops",
    [
        (errno.EIO, "read"),
        (errno.ENOSPC, "write"),
        (errno.EACCES, "open"),
        (errno.EROFS, ("open", "mkdir")),
        (WinError(5), "replace"),
        (errno.ENOLCK, "lock"),
    ],
    ids=["read-EIO", "write-ENOSPC", "open-EACCES", "EROFS", "replace-5", "lock-ENOLCK"],
)
def test_a_cache_failure_never_fails_the_request(
    cache_dir: Path, error: Any, ops: Any, strict: bool, caplog: pytest.LogCaptureFixture
) -> None:
    origin = Origin(b"y" * 300_000)
    bucket = safecache.Cache(cache_dir, strict=strict, retry_budget=0.01, lock_timeout=0.5).bucket("http", version=1)
    client = httpx.Client(transport=CacheTransport(httpx.MockTransport(origin), storage=SyncStorage(bucket)))
    client.get(URL)  # stored before the faults, so reads are tried too
    with caplog.at_level(logging.CRITICAL), warnings.catch_warnings(), inject_errors(error, ops=ops):
        warnings.simplefilter("ignore", safecache.CacheWarning)
        for path in (URL, URL + "/other", URL + "/other"):
            assert client.get(path).content == origin.body


@pytest.mark.parametrize("state", ["disabled", "read-only"])
def test_a_cache_that_cannot_store_serves_every_response(
    cache_dir: Path, state: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if state == "read-only":
        import safecache._location as location

        monkeypatch.setattr(location, "_read_only_fs", lambda path: True)
        cache_dir.mkdir()
    origin = Origin()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", safecache.CacheWarning)
        cache = safecache.Cache(cache_dir, enabled=False) if state == "disabled" else safecache.Cache(cache_dir)
        bucket = cache.bucket("http", version=1)
        client = httpx.Client(transport=CacheTransport(httpx.MockTransport(origin), storage=SyncStorage(bucket)))
        assert [client.get(URL).content for _ in range(3)] == [origin.body] * 3
    assert origin.requests == 3


def test_threads_storing_and_reading_one_key_under_windows_semantics(bucket: safecache.Bucket) -> None:
    storage = SyncStorage(bucket)
    bodies = {bytes([i]) * (100_000 + i) for i in range(8)}
    failures: list[str] = []

    def work(i: int) -> None:
        try:
            for _ in range(10):
                store(storage, body=bytes([i]) * (100_000 + i))
                for entry in storage.get_entries("k"):
                    if read(entry) not in bodies:
                        failures.append("wrong body")
        except Exception as exc:  # noqa: BLE001
            failures.append(repr(exc))

    with windows_semantics(transient_denials=0.02, seed=3), warnings.catch_warnings():
        warnings.simplefilter("ignore", safecache.CacheWarning)  # a denial past the retry budget: a miss
        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == [] and 0 < len(storage.get_entries("k")) <= adapter.MAX_ENTRIES_PER_KEY


# -- async: off the event loop --------------------------------------------------------------------------------
class _ThreadRecorder(OsOps):
    """The OS, recording which threads made each system call."""

    def __init__(self, inner: OsOps) -> None:
        self.inner = inner
        self.threads: dict[str, set[int]] = {}


def _recording(name: str) -> Any:
    def op(self: _ThreadRecorder, *args: Any, **kwargs: Any) -> Any:
        self.threads.setdefault(name, set()).add(threading.get_ident())
        return getattr(self.inner, name)(*args, **kwargs)

    return op


for _name in OPERATIONS:
    setattr(_ThreadRecorder, _name, _recording(_name))


def test_the_async_storage_makes_no_file_system_call_on_the_event_loop(bucket: safecache.Bucket) -> None:
    recorder = _ThreadRecorder(_osops.current)
    origin = Origin(os.urandom(2 * 1024 * 1024))
    key_a = hashlib.sha256(f"GET {URL}/a".encode()).hexdigest()

    async def main() -> int:
        storage = AsyncStorage(bucket, default_tti=60)
        transport = AsyncCacheTransport(httpx.MockTransport(origin), storage=storage)
        async with httpx.AsyncClient(transport=transport) as client:
            with at(0):  # store, hit, store
                for path in ("/a", "/a", "/b"):
                    assert (await client.get(URL + path)).content == origin.body
            with at(40):  # a hit that records its use
                assert (await client.get(URL + "/a")).content == origin.body
            with at(50):
                [entry] = await storage.get_entries(key_a)
                await storage.update_headers(entry.id, Headers({"etag": '"2"'}))
                await entry.response.stream.aclose()  # type: ignore[union-attr]
                await storage.remove_entry(entry.id)
            with at(200):  # /b has expired: deleted, stored again
                assert (await client.get(URL + "/b")).content == origin.body
        return threading.get_ident()

    _osops.current = recorder
    loop_thread = asyncio.run(main())
    on_loop = sorted(name for name, threads in recorder.threads.items() if loop_thread in threads)
    assert recorder.threads and on_loop == []
    assert origin.requests == 3


def test_an_async_stream_closed_early_stores_nothing(bucket: safecache.Bucket) -> None:
    async def body() -> Any:
        for _ in range(3):
            yield b"x" * 100_000

    async def main() -> list[Any]:
        storage = AsyncStorage(bucket)
        entry = await storage.create_entry(request(), Response(200, stream=body()), "k")
        await entry.response.stream.__anext__()  # type: ignore[union-attr]
        await entry.response.stream.aclose()  # type: ignore[union-attr]
        return await storage.get_entries("k")

    assert asyncio.run(main()) == [] and files(bucket) == []


# -- hishel's own storage tests ----------------------------------------------------------------------------------
#: The tests of the release installed (the test extra pins 2.0.0, which the
#: exclusions below are written for).
HISHEL_VERSION = importlib.metadata.version("hishel")
PEER_FILES = [
    "tests/_core/_sync/test_sqlite_storage.py",
    "tests/_core/_async/test_sqlite_storage.py",
    "tests/_core/_async/test_sqlite_concurrency.py",
    "tests/_core/_sync/test_sqlite_threading.py",
    "tests/test_sync_httpx.py",
    "tests/test_async_httpx.py",
]
_BOTH = ("tests/_core/_sync/test_sqlite_storage.py", "tests/_core/_async/test_sqlite_storage.py")
#: Tests of hishel's SQLite storage that do not apply, by reason (the doc
#: page lists them all: test_the_doc_page_lists_every_excluded_peer_test).
EXCLUDED: dict[str, list[str]] = {
    "inspect or hook SQLite's tables, connection, transactions, WAL, query plans or private methods": [
        *(f"{f}::{t}" for f in _BOTH for t in (
            "test_round_trip_rechunks_and_returns_exact_body",
            "test_frequent_reads_do_not_write",
            "test_remove_racing_with_lookup_touch_stays_removed",
            "test_reader_raises_when_entry_deleted_mid_read",
            "test_storage_failure_mid_stream_does_not_fail_consumer",
            "test_create_entry_failure_serves_uncached",
            "test_corrupt_row_does_not_break_lookup_or_cleanup",
            "test_closed_storage_raises_and_does_not_reopen",
            "test_old_database_is_refused_and_left_untouched",
            "test_connection_with_tables_of_its_own_is_left_untouched",
            "test_switch_to_wal_retries_while_locked",
            "test_switch_to_wal_only_retries_locks",
            "test_database_failures_do_not_fail_the_caller",
            "test_queries_use_indexes",
            "test_cost_with_100k_entries",
            "test_entries_get_their_id_and_key_from_the_row_not_the_blob",
            "test_eviction_between_select_and_touch_is_a_miss_not_an_error",
            "test_only_the_evicted_entry_is_skipped",
            "test_removal_between_select_and_touch_is_a_miss",
            "test_failed_touch_still_serves_the_entry",
            "test_try_write_reports_rows_changed_or_failure",
        )),
        "tests/_core/_async/test_sqlite_concurrency.py::test_two_storages_sharing_a_file",
        "tests/_core/_async/test_sqlite_concurrency.py::test_failed_write_leaves_no_open_transaction",
        "tests/_core/_async/test_sqlite_concurrency.py::test_cancelled_write_does_not_keep_the_write_lock",
        "tests/_core/_sync/test_sqlite_threading.py::test_warns_about_connection_bound_to_its_thread",
        "tests/_core/_sync/test_sqlite_threading.py::test_failed_write_leaves_no_open_transaction",
        "tests/test_sync_httpx.py::test_unsafe_request_still_succeeds_when_the_database_is_locked",
        "tests/test_async_httpx.py::test_unsafe_request_still_succeeds_when_the_database_is_locked",
    ],
    "count rows SQLite keeps through its soft-delete grace period, or expect a stalled reader to fail then": [
        *(f"{f}::{t}" for f in _BOTH for t in (
            "test_ttl_hides_then_next_write_deletes",
            "test_remove_hides_immediately_and_is_deleted_after_grace",
            "test_stalled_reader_past_grace_raises_instead_of_truncating",
            "test_crashed_writer_is_removed_after_grace",
            "test_abandoned_stream_discards_partial_data_immediately",
        )),
        "tests/_core/_sync/test_sqlite_threading.py::test_close_stops_lingering_stream",
    ],
    "use the database size limit (max_size), which is the cache's here": [
        *(f"{f}::{t}" for f in _BOTH for t in (
            "test_lru_evicts_least_recently_used_and_stops_when_it_fits",
            "test_database_stays_near_limit_over_many_writes",
            "test_cache_full_of_recently_used_entries_stops_storing_but_serves",
            "test_too_big_response_is_not_cached_but_fully_delivered[kwargs1]",
        )),
    ],
}


def test_hishels_own_storage_tests_pass(tmp_path: Path, stress: bool) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from peers import fetch
    finally:
        sys.path.remove(str(ROOT / "tests"))
    source = fetch.unpacked("hishel", HISHEL_VERSION, tmp_path / "sdist")
    if source is None:  # CI has the network: there, not running them is a failure
        (pytest.fail if os.environ.get("CI") else pytest.skip)(f"hishel {HISHEL_VERSION}'s sdist cannot be fetched")
    files_ = PEER_FILES + (["tests/test_requests.py"] if stress else [])
    deselect = [arg for ids in EXCLUDED.values() for node in ids for arg in ("--deselect", node)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "peers" / "hishel"), str(ROOT / "src")]),
        "SAFECACHE_HISHEL_PEER_DIR": str(tmp_path / "caches"),
        "SAFECACHE_DIR": str(tmp_path / "default-cache"),
    }
    (tmp_path / "caches").mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "safecache_hishel_peer",
         "--basetemp", str(tmp_path / "basetemp"), "-k", "not redis", *deselect, *files_],
        cwd=source, env=env, capture_output=True, text=True, timeout=900, check=False,
    )
    tail = done.stdout[-6000:] + done.stderr[-3000:]
    assert done.returncode == 0, tail
    summary = done.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, tail


def test_the_doc_page_lists_every_excluded_peer_test() -> None:
    page = (ROOT / "docs" / "adapters" / "hishel.md").read_text(encoding="utf-8")
    missing = [node for ids in EXCLUDED.values() for node in ids if node.split("::")[1] not in page]
    assert not missing, missing


# -- the trial ------------------------------------------------------------------------------------------------
def test_eight_processes_under_transient_denials_get_no_exception_and_no_wrong_response(
    tmp_path: Path, stress: bool
) -> None:
    """bench/trials/hishel.py, short: safecache's side (and with --stress,
    hishel's SqliteStorage beside it, whose numbers are printed, not asserted)."""
    out = tmp_path / "trial.json"
    sides = "safecache,peer" if stress else "safecache"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "trials" / "hishel.py"), "--processes", "8", "--requests", "30",
         "--urls", "8", "--period", "1", "--denials", "0.05", "--latency-repeat", "0", "--sides", sides,
         "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ours = json.loads(out.read_text())["sides"][0]
    print(done.stdout)
    assert ours["under"] == "Windows semantics", ours
    assert (ours["exceptions"], ours["wrong"], ours["crashes"]) == (0, 0, []), ours
    assert ours["hits"] > 0, ours
