"""The on-disk entry format (version 2; version 1 is still read).  docs/format.md is its specification.

An entry file is a 64-byte header, the encoded key, the metadata, then the
payload::

    offset size  field
    0      4     magic  b"\\x89SCE"
    4      2     format version (2), little-endian
    6      1     kind: 1 = built, 2 = fetched
    7      1     flags (bit 0: the encoded key is stored; readers ignore unknown bits)
    8      8     payload length in bytes
    16     8     written at, nanoseconds since the Unix epoch
    24     16    key digest (BLAKE2b-128 of the canonical key encoding)
    40     8     expires at, nanoseconds since the Unix epoch (0: never)
    48     4     length of the stored key encoding (0 when not stored)
    52     4     length of the metadata
    56     4     CRC-32 of the payload
    60     4     CRC-32 of bytes 0-59, the key and the metadata
    64     ...   the key encoding, the metadata, the payload

All integers are little-endian.  A file is valid only if its size is exactly
64 + key + metadata + payload lengths, both CRCs match and the key digest is
the one asked for; anything else is a miss.  The lengths are never trusted to
size an allocation (ruff #8147 aborted on a 7-exabyte length): they are
checked against the size actually read.  Key and metadata are bounded
(:data:`MAX_KEY`, :data:`MAX_META`) so that the whole header region is
always within the first :data:`BLOCK` a reader reads.

Version 1 (48-byte header: the fields above up to the digest, then the
payload CRC and the header CRC; no expiry, key or metadata) is still read.
"""

from __future__ import annotations

import struct
import zlib

from . import _fs, _osops

MAGIC = b"\x89SCE"
VERSION = 2
V1 = 1
HEADER_SIZE = 64
V1_HEADER_SIZE = 48
#: Readers read this much first: an entry shorter than this is whole in one read.
BLOCK = 1 << 16
#: Larger entries are checked (and streamed) in chunks of this size.
CHUNK = 1 << 20
#: Metadata is small: HTTP headers, a content type, a few fields (bytes).
MAX_META = 32 * 1024
#: Keys whose encoding is longer are not stored (listing cannot return them).
MAX_KEY = 16 * 1024
FLAG_KEY_STORED = 1
KIND_BUILT = 1
KIND_FETCHED = 2
KINDS = {"built": KIND_BUILT, "fetched": KIND_FETCHED}
KIND_NAMES = {v: k for k, v in KINDS.items()}

_V1_HEAD = struct.Struct("<4sHBBQQ16sI")  # bytes 0-43
_V1_FULL = struct.Struct("<4sHBBQQ16sII")  # bytes 0-47
_HEAD = struct.Struct("<4sHBBQQ16sQIII")  # bytes 0-59
_FULL = struct.Struct("<4sHBBQQ16sQIIII")  # bytes 0-63
crc32 = zlib.crc32


class Invalid(Exception):
    """An entry failed validation.  ``reason`` is a short stable name:
    ``empty``, ``truncated``, ``bad-magic``, ``unsupported-version``,
    ``bad-header``, ``wrong-length``, ``wrong-key``, ``bad-checksum``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def pack_header(
    length: int,
    written_ns: int,
    digest: bytes,
    payload_crc: int,
    kind: int,
    *,
    key: bytes = b"",
    meta: bytes = b"",
    expires_ns: int = 0,
) -> bytes:
    """The bytes that precede the payload: the header, the key encoding
    (dropped when longer than :data:`MAX_KEY`), the metadata.  Raises
    ValueError for metadata over :data:`MAX_META`."""
    if len(meta) > MAX_META:
        raise ValueError(f"metadata is limited to {MAX_META} bytes, not {len(meta)}")
    if len(key) > MAX_KEY:
        key = b""
    flags = FLAG_KEY_STORED if key else 0
    head = _HEAD.pack(MAGIC, VERSION, kind, flags, length, written_ns, digest, expires_ns, len(key), len(meta), payload_crc)
    check = crc32(meta, crc32(key, crc32(head))) & 0xFFFFFFFF
    return head + check.to_bytes(4, "little") + key + meta


class Header:
    """A validated header.  ``offset`` is where the payload starts."""

    __slots__ = ("kind", "flags", "length", "written_ns", "digest", "payload_crc", "expires_ns", "key", "meta", "offset", "version")

    def __init__(
        self,
        kind: int,
        flags: int,
        length: int,
        written_ns: int,
        digest: bytes,
        payload_crc: int,
        expires_ns: int = 0,
        key: bytes = b"",
        meta: bytes = b"",
        offset: int = V1_HEADER_SIZE,
        version: int = V1,
    ) -> None:
        self.kind = kind
        self.flags = flags
        self.length = length
        self.written_ns = written_ns
        self.digest = digest
        self.payload_crc = payload_crc
        self.expires_ns = expires_ns
        self.key = key
        self.meta = meta
        self.offset = offset
        self.version = version

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, "unknown")

    def expired(self, now_ns: int) -> bool:
        return 0 < self.expires_ns <= now_ns


def parse_header(block: bytes | memoryview, digest: bytes | None) -> Header:
    """Validate and decode the header region (header, key, metadata) at the
    start of ``block``, a version 2 or version 1 entry.

    ``digest`` is the key digest the caller expects (None to accept any).
    Raises :class:`Invalid`.
    """
    if len(block) < V1_HEADER_SIZE:
        raise Invalid("empty" if not block else "truncated", f"{len(block)} bytes")
    magic, version = block[:4], int.from_bytes(block[4:6], "little")
    if magic != MAGIC:
        raise Invalid("bad-magic")
    if version == V1:
        return _parse_v1(block, digest)
    if version != VERSION:
        raise Invalid("unsupported-version", str(version))
    if len(block) < HEADER_SIZE:
        raise Invalid("truncated", f"{len(block)} bytes")
    _m, _v, kind, flags, length, written_ns, got, expires_ns, klen, mlen, payload_crc, head_crc = _FULL.unpack_from(block)
    offset = HEADER_SIZE + klen + mlen
    if klen > MAX_KEY or mlen > MAX_META:
        raise Invalid("bad-header", "key or metadata length out of range")
    if len(block) < offset:
        raise Invalid("truncated", f"{len(block)} bytes of a {offset}-byte header")
    if crc32(block[HEADER_SIZE:offset], crc32(block[:60])) & 0xFFFFFFFF != head_crc:
        raise Invalid("bad-header", "header checksum mismatch")
    if kind not in KIND_NAMES:
        raise Invalid("bad-header", f"kind {kind}")
    if digest is not None and got != digest:
        raise Invalid("wrong-key")
    key = bytes(block[HEADER_SIZE : HEADER_SIZE + klen])
    meta = bytes(block[HEADER_SIZE + klen : offset])
    return Header(kind, flags, length, written_ns, got, payload_crc, expires_ns, key, meta, offset, VERSION)


def _parse_v1(block: bytes | memoryview, digest: bytes | None) -> Header:
    _m, _v, kind, flags, length, written_ns, got, payload_crc, head_crc = _V1_FULL.unpack_from(block)
    if crc32(block[:44]) != head_crc:
        raise Invalid("bad-header", "header checksum mismatch")
    if kind not in KIND_NAMES:
        raise Invalid("bad-header", f"kind {kind}")
    if digest is not None and got != digest:
        raise Invalid("wrong-key")
    return Header(kind, flags, length, written_ns, got, payload_crc)


def decode_fast(block: bytes, digest: bytes) -> tuple[bytes, int]:
    """Validate a whole entry held in ``block``; return ``(payload, written_ns)``.
    Raises :class:`Invalid` (an expired entry is not refused here: callers
    check :meth:`Header.expired`)."""
    header, payload = decode_small(block, digest)
    return payload, header.written_ns


def decode_small(block: bytes, digest: bytes | None) -> tuple[Header, bytes]:
    """Validate a whole entry held in ``block``; return its header and payload."""
    header = parse_header(block, digest)
    if len(block) - header.offset != header.length:
        raise Invalid("wrong-length", f"header says {header.length}, file holds {len(block) - header.offset}")
    payload = block[header.offset :]
    if crc32(payload) != header.payload_crc:
        raise Invalid("bad-checksum")
    return header, payload


def kind_code(kind: str) -> int:
    """``"built"``/``"fetched"`` -> the kind byte; ValueError for anything else."""
    try:
        return KINDS[kind]
    except (KeyError, TypeError):
        raise ValueError(f"kind must be 'built' or 'fetched', not {kind!r}") from None


def read_entry(
    fd: int, block: bytes, digest: bytes | None, *, keep: bool = True, size: int | None = None
) -> tuple[Header, bytes | None]:
    """Validate the entry open at ``fd``, whose first read (of :data:`BLOCK`
    bytes) returned ``block``: the one reader every caller uses (get, open,
    trees, verify).

    Checks the header, the key digest (``digest``; None accepts any), the
    file's real size against the length field (``size``, else ``fstat``;
    never trusted to size an allocation: ruff #8147) and the payload CRC,
    reading the rest from ``fd``'s position in :data:`CHUNK` pieces.  Returns
    ``(header, payload)``, or ``(header, None)`` when not ``keep`` (verify
    only: memory stays bounded whatever the size).  Raises :class:`Invalid`
    or ``OSError``.
    """
    if len(block) < BLOCK:  # a short first read is the whole file
        header, payload = decode_small(block, digest)
        return header, payload if keep else None
    header = parse_header(block, digest)
    ops = _osops.current
    if size is None:
        size = ops.fstat(fd).st_size
    if size != header.offset + header.length:
        raise Invalid("wrong-length", f"header says {header.length}, file holds {size - header.offset}")
    first = block[header.offset :]
    parts = [first] if keep else []
    crc = crc32(first)
    seen = len(first)
    while True:
        chunk = _fs.retry("read", ops.read, fd, CHUNK)  # a lock violation (Windows 33) is transient
        if not chunk:
            break
        crc = crc32(chunk, crc)
        seen += len(chunk)
        if keep:
            parts.append(chunk)
    if seen != header.length:
        raise Invalid("truncated", "file changed size while being read")
    if crc != header.payload_crc:
        raise Invalid("bad-checksum")
    return header, b"".join(parts) if keep else None


def header_checksum_ok(block: bytes | memoryview) -> bool:
    """Whether ``block`` starts with a header whose CRC matches, read as
    either version: tells a damaged version field from a newer safecache's
    entry."""
    if len(block) >= V1_HEADER_SIZE and crc32(block[:44]) & 0xFFFFFFFF == int.from_bytes(block[44:48], "little"):
        return True
    if len(block) < HEADER_SIZE:
        return False
    klen, mlen = int.from_bytes(block[48:52], "little"), int.from_bytes(block[52:56], "little")
    end = HEADER_SIZE + klen + mlen
    if len(block) < end:
        return False
    return crc32(block[HEADER_SIZE:end], crc32(block[:60])) & 0xFFFFFFFF == int.from_bytes(block[60:64], "little")


# -- metadata replaced after the put: a sidecar beside the entry ------------------------------
#: ``<entry>.meta``: metadata that replaces the entry's own, valid only for
#: the value it names (its write time and payload CRC), so a reader never
#: pairs it with another value: a put that lands later makes it stale.
META_MAGIC = b"\x89SCM"
_META = struct.Struct("<4sHHQII")  # magic, version, reserved, value written_ns, value payload_crc, meta length
_META_SIZE = _META.size + 4  # + CRC of all the rest


def pack_meta(written_ns: int, payload_crc: int, meta: bytes) -> bytes:
    if len(meta) > MAX_META:
        raise ValueError(f"metadata is limited to {MAX_META} bytes, not {len(meta)}")
    head = _META.pack(META_MAGIC, 1, 0, written_ns, payload_crc, len(meta))
    return head + (crc32(meta, crc32(head)) & 0xFFFFFFFF).to_bytes(4, "little") + meta


def parse_meta(block: bytes, header: Header) -> bytes | None:
    """The metadata in a sidecar ``block`` if it is intact and belongs to the
    value ``header`` describes; None otherwise (stale, torn, foreign)."""
    if len(block) < _META_SIZE:
        return None
    magic, version, _r, written_ns, payload_crc, mlen = _META.unpack_from(block)
    if magic != META_MAGIC or version != 1 or len(block) != _META_SIZE + mlen or mlen > MAX_META:
        return None
    if crc32(block[_META_SIZE:], crc32(block[: _META.size])) & 0xFFFFFFFF != int.from_bytes(block[_META.size : _META_SIZE], "little"):
        return None
    if (written_ns, payload_crc) != (header.written_ns, header.payload_crc):
        return None
    return bytes(block[_META_SIZE:])
