"""The local store's contract: put, get, delete, in, streaming, kinds."""

from __future__ import annotations

import io
import os
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safecache
from safecache import _format, _keys


def entry_path(bucket: safecache.Bucket, key: object) -> Path:
    path = bucket.path_for(key)
    assert path is not None
    return Path(path)


def test_get_returns_what_put_stored(cache: safecache.Cache) -> None:
    b = cache.bucket("lint", version=3)
    assert b.put("k", b"value") is True
    assert b.get("k") == b"value"


def test_get_of_missing_key_is_none(cache: safecache.Cache) -> None:
    assert cache.bucket("lint").get("absent") is None


def test_empty_value_round_trips(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    assert b.put("empty", b"")
    assert b.get("empty") == b""


@pytest.mark.parametrize("size", [1, 65535 - 48, 65536 - 48, 65536, 3 * 1024 * 1024 + 7])
def test_values_of_every_size_round_trip(cache: safecache.Cache, size: int) -> None:
    b = cache.bucket("lint")
    data = os.urandom(size)
    assert b.put("k", data)
    assert b.get("k") == data


def test_put_accepts_bytearray_and_memoryview(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    assert b.put("a", bytearray(b"abc"))
    assert b.put("m", memoryview(b"xyz"))
    assert (b.get("a"), b.get("m")) == (b"abc", b"xyz")


def test_put_rejects_str_data(cache: safecache.Cache) -> None:
    with pytest.raises(TypeError):
        cache.bucket("lint").put("k", "text")  # type: ignore[arg-type]


def test_put_replaces_a_different_value(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    b.put("k", b"one")
    assert b.put("k", b"two")
    assert b.get("k") == b"two"


def test_put_of_identical_value_leaves_the_file_alone(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    b.put("k", b"same")
    before = os.stat(entry_path(b, "k"))
    assert b.put("k", b"same") is True
    after = os.stat(entry_path(b, "k"))
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)


def test_different_kind_is_not_identical(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    b.put("k", b"same", kind="fetched")
    before = os.stat(entry_path(b, "k")).st_ino
    b.put("k", b"same", kind="built")
    assert os.stat(entry_path(b, "k")).st_ino != before
    header = _format.parse_header(entry_path(b, "k").read_bytes(), None)
    assert header.kind_name == "built"


def test_invalid_kind_is_a_value_error(cache: safecache.Cache) -> None:
    with pytest.raises(ValueError):
        cache.bucket("lint").put("k", b"v", kind="downloaded")


def test_delete_removes_and_reports(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    b.put("k", b"v")
    assert b.delete("k") is True
    assert b.get("k") is None
    assert b.delete("k") is False


def test_contains(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    assert "k" not in b
    b.put("k", b"v")
    assert "k" in b


def test_keys_of_different_types_are_different_entries(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    b.put("1", b"str")
    b.put(b"1", b"bytes")
    b.put(1, b"int")
    b.put(("1",), b"tuple")
    assert [b.get(k) for k in ("1", b"1", 1, ("1",))] == [b"str", b"bytes", b"int", b"tuple"]


def test_structured_keys_are_order_independent_for_dicts(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    b.put(("src/a.py", {"line-length": 88, "select": ["E", "F"]}), b"v")
    assert b.get(("src/a.py", {"select": ["E", "F"], "line-length": 88})) == b"v"


def test_entries_live_inside_their_bucket_directory(cache: safecache.Cache) -> None:
    b = cache.bucket("lint", version=3)
    for key in ["../../etc/passwd", "/abs", ("..", "..")]:
        path = entry_path(b, key).resolve()
        assert Path(b.directory).resolve() in path.parents  # type: ignore[arg-type]


def test_no_temp_files_are_left_after_writes(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    for i in range(20):
        b.put(str(i), b"x" * i)
        b.put_stream(f"s{i}", io.BytesIO(b"y" * i))
    assert not [p for p in Path(cache.path).rglob("*.tmp")]  # type: ignore[arg-type]


# -- streaming ------------------------------------------------------------------
def test_put_stream_from_file_object(cache: safecache.Cache) -> None:
    b = cache.bucket("big")
    data = os.urandom(3 * 1024 * 1024 + 5)
    assert b.put_stream("k", io.BytesIO(data))
    assert b.get("k") == data


def test_put_stream_from_iterable(cache: safecache.Cache) -> None:
    b = cache.bucket("big")
    assert b.put_stream("k", iter([b"ab", b"", b"cd"]))
    assert b.get("k") == b"abcd"


def test_open_streams_a_large_value(cache: safecache.Cache) -> None:
    b = cache.bucket("big")
    data = os.urandom(2 * 1024 * 1024)
    b.put("k", data)
    with b.open("k") as f:  # type: ignore[union-attr]
        assert f.read(10) == data[:10]
        assert f.read() == data[10:]


def test_open_of_small_value_and_missing_key(cache: safecache.Cache) -> None:
    b = cache.bucket("big")
    b.put("k", b"small")
    with b.open("k") as f:  # type: ignore[union-attr]
        assert f.read() == b"small"
    assert b.open("absent") is None


def test_error_raised_by_the_source_propagates_and_stores_nothing(cache: safecache.Cache) -> None:
    b = cache.bucket("big")

    def source():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise ValueError("the download broke")

    with pytest.raises(ValueError, match="download broke"):
        b.put_stream("k", source())
    assert b.get("k") is None
    assert not [p for p in Path(cache.path).rglob("*.tmp")]  # type: ignore[arg-type]


def test_open_never_yields_a_corrupt_large_value(cache: safecache.Cache) -> None:
    b = cache.bucket("big")
    b.put("k", os.urandom(1024 * 1024))
    path = entry_path(b, "k")
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    assert b.open("k") is None
    assert not path.exists()


# -- get_or_create (single process; cross-process in test_concurrency) -------------
def test_get_or_create_computes_once_then_reads(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")
    calls = []

    def factory() -> bytes:
        calls.append(1)
        return b"computed"

    assert b.get_or_create("k", factory) == b"computed"
    assert b.get_or_create("k", factory) == b"computed"
    assert len(calls) == 1


def test_get_or_create_propagates_factory_errors_and_stores_nothing(cache: safecache.Cache) -> None:
    b = cache.bucket("lint")

    def factory() -> bytes:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        b.get_or_create("k", factory)
    assert b.get("k") is None


def test_get_or_create_requires_bytes(cache: safecache.Cache) -> None:
    with pytest.raises(TypeError):
        cache.bucket("lint").get_or_create("k", lambda: "text")  # type: ignore[arg-type,return-value]


# -- disabled ------------------------------------------------------------------------
def test_disabled_cache_misses_and_stores_nothing(cache_dir: Path) -> None:
    c = safecache.Cache(cache_dir, enabled=False)
    b = c.bucket("lint")
    assert b.put("k", b"v") is False
    assert b.get("k") is None
    assert b.get_or_create("k", lambda: b"v") == b"v"
    assert not cache_dir.exists()


def test_counters_count_hits_misses_and_writes(cache: safecache.Cache) -> None:
    b = cache.bucket("lint", version=2)
    b.get("k")
    b.put("k", b"vv")
    b.get("k")
    stats = cache.stats()["lint/v2"]
    assert (stats["hits"], stats["misses"], stats["writes"], stats["bytes_read"]) == (1, 1, 1, 2)


def test_debug_keys_variable_prints_what_went_into_each_key(cache_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("SAFECACHE_DEBUG_KEYS", "1")
    b = safecache.Cache(cache_dir).bucket("lint", version=3)
    key = ("src/a.py", {"line-length": 88})
    b.get(key)
    b.put(key, b"v")
    b.get(key)
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3
    assert all("lint/v3" in line and "src/a.py" in line and "line-length" in line for line in err)
    assert "miss" in err[0] and "stored" in err[1] and "hit" in err[2]


def test_debug_keys_is_silent_by_default(cache: safecache.Cache, capsys: pytest.CaptureFixture[str]) -> None:
    b = cache.bucket("lint")
    b.put("k", b"v")
    b.get("k")
    assert capsys.readouterr().err == ""


# -- the inlined hot path equals the one entry reader --------------------------------------
_KINDS = st.one_of(st.sampled_from(sorted(_format.KIND_NAMES)), st.integers(0, 255))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.one_of(
        st.binary(max_size=300),
        st.integers(_format.BLOCK - _format.HEADER_SIZE - 40, _format.BLOCK - _format.HEADER_SIZE + 3).map(lambda n: b"x" * n),
    ),
    kind=_KINDS,
    flips=st.lists(st.tuples(st.integers(0, 400), st.integers(1, 255)), max_size=3),
    cut=st.one_of(st.none(), st.integers(0, 400)),
    tail=st.binary(max_size=4),
    other_key=st.booleans(),
    version=st.sampled_from([_format.VERSION, _format.VERSION, _format.V1, 0, 3]),
    magic=st.sampled_from([_format.MAGIC, _format.MAGIC, b"\x89SCF"]),
    length_delta=st.sampled_from([0, 0, 0, -1, 1]),
    crc_delta=st.sampled_from([0, 0, 0, 1]),
    meta=st.binary(max_size=40),
    stored_key=st.binary(max_size=20),
    expires=st.sampled_from([0, 0, 1, 2**62]),
)
def test_get_agrees_with_the_entry_reader_on_every_input(
    cache: safecache.Cache,
    payload: bytes,
    kind: int,
    flips: list[tuple[int, int]],
    cut: int | None,
    tail: bytes,
    other_key: bool,
    version: int,
    magic: bytes,
    length_delta: int,
    crc_delta: int,
    meta: bytes,
    stored_key: bytes,
    expires: int,
) -> None:
    # Bucket.get inlines the validation of small entries (every hit's cost);
    # it must accept and refuse exactly what _format.read_entry does, and
    # treat an expired entry as a miss.
    b = cache.bucket("hot")
    key = "k"
    digest = bytes.fromhex(_keys.key_digest("other" if other_key else key))
    # A header with a valid header checksum over arbitrary fields, so every
    # field check is reached, not only the checksum.
    length = max(0, len(payload) + length_delta)
    crc = (_format.crc32(payload) + crc_delta) & 0xFFFFFFFF
    if version == _format.V1:
        head = _format._V1_HEAD.pack(magic, version, kind, 0, length, 1, digest, crc)
        region = head + _format.crc32(head).to_bytes(4, "little")
    else:
        head = _format._HEAD.pack(magic, version, kind, 1, length, 1, digest, expires, len(stored_key), len(meta), crc)
        check = _format.crc32(meta, _format.crc32(stored_key, _format.crc32(head)))
        region = head + check.to_bytes(4, "little") + stored_key + meta
    data = bytearray(region + payload)
    for offset, mask in flips:
        if offset < len(data):
            data[offset] ^= mask
    if cut is not None:
        del data[cut:]
    data += tail
    path = entry_path(b, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(data))
    fd = os.open(path, os.O_RDONLY)
    try:
        header, expected = _format.read_entry(fd, os.read(fd, _format.BLOCK), bytes.fromhex(_keys.key_digest(key)))
        if header.expired(time.time_ns()):
            expected = None
    except _format.Invalid:
        expected = None
    finally:
        os.close(fd)
    assert b.get(key) == expected


# -- what is the same entry, what a source may yield -------------------------------------
def test_put_of_a_same_crc_value_replaces_the_entry(cache: safecache.Cache) -> None:
    # Two values of one length and one CRC-32 (a collision is trivial to
    # craft): identity is decided by content, so the second put must store.
    b = cache.bucket("lint")
    first = b"\x00" * 8
    second = _crc32_twin(first)
    assert second != first and len(second) == len(first) and _format.crc32(second) == _format.crc32(first)
    assert b.put("k", first)
    assert b.put("k", second)
    assert b.get("k") == second


def _crc32_twin(data: bytes) -> bytes:
    """Another value with the same length and CRC-32 as ``data`` (at least 5
    bytes).  CRC-32 is affine over GF(2): crc(a ^ d) == crc(a) ^ crc(d) ^
    crc(0...0).  Pick d with a 1 in its first byte and solve for its last
    four bytes so that crc(d) == crc(0...0): 32 linear equations."""
    import zlib

    n = len(data)
    zero = zlib.crc32(bytes(n))

    def f(d: bytes) -> int:  # linear in d
        return zlib.crc32(d) ^ zero

    base = f(b"\x01" + bytes(n - 1))
    columns = [f(bytes(n - 4) + (1 << bit).to_bytes(4, "little")) for bit in range(32)]
    # Gaussian elimination: find bits x with XOR of columns[x] == base.
    rows = [(columns[bit], 1 << bit) for bit in range(32)]
    solution, target = 0, base
    for pivot in range(32):
        mask = 1 << pivot
        index = next(i for i, (value, _) in enumerate(rows) if value & mask)
        value, combo = rows.pop(index)
        rows = [(v ^ value, c ^ combo) if v & mask else (v, c) for v, c in rows]
        if target & mask:
            target ^= value
            solution ^= combo
    d = b"\x01" + bytes(n - 5) + solution.to_bytes(4, "little")
    assert f(d) == 0
    return bytes(x ^ y for x, y in zip(data, d))


@pytest.mark.parametrize("source", [iter(b"hello"), [b"ok", "text"], [b"ok", 5]])
def test_put_stream_refuses_chunks_that_are_not_bytes(cache: safecache.Cache, source: object) -> None:
    b = cache.bucket("lint")
    with pytest.raises(TypeError):
        b.put_stream("k", source)  # type: ignore[arg-type]
    assert b.get("k") is None


def test_put_stream_refuses_a_non_blocking_source_instead_of_storing_a_prefix(cache: safecache.Cache) -> None:
    class NonBlocking:
        def __init__(self) -> None:
            self.calls = 0

        def read(self, n: int) -> bytes | None:
            self.calls += 1
            return b"head" if self.calls == 1 else None  # no data ready yet

    b = cache.bucket("lint")
    with pytest.raises(BlockingIOError):
        b.put_stream("k", NonBlocking())  # type: ignore[arg-type]
    assert b.get("k") is None


# -- a FIFO where an entry should be never hangs ---------------------------------------------
@pytest.fixture
def fifo_entry(cache: safecache.Cache) -> tuple[safecache.Bucket, Path]:
    import signal

    b = cache.bucket("odd")
    path = entry_path(b, "k")
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    # A hang fails the test instead of stopping the run.
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("hung on a FIFO")))
    signal.alarm(10)
    yield b, path
    signal.alarm(0)


def test_get_of_a_fifo_is_a_miss(fifo_entry: tuple[safecache.Bucket, Path]) -> None:
    b, _ = fifo_entry
    assert b.get("k") is None


def test_contains_and_open_of_a_fifo_are_misses(fifo_entry: tuple[safecache.Bucket, Path]) -> None:
    b, _ = fifo_entry
    assert "k" not in b
    assert b.open("k") is None


def test_put_over_a_fifo_stores_the_value(fifo_entry: tuple[safecache.Bucket, Path]) -> None:
    b, path = fifo_entry
    assert b.put("k", b"value")
    assert b.get("k") == b"value"
    assert path.is_file()
