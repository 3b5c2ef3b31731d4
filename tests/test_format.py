"""The entry format: anything that fails validation is a miss, removed, counted."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import safecache
from safecache import _format, _keys


def entry(bucket: safecache.Bucket, key: object) -> Path:
    return Path(bucket.path_for(key))  # type: ignore[arg-type]


def stored(cache: safecache.Cache, value: bytes = b"hello world") -> tuple[safecache.Bucket, Path, bytes]:
    b = cache.bucket("fmt")
    b.put("k", value)
    path = entry(b, "k")
    return b, path, path.read_bytes()


def test_header_layout_is_64_bytes_little_endian_then_key_meta_payload(cache: safecache.Cache) -> None:
    b = cache.bucket("fmt")
    b.put("k", b"abc", meta=b"mm")
    raw = entry(b, "k").read_bytes()
    key = _keys.encode_key("k")
    assert len(raw) == 64 + len(key) + 2 + 3
    magic, version, kind, flags, length = struct.unpack_from("<4sHBBQ", raw)
    assert (magic, version, kind, flags, length) == (b"\x89SCE", 2, 1, 1, 3)
    assert raw[24:40] == bytes.fromhex(_keys.key_digest("k"))
    assert struct.unpack_from("<QII", raw, 40) == (0, len(key), 2)
    assert raw[64:] == key + b"mm" + b"abc"


def _resealed(head: bytes, rest: bytes = b"") -> bytes:
    """A v2 header region with ``head``'s fields and a matching header CRC."""
    klen, mlen = struct.unpack_from("<II", head, 48)
    region = rest[: klen + mlen]
    check = _format.crc32(region, _format.crc32(head[:60]))
    return head[:60] + check.to_bytes(4, "little") + rest


def test_entries_written_by_version_1_are_still_read(cache: safecache.Cache) -> None:
    b = cache.bucket("fmt")
    digest = bytes.fromhex(_keys.key_digest("k"))
    head = _format._V1_HEAD.pack(_format.MAGIC, 1, 1, 0, 3, 1, digest, _format.crc32(b"old"))
    path = entry(b, "k")
    path.parent.mkdir(parents=True)
    path.write_bytes(head + _format.crc32(head).to_bytes(4, "little") + b"old")
    assert b.get("k") == b"old"
    assert b.get_with_meta("k") == (b"old", b"")


@pytest.mark.parametrize(
    "damage, reason",
    [
        (lambda raw: b"", "empty"),
        (lambda raw: raw[:20], "truncated"),
        (lambda raw: raw[:-1], "wrong-length"),
        (lambda raw: raw + b"x", "wrong-length"),
        (lambda raw: b"XXXX" + raw[4:], "bad-magic"),
        (lambda raw: raw[:47] + bytes([raw[47] ^ 1]) + raw[48:], "bad-header"),
        (lambda raw: raw[:63] + bytes([raw[63] ^ 1]) + raw[64:], "bad-header"),
        (lambda raw: raw[:65] + bytes([raw[65] ^ 1]) + raw[66:], "bad-header"),  # the stored key
        (lambda raw: raw[:-1] + bytes([raw[-1] ^ 0x80]), "bad-checksum"),
    ],
)
def test_damaged_entry_is_a_miss_and_is_removed(cache: safecache.Cache, damage, reason: str) -> None:  # type: ignore[no-untyped-def]
    b, path, raw = stored(cache)
    path.write_bytes(damage(raw))
    with pytest.raises(_format.Invalid) as info:
        _format.decode_small(path.read_bytes(), bytes.fromhex(_keys.key_digest("k")))
    assert info.value.reason == reason
    assert b.get("k") is None
    assert not path.exists()
    assert cache.stats()["fmt/v0"]["corrupt_removed"] == 1


def test_entry_moved_under_another_key_is_a_miss(cache: safecache.Cache) -> None:
    b = cache.bucket("fmt")
    b.put("a", b"value of a")
    target = entry(b, "b")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(entry(b, "a").read_bytes())
    assert b.get("b") is None


def test_entry_from_a_newer_format_is_a_miss_but_kept(cache: safecache.Cache) -> None:
    b, path, raw = stored(cache)
    head = bytearray(raw[:64])
    head[4:6] = (3).to_bytes(2, "little")
    path.write_bytes(_resealed(bytes(head), raw[64:]))
    assert b.get("k") is None
    assert path.exists()  # a newer safecache sharing the root still uses it


def test_ruff_8147_huge_length_field_is_a_miss_not_an_allocation(cache: safecache.Cache) -> None:
    """ruff #8147: a corrupt length (7453010365139656813) aborted the process."""
    b, path, raw = stored(cache, b"x" * 100_000)
    head = bytearray(raw[:64])
    head[8:16] = (7453010365139656813).to_bytes(8, "little")
    path.write_bytes(_resealed(bytes(head), raw[64:]))
    assert b.get("k") is None
    assert b.open("k") is None
    assert not path.exists()


def test_black_5192_empty_file_is_a_miss(cache: safecache.Cache) -> None:
    """black #5192: an empty cache file raised EOFError."""
    b, path, _ = stored(cache)
    path.write_bytes(b"")
    assert b.get("k") is None
    assert "k" not in b


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    value=st.binary(min_size=0, max_size=3000),
    edits=st.lists(st.tuples(st.integers(min_value=0), st.integers(min_value=1, max_value=255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(min_value=0)),
)
def test_random_corruption_is_never_served(cache: safecache.Cache, value: bytes, edits, cut) -> None:  # type: ignore[no-untyped-def]
    """Property: after flipping bytes and/or truncating an entry, a get
    returns the original value (only if the damage cancelled out) or None."""
    b = cache.bucket("prop")
    b.put("k", value)
    path = entry(b, "k")
    raw = bytearray(path.read_bytes())
    for pos, xor in edits:
        raw[pos % len(raw)] ^= xor
    if cut is not None:
        raw = raw[: cut % (len(raw) + 1)]
    path.write_bytes(bytes(raw))
    got = b.get("k")
    assert got is None or got == value
    b.delete("k")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.binary(max_size=5000), kind=st.sampled_from(["built", "fetched"]))
def test_every_value_round_trips(cache: safecache.Cache, value: bytes, kind: str) -> None:
    b = cache.bucket("prop")
    assert b.put("k", value, kind=kind)
    assert b.get("k") == value
    header = _format.parse_header(entry(b, "k").read_bytes(), None)
    assert header.kind_name == kind and header.length == len(value)
