"""The on-disk entry format (version 1).  docs/format.md is its specification.

An entry file is a 48-byte header followed by the payload::

    offset size  field
    0      4     magic  b"\\x89SCE"
    4      2     format version (1), little-endian
    6      1     kind: 1 = built, 2 = fetched
    7      1     flags (0; readers ignore unknown bits)
    8      8     payload length in bytes
    16     8     written at, nanoseconds since the Unix epoch
    24     16    key digest (BLAKE2b-128 of the canonical key encoding)
    40     4     CRC-32 of the payload
    44     4     CRC-32 of bytes 0-43 (the header itself)

All integers are little-endian.  A file is valid only if its size is exactly
48 + length, both CRCs match and the key digest is the one asked for; anything
else is a miss.  The length field is never trusted to size an allocation
(ruff #8147 aborted on a 7-exabyte length): it is checked against the size
actually read.
"""

from __future__ import annotations

import struct
import zlib

from . import _osops

MAGIC = b"\x89SCE"
VERSION = 1
HEADER_SIZE = 48
#: Readers read this much first: an entry shorter than this is whole in one read.
BLOCK = 1 << 16
#: Larger entries are checked (and streamed) in chunks of this size.
CHUNK = 1 << 20
KIND_BUILT = 1
KIND_FETCHED = 2
KINDS = {"built": KIND_BUILT, "fetched": KIND_FETCHED}
KIND_NAMES = {v: k for k, v in KINDS.items()}

_HEAD = struct.Struct("<4sHBBQQ16sI")  # bytes 0-43
_FULL = struct.Struct("<4sHBBQQ16sII")  # bytes 0-47
crc32 = zlib.crc32


class Invalid(Exception):
    """An entry failed validation.  ``reason`` is a short stable name:
    ``empty``, ``truncated``, ``bad-magic``, ``unsupported-version``,
    ``bad-header``, ``wrong-length``, ``wrong-key``, ``bad-checksum``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def pack_header(length: int, written_ns: int, digest: bytes, payload_crc: int, kind: int) -> bytes:
    head = _HEAD.pack(MAGIC, VERSION, kind, 0, length, written_ns, digest, payload_crc)
    return head + (crc32(head) & 0xFFFFFFFF).to_bytes(4, "little")


class Header:
    __slots__ = ("kind", "flags", "length", "written_ns", "digest", "payload_crc")

    def __init__(self, kind: int, flags: int, length: int, written_ns: int, digest: bytes, payload_crc: int) -> None:
        self.kind = kind
        self.flags = flags
        self.length = length
        self.written_ns = written_ns
        self.digest = digest
        self.payload_crc = payload_crc

    @property
    def kind_name(self) -> str:
        return KIND_NAMES.get(self.kind, "unknown")


def parse_header(block: bytes | memoryview, digest: bytes | None) -> Header:
    """Validate and decode the header at the start of ``block``.

    ``digest`` is the key digest the caller expects (None to accept any).
    Raises :class:`Invalid`.
    """
    if len(block) < HEADER_SIZE:
        raise Invalid("empty" if not block else "truncated", f"{len(block)} bytes")
    magic, version, kind, flags, length, written_ns, got_digest, payload_crc, head_crc = _FULL.unpack_from(block)
    if magic != MAGIC:
        raise Invalid("bad-magic")
    if version != VERSION:
        raise Invalid("unsupported-version", str(version))
    if crc32(block[:44]) != head_crc:
        raise Invalid("bad-header", "header checksum mismatch")
    if kind not in KIND_NAMES:
        raise Invalid("bad-header", f"kind {kind}")
    if digest is not None and got_digest != digest:
        raise Invalid("wrong-key")
    return Header(kind, flags, length, written_ns, got_digest, payload_crc)


def decode_fast(block: bytes, digest: bytes) -> tuple[bytes, int]:
    """Validate a whole entry held in ``block``; return ``(payload, written_ns)``.

    The hot path of every hit: one unpack and two CRCs.  Anything unexpected
    goes through :func:`decode_small`, which raises :class:`Invalid` with the
    precise reason.
    """
    if len(block) >= HEADER_SIZE:
        magic, version, kind, _flags, length, written_ns, got, payload_crc, head_crc = _FULL.unpack_from(block)
        if (
            magic == MAGIC
            and version == VERSION
            and got == digest
            and len(block) == HEADER_SIZE + length
            and kind in KIND_NAMES
            and crc32(block[:44]) == head_crc
        ):
            payload = block[HEADER_SIZE:]
            if crc32(payload) == payload_crc:
                return payload, written_ns
            raise Invalid("bad-checksum")
    header, payload = decode_small(block, digest)
    return payload, header.written_ns  # pragma: no cover - decode_small raised


def decode_small(block: bytes, digest: bytes | None) -> tuple[Header, bytes]:
    """Validate a whole entry held in ``block``; return its header and payload."""
    header = parse_header(block, digest)
    if len(block) - HEADER_SIZE != header.length:
        raise Invalid("wrong-length", f"header says {header.length}, file holds {len(block) - HEADER_SIZE}")
    payload = block[HEADER_SIZE:]
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
    if size != HEADER_SIZE + header.length:
        raise Invalid("wrong-length", f"header says {header.length}, file holds {size - HEADER_SIZE}")
    first = block[HEADER_SIZE:]
    parts = [first] if keep else []
    crc = crc32(first)
    seen = len(first)
    while True:
        chunk = ops.read(fd, CHUNK)
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
