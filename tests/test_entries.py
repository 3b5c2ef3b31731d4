"""What tools need from entries: metadata, expiry, the push-style writer,
locks and read-modify-write, touch, listing, pickling (Bucket API, 0.2)."""

from __future__ import annotations

import multiprocessing
import os
import pickle
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safecache
from safecache import _format


@pytest.fixture
def bucket(cache: safecache.Cache) -> safecache.Bucket:
    return cache.bucket("api", version=1)


# -- metadata --------------------------------------------------------------------------------
def test_metadata_is_stored_with_the_value(bucket: safecache.Bucket) -> None:
    assert bucket.put("k", b"body", meta=b"headers")
    assert bucket.get("k") == b"body"
    assert bucket.get_meta("k") == b"headers"
    assert bucket.get_with_meta("k") == (b"body", b"headers")


def test_an_entry_without_metadata_has_empty_metadata_and_a_missing_one_has_none(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"body")
    assert bucket.get_meta("k") == b""
    assert bucket.get_with_meta("k") == (b"body", b"")
    assert bucket.get_meta("absent") is None
    assert bucket.get_with_meta("absent") is None


def test_metadata_over_the_limit_is_a_value_error(bucket: safecache.Bucket) -> None:
    with pytest.raises(ValueError):
        bucket.put("k", b"v", meta=b"x" * (safecache.MAX_META + 1))
    with pytest.raises(TypeError):
        bucket.put("k", b"v", meta="text")  # type: ignore[arg-type]


def test_set_meta_replaces_metadata_without_rewriting_the_value(bucket: safecache.Bucket) -> None:
    body = os.urandom(200_000)
    bucket.put("k", body, meta=b"v1")
    path = Path(bucket.path_for("k"))  # type: ignore[arg-type]
    before = path.stat()
    assert bucket.set_meta("k", b"v2")
    after = path.stat()
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)  # the value was not touched
    assert bucket.get_with_meta("k") == (body, b"v2")
    stream_meta = bucket.open_with_meta("k")
    assert stream_meta is not None
    with stream_meta[0] as stream:
        assert stream.read() == body
    assert stream_meta[1] == b"v2"


def test_set_meta_of_a_missing_entry_is_false(bucket: safecache.Bucket) -> None:
    assert bucket.set_meta("absent", b"m") is False


def test_a_put_after_set_meta_wins_with_its_own_metadata(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"old", meta=b"old-meta")
    bucket.set_meta("k", b"revalidated")
    bucket.put("k", b"new", meta=b"new-meta")
    assert bucket.get_with_meta("k") == (b"new", b"new-meta")


def test_metadata_set_for_a_replaced_value_is_never_paired_with_the_new_one(bucket: safecache.Bucket) -> None:
    # The sidecar names the value it was written for; a stale one is ignored
    # even if nothing removed it.
    bucket.put("k", b"old")
    bucket.set_meta("k", b"for-old")
    path = Path(bucket.path_for("k"))  # type: ignore[arg-type]
    sidecar = Path(str(path) + ".meta").read_bytes()
    bucket.put("k", b"new", meta=b"for-new")
    Path(str(path) + ".meta").write_bytes(sidecar)  # a racing set_meta landing late
    assert bucket.get_with_meta("k") == (b"new", b"for-new")


def _put_and_set_meta(root: str, n: int, worker: int) -> None:
    bucket = safecache.Cache(root).bucket("race")
    for i in range(n):
        value = f"value-{worker}-{i}".encode()
        if i % 2:
            bucket.put("k", value, meta=value + b"-meta")
        else:
            got = bucket.get_with_meta("k")
            if got is not None:
                # Metadata computed from the value read: only onto that value
                # (a put may land in between; expect= refuses then).
                bucket.set_meta("k", got[0] + b"-meta", expect=got[1])


def _check_pairs(root: str, n: int) -> int:
    bucket = safecache.Cache(root).bucket("race")
    bad = 0
    for _ in range(n):
        got = bucket.get_with_meta("k")
        if got is not None and got[1] != got[0] + b"-meta":
            bad += 1
    return bad


def test_metadata_and_value_stay_paired_under_concurrent_put_and_set_meta(cache_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(4) as pool:
        writers = [pool.apply_async(_put_and_set_meta, (str(cache_dir), 200, w)) for w in range(3)]
        reader = pool.apply_async(_check_pairs, (str(cache_dir), 600))
        for w in writers:
            w.get(120)
        assert reader.get(120) == 0


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.sampled_from(["put", "set_meta", "delete"]), st.binary(max_size=30), st.binary(max_size=10)), max_size=12))
def test_a_reader_sees_the_metadata_of_the_value_it_reads(cache: safecache.Cache, ops: list[tuple[str, bytes, bytes]]) -> None:
    bucket = cache.bucket("prop-meta")
    model: tuple[bytes, bytes] | None = None
    for op, value, meta in ops:
        if op == "put":
            bucket.put("k", value, meta=meta)
            model = (value, meta)
        elif op == "set_meta":
            assert bucket.set_meta("k", meta) is (model is not None)
            if model is not None:
                model = (model[0], meta)
        else:
            bucket.delete("k")
            model = None
        assert bucket.get_with_meta("k") == model
        assert bucket.get_meta("k") == (None if model is None else model[1])
    bucket.delete("k")


# -- expiry ---------------------------------------------------------------------------------------
def test_an_expired_entry_is_a_miss(bucket: safecache.Bucket, monkeypatch: pytest.MonkeyPatch) -> None:
    bucket.put("k", b"v", ttl=60)
    assert bucket.get("k") == b"v" and "k" in bucket
    later = time.time_ns() + 61 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: later)
    assert bucket.get("k") is None
    assert "k" not in bucket
    assert bucket.get_meta("k") is None and bucket.get_with_meta("k") is None and bucket.open("k") is None
    assert list(bucket.keys()) == []


@pytest.mark.parametrize("ttl", [0, -1, float("nan"), float("inf")])
def test_a_ttl_must_be_a_positive_finite_number(bucket: safecache.Bucket, ttl: float) -> None:
    with pytest.raises(ValueError):
        bucket.put("k", b"v", ttl=ttl)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ttl=st.floats(min_value=0.001, max_value=1e6), elapsed=st.floats(min_value=0, max_value=2e6))
def test_expired_entries_are_never_served(cache: safecache.Cache, ttl: float, elapsed: float) -> None:
    bucket = cache.bucket("prop-ttl")
    start = time.time_ns()
    import unittest.mock

    with unittest.mock.patch("time.time_ns", return_value=start):
        bucket.put("k", b"v", ttl=ttl)
    now = start + int(elapsed * 1e9)
    with unittest.mock.patch("time.time_ns", return_value=now):
        got = bucket.get("k")
    expires = start + int(ttl * 1e9)
    assert got == (b"v" if now < expires else None)


def test_touch_refreshes_the_use_time(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"v")
    path = Path(bucket.path_for("k"))  # type: ignore[arg-type]
    os.utime(path, (1, 1))
    assert bucket.touch("k") is True
    assert path.stat().st_mtime > time.time() - 60
    assert bucket.touch("absent") is False


# -- the writer -----------------------------------------------------------------------------------
def test_a_writer_commits_when_the_block_ends(bucket: safecache.Bucket) -> None:
    with bucket.writer("k", meta=b"m") as f:
        f.write(b"abc")
        f.writelines([b"d", bytearray(b"e"), memoryview(b"f")])
        assert bucket.get("k") is None  # never visible half-written
        assert f.tell() == 6
    assert f.stored
    assert bucket.get_with_meta("k") == (b"abcdef", b"m")


def test_pickle_dump_into_a_writer(bucket: safecache.Bucket) -> None:
    obj = {"a": [1, 2, 3], "b": "x" * 100_000}
    with bucket.writer("obj") as f:
        pickle.dump(obj, f)
    assert pickle.loads(bucket.get("obj") or b"") == obj


def test_a_writer_whose_block_raises_stores_nothing_and_leaves_nothing(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"old")
    with pytest.raises(RuntimeError):
        with bucket.writer("k") as f:
            f.write(b"partial")
            raise RuntimeError("the caller's error")
    assert bucket.get("k") == b"old"
    assert not [p for p in Path(bucket.directory).rglob("*.tmp")]  # type: ignore[arg-type]


def test_a_large_writer_streams_in_bounded_memory(bucket: safecache.Bucket) -> None:
    chunk = os.urandom(1 << 20)
    with bucket.writer("big") as f:
        for _ in range(20):
            f.write(chunk)
    stream = bucket.open("big")
    assert stream is not None
    with stream:
        assert stream.read(1 << 20) == chunk


def test_a_writer_on_a_disabled_cache_is_a_sink(cache_dir: Path) -> None:
    bucket = safecache.Cache(cache_dir, enabled=False).bucket("b")
    with bucket.writer("k") as f:
        assert f.write(b"abc") == 3
    assert f.stored is False
    assert bucket.get("k") is None


def test_writing_outside_the_block_is_an_error(bucket: safecache.Bucket) -> None:
    w = bucket.writer("k")
    with pytest.raises(ValueError):
        w.write(b"x")


# -- locks and update ---------------------------------------------------------------------------
def test_lock_is_held_inside_the_block(bucket: safecache.Bucket) -> None:
    with bucket.lock("k") as held:
        assert held is True
        with bucket.lock("k", timeout=0.05) as again:  # another holder in this process: not re-entrant
            assert again is False


def test_lock_on_a_disabled_cache_runs_the_block_unlocked(cache_dir: Path) -> None:
    bucket = safecache.Cache(cache_dir, enabled=False).bucket("b")
    with bucket.lock("k") as held:
        assert held is False


def test_lock_timeout_raises_in_strict_mode(cache_dir: Path) -> None:
    bucket = safecache.Cache(cache_dir, strict=True).bucket("b")
    with bucket.lock("k"):
        with pytest.raises(safecache.LockTimeoutError):
            with bucket.lock("k", timeout=0.05):
                pass


def test_update_applies_the_function_and_none_deletes(bucket: safecache.Bucket) -> None:
    assert bucket.update("n", lambda old: b"1" if old is None else str(int(old) + 1).encode()) == b"1"
    assert bucket.update("n", lambda old: str(int(old or b"0") + 1).encode()) == b"2"
    assert bucket.update("n", lambda old: None) is None
    assert bucket.get("n") is None


def _increment(root: str, n: int) -> None:
    bucket = safecache.Cache(root).bucket("counter")
    for _ in range(n):
        bucket.update("n", lambda old: str(int(old or b"0") + 1).encode())


def test_update_loses_no_increment_across_8_processes(cache_dir: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(8) as pool:
        for result in [pool.apply_async(_increment, (str(cache_dir), 25)) for _ in range(8)]:
            result.get(180)
    assert safecache.Cache(cache_dir).bucket("counter").get("n") == b"200"


# -- listing -------------------------------------------------------------------------------------
def test_keys_come_back_as_they_were_given(bucket: safecache.Bucket) -> None:
    keys = ["a", b"b", ("tool", 3, {"line-length": 88}), 12]
    for i, key in enumerate(keys):
        bucket.put(key, b"v" * i, meta=b"m" * i, kind="fetched" if i % 2 else "built")
    assert sorted(map(repr, bucket.keys())) == sorted(map(repr, keys))
    assert len(bucket) == 4
    infos = {repr(info.key): info for info in bucket.items()}
    info = infos[repr(keys[3])]
    assert (info.size, info.kind, info.meta_length, info.expires) == (3, "fetched", 3, None)
    assert abs(info.written - time.time()) < 60


def test_items_report_expiry_and_metadata_set_later(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"v", ttl=100)
    bucket.set_meta("k", b"longer metadata")
    (info,) = list(bucket.items())
    assert info.expires is not None and info.expires > time.time()
    assert info.meta_length == len(b"longer metadata")


def test_listing_skips_what_is_not_a_valid_entry(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"v")
    path = Path(bucket.path_for("k"))  # type: ignore[arg-type]
    (path.parent / ("0" * 32)).write_bytes(b"garbage")
    os.mkfifo(path.parent / ("1" * 32))
    assert list(bucket.keys()) == ["k"]


def test_clear_removes_every_entry(bucket: safecache.Bucket) -> None:
    for i in range(10):
        bucket.put(i, b"v")
    bucket.set_meta(3, b"m")
    assert bucket.clear() == 10
    assert len(bucket) == 0 and bucket.get(3) is None
    assert not [p for p in Path(bucket.directory).rglob("*") if p.is_file()]  # type: ignore[arg-type]


# -- pickling -------------------------------------------------------------------------------------
def _read_in_child(bucket: safecache.Bucket) -> bytes | None:
    return bucket.get("k")


def test_a_bucket_pickles_by_location_and_reopens_in_another_process(cache_dir: Path) -> None:
    cache = safecache.Cache(cache_dir, retry_budget=0.5, max_size="1G")
    bucket = cache.bucket("shipped", version=4)
    bucket.put("k", b"v")
    copy = pickle.loads(pickle.dumps(bucket))
    assert (copy.name, copy.version, copy.cache.path, copy.cache.retry_budget, copy.cache.max_size) == (
        "shipped", 4, str(cache_dir), 0.5, 1024**3,
    )
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        assert pool.apply(_read_in_child, (bucket,)) == b"v"


def test_a_disabled_cache_pickles_as_disabled(cache_dir: Path) -> None:
    cache = pickle.loads(pickle.dumps(safecache.Cache(cache_dir, enabled=False)))
    assert cache.enabled is False


def test_the_entry_format_is_version_2(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"v")
    assert _format.parse_header(Path(bucket.path_for("k")).read_bytes(), None).version == 2  # type: ignore[arg-type]


def test_set_meta_with_expect_refuses_when_the_entry_changed(bucket: safecache.Bucket) -> None:
    bucket.put("k", b"old", meta=b"m1")
    bucket.put("k", b"new", meta=b"m2")  # another process's put, after the caller read m1
    assert bucket.set_meta("k", b"revalidated", expect=b"m1") is False
    assert bucket.get_with_meta("k") == (b"new", b"m2")
    assert bucket.set_meta("k", b"revalidated", expect=b"m2") is True
    assert bucket.get_with_meta("k") == (b"new", b"revalidated")
    assert bucket.set_meta("k", b"again", expect=b"m2") is False  # expect is the current metadata, sidecar included
