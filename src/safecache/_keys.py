"""Canonical encoding and digest of cache keys.

A cache key is a ``str``, ``bytes`` or a structured value built from the
supported types (recursively):

* ``str``
* ``bytes``, ``bytearray``, ``memoryview`` -- all three encode as bytes
* ``int`` (arbitrary precision), ``bool`` (distinct from ``int``), ``float``,
  ``None``
* ``tuple`` and ``list`` -- both encode as the same "sequence"
* ``dict`` with ``str`` keys -- order-independent
* paths: any ``os.PathLike`` (``pathlib.PurePath`` and its subclasses
  included), encoded by their POSIX-style text and distinct from ``str``

Instances of subclasses of these types encode as their base type (an
``IntEnum`` member as its ``int``, a ``namedtuple`` as a sequence); an object
with ``__fspath__`` is always a path.  Anything else raises ``TypeError``.

``encode_key`` gives the canonical bytes, ``key_digest`` their BLAKE2b-128
hex digest, ``decode_key`` the inverse of ``encode_key`` and ``describe_key``
a short human-readable rendering.  The byte format is specified in
``docs/keys.md`` and pinned by the golden vectors in ``tests/test_keys.py``:
changing it changes every digest, so it is never changed in place (a new
format gets a new prefix).

Import cost matters (command-line tools import this on every run): the module
imports only ``os`` and ``sys`` (already loaded by the interpreter) and
``_blake2``; ``struct`` is imported on the first float, ``pathlib`` never.
"""

from __future__ import annotations

import os
import sys

try:
    from _blake2 import blake2b as _blake2b
except ImportError:  # pragma: no cover - CPython builds without _blake2

    def _blake2b(data: bytes, digest_size: int) -> Any:  # type: ignore[no-redef]
        import hashlib

        return hashlib.blake2b(data, digest_size=digest_size)


TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

def new_blake2b_128() -> Any:
    """A fresh BLAKE2b hash with a 16-byte digest (for file contents)."""
    return _blake2b(b"", digest_size=16)


__all__ = [
    "FORMAT_PREFIX",
    "KeyPath",
    "MAX_DEPTH",
    "decode_key",
    "describe_key",
    "encode_key",
    "key_digest",
    "new_blake2b_128",
]

#: First two bytes of every encoding; identifies the format version.
FORMAT_PREFIX = b"K1"

#: Deepest allowed nesting of containers (a flat tuple has depth 1).
MAX_DEPTH = 64

# One ASCII byte per type.
_T_STR = 0x73  # 's'
_T_BYTES = 0x62  # 'b'
_T_INT = 0x69  # 'i'
_T_FLOAT = 0x64  # 'd'
_T_TRUE = 0x54  # 'T'
_T_FALSE = 0x46  # 'F'
_T_NONE = 0x4E  # 'N'
_T_SEQ = 0x6C  # 'l'
_T_DICT = 0x6D  # 'm'
_T_PATH = 0x70  # 'p'

# The one bit pattern every NaN is encoded as (quiet NaN, sign bit clear).
_CANONICAL_NAN = b"\x7f\xf8\x00\x00\x00\x00\x00\x00"

# Read at call time so tests can emulate Windows.
_BACKSLASH_IS_SEP = os.sep == "\\"

_SMALL_VARINT = tuple(bytes((n,)) for n in range(128))
# Whole headers of short str / bytes keys, for the fast paths.
_STR_HEAD = tuple(FORMAT_PREFIX + b"s" + v for v in _SMALL_VARINT)
_BYTES_HEAD = tuple(FORMAT_PREFIX + b"b" + v for v in _SMALL_VARINT)

_SUPPORTED = (
    "str, bytes, bytearray, memoryview, int, bool, float, None, tuple, list, "
    "dict with str keys, os.PathLike"
)


class KeyPath(str):
    """A path inside a decoded key: the POSIX-style text that was encoded.

    It is a ``str`` subclass, but it never compares equal to a plain ``str``
    (a path and the same string are different keys).  Encoding a ``KeyPath``
    again gives the same bytes on every platform.
    """

    __slots__ = ()

    def __fspath__(self) -> str:
        return str.__str__(self)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeyPath) and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return f"KeyPath({str.__repr__(self)})"


class _Invalid(Exception):
    """Internal: an unencodable key; ``where`` collects the location."""

    def __init__(self, exc_type: type, before: str, after: str = "") -> None:
        self.exc_type = exc_type
        self.before = before  # message text before the location
        self.after = after  # and after it
        self.where: list[str] = []  # innermost first

    def to_public(self) -> Exception:
        parts = self.where[::-1]
        if len(parts) > 8:  # a cycle or runaway nesting: keep it readable
            parts[4:-2] = [f"...({len(parts) - 6} more levels)..."]
        location = "key" + "".join(parts)
        error: Exception = self.exc_type(self.before + location + self.after)
        return error


def _varint(n: int) -> bytes:
    """Unsigned LEB128: 7 bits per byte, least significant group first."""
    if n < 0x80:
        return _SMALL_VARINT[n]
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int_bytes(x: int) -> bytes:
    """Minimal two's-complement big-endian bytes of ``x`` (at least one)."""
    n = ((x if x >= 0 else ~x).bit_length() + 8) >> 3
    return int.to_bytes(x, n, "big", signed=True)


_double = None


def _float_bytes(x: float) -> bytes:
    global _double
    if _double is None:
        import struct

        _double = struct.Struct(">d")
    if x != x:
        return _CANONICAL_NAN
    return _double.pack(x)


def _type_name(x: object) -> str:
    t = type(x)
    if t.__module__ == "builtins":
        return t.__qualname__
    return f"{t.__module__}.{t.__qualname__}"


def _short_repr(x: object, limit: int = 40) -> str:
    try:
        text = repr(x)
    except Exception:
        return f"<{_type_name(x)}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _path_text(x: Any) -> str:
    """POSIX-style text of a path, without resolving or normalising it."""
    if isinstance(x, KeyPath):
        return str.__str__(x)
    pathlib = sys.modules.get("pathlib")
    if pathlib is not None and isinstance(x, pathlib.PurePath):
        posix: str = x.as_posix()
        return posix
    try:
        text = os.fspath(x)
    except TypeError as exc:
        raise _Invalid(TypeError, "bad path object in cache key at ", f": {exc}") from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if _BACKSLASH_IS_SEP:
        text = text.replace("\\", "/")
    return str(text)


def _first(item: tuple[bytes, Any, Any]) -> bytes:
    return item[0]


def _encode(x: Any, out: bytearray, depth: int) -> None:
    """Append the encoding of ``x`` (no prefix) to ``out``."""
    t = type(x)
    # Exact types first: the common case, and cheap.
    if t is str:
        data = str.encode(x, "utf-8", "surrogatepass")
        out.append(_T_STR)
        out += _varint(len(data))
        out += data
    elif t is int:
        data = _int_bytes(x)
        out.append(_T_INT)
        out += _varint(len(data))
        out += data
    elif t is bytes:
        out.append(_T_BYTES)
        out += _varint(len(x))
        out += x
    elif t is tuple or t is list:
        _encode_seq(x, out, depth)
    elif t is dict:
        _encode_dict(x, out, depth)
    elif x is None:
        out.append(_T_NONE)
    elif x is True:
        out.append(_T_TRUE)
    elif x is False:
        out.append(_T_FALSE)
    elif t is float:
        out.append(_T_FLOAT)
        out += _float_bytes(x)
    # Then subclasses and the other types; paths before str (KeyPath is one).
    elif isinstance(x, os.PathLike):
        data = str.encode(_path_text(x), "utf-8", "surrogatepass")
        out.append(_T_PATH)
        out += _varint(len(data))
        out += data
    elif isinstance(x, str):
        _encode(str.__str__(x), out, depth)
    elif isinstance(x, int):  # bool cannot be subclassed, so this is not bool
        _encode(int.__index__(x), out, depth)
    elif isinstance(x, float):
        out.append(_T_FLOAT)
        out += _float_bytes(float.__float__(x))
    elif isinstance(x, (bytes, bytearray, memoryview)):
        data = memoryview(x).tobytes()
        out.append(_T_BYTES)
        out += _varint(len(data))
        out += data
    elif isinstance(x, (tuple, list)):
        _encode_seq(x, out, depth)
    elif isinstance(x, dict):
        _encode_dict(x, out, depth)
    else:
        raise _Invalid(
            TypeError,
            f"unsupported type {_type_name(x)!r} in cache key at ",
            f"; supported: {_SUPPORTED}",
        )


def _check_depth(depth: int) -> None:
    if depth >= MAX_DEPTH:
        raise _Invalid(
            ValueError,
            f"cache key nested deeper than {MAX_DEPTH} levels at ",
            " (is a container inside itself?)",
        )


def _encode_seq(x: Any, out: bytearray, depth: int) -> None:
    _check_depth(depth)
    out.append(_T_SEQ)
    out += _varint(len(x))
    i = 0
    try:
        for i, item in enumerate(x):
            _encode(item, out, depth + 1)
    except _Invalid as exc:
        exc.where.append(f"[{i}]")
        raise


def _encode_dict(x: Any, out: bytearray, depth: int) -> None:
    _check_depth(depth)
    entries = []
    for k, v in x.items():
        if not isinstance(k, str):
            raise _Invalid(
                TypeError,
                f"dict key {_short_repr(k)} of type {_type_name(k)!r} in cache key at ",
                ": dict keys must be str",
            )
        entries.append((str.encode(k, "utf-8", "surrogatepass"), k, v))
    entries.sort(key=_first)
    out.append(_T_DICT)
    out += _varint(len(entries))
    previous = None
    for kb, k, v in entries:
        if kb == previous:  # only str subclasses with a custom __eq__/__hash__
            raise _Invalid(ValueError, f"duplicate dict key {_short_repr(k)} in cache key at ")
        previous = kb
        out += _varint(len(kb))
        out += kb
        try:
            _encode(v, out, depth + 1)
        except _Invalid as exc:
            exc.where.append(f"[{_short_repr(str.__str__(k))}]")
            raise


def encode_key(key: Any) -> bytes:
    """Return the canonical encoding of ``key``.

    The result is ``FORMAT_PREFIX`` followed by one type-tagged value (see
    ``docs/keys.md``).  It is the same in every process, on every platform and
    Python version (3.10+), and different keys give different bytes, except
    for these documented equivalences:

    * ``tuple`` and ``list`` with equal items are the same key;
    * ``bytes``, ``bytearray`` and ``memoryview`` with equal contents are;
    * all NaNs are one value (``-0.0`` and ``0.0`` stay different);
    * dicts equal as dicts are (item order does not matter);
    * paths with the same POSIX-style text are (``PurePosixPath('a/b')`` and
      ``PureWindowsPath('a\\\\b')``); paths are not resolved or normalised
      beyond what ``pathlib`` does when constructing them -- resolve them
      first if that is what you want;
    * a subclass instance is the same key as its base-type value.

    ``"1"``, ``b"1"``, ``1``, ``1.0``, ``True``, a path ``1`` and ``("1",)``
    are all different keys.

    Raises ``TypeError`` for an unsupported type, naming it and where it is
    (e.g. ``key[2]['opts']``), and ``ValueError`` for containers nested
    deeper than ``MAX_DEPTH`` (which includes a container inside itself).
    """
    t = type(key)
    if t is str:
        data = str.encode(key, "utf-8", "surrogatepass")
        n = len(data)
        return (_STR_HEAD[n] if n < 128 else FORMAT_PREFIX + b"s" + _varint(n)) + data
    if t is bytes:
        raw: bytes = key
        n = len(raw)
        return (_BYTES_HEAD[n] if n < 128 else FORMAT_PREFIX + b"b" + _varint(n)) + raw
    out = bytearray(FORMAT_PREFIX)
    try:
        _encode(key, out, 0)
    except _Invalid as exc:
        raise exc.to_public() from None
    return bytes(out)


def digest_of_encoding(encoding: bytes) -> str:
    """The digest of an encoding :func:`encode_key` returned (what
    :func:`key_digest` computes, for callers that need both)."""
    return str(_blake2b(encoding, digest_size=16).hexdigest())


def key_digest(key: Any) -> str:
    """Return the digest of ``key``: 32 lowercase hex characters.

    It is BLAKE2b with ``digest_size=16`` (no key, salt or personalisation)
    over ``encode_key(key)``, so it has the same guarantees and raises the
    same exceptions.  Short ``str`` and ``bytes`` keys take a fast path.
    """
    t = type(key)
    if t is str:
        data = str.encode(key, "utf-8", "surrogatepass")
        n = len(data)
        if n < 128:
            return _blake2b(_STR_HEAD[n] + data, digest_size=16).hexdigest()
    elif t is bytes:
        n = len(key)
        if n < 128:
            return _blake2b(_BYTES_HEAD[n] + key, digest_size=16).hexdigest()
    return _blake2b(encode_key(key), digest_size=16).hexdigest()


# -- decoding ------------------------------------------------------------


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    start = pos
    while True:
        if pos >= len(data):
            raise ValueError(f"truncated varint at offset {start}")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            if byte == 0 and pos - start > 1:
                raise ValueError(f"non-minimal varint at offset {start}")
            return result, pos
        shift += 7


def _read_bytes(data: bytes, pos: int) -> tuple[bytes, int]:
    n, pos = _read_varint(data, pos)
    end = pos + n
    if end > len(data):
        raise ValueError(f"truncated value at offset {pos}: {n} bytes announced")
    return data[pos:end], end


def _read_text(data: bytes, pos: int) -> tuple[str, bytes, int]:
    raw, end = _read_bytes(data, pos)
    try:
        text = raw.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError as exc:
        raise ValueError(f"invalid UTF-8 at offset {pos}: {exc.reason}") from None
    return text, raw, end


def _decode(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    if pos >= len(data):
        raise ValueError(f"truncated key: value expected at offset {pos}")
    tag = data[pos]
    pos += 1
    if tag == _T_STR:
        text, _, pos = _read_text(data, pos)
        return text, pos
    if tag == _T_BYTES:
        return _read_bytes(data, pos)
    if tag == _T_INT:
        raw, end = _read_bytes(data, pos)
        if not raw:
            raise ValueError(f"empty int at offset {pos}")
        value = int.from_bytes(raw, "big", signed=True)
        if len(_int_bytes(value)) != len(raw):
            raise ValueError(f"non-minimal int at offset {pos}")
        return value, end
    if tag == _T_FLOAT:
        raw = data[pos : pos + 8]
        if len(raw) != 8:
            raise ValueError(f"truncated float at offset {pos}")
        import struct

        (value,) = struct.unpack(">d", raw)
        if value != value and raw != _CANONICAL_NAN:
            raise ValueError(f"non-canonical NaN at offset {pos}")
        return value, pos + 8
    if tag == _T_TRUE:
        return True, pos
    if tag == _T_FALSE:
        return False, pos
    if tag == _T_NONE:
        return None, pos
    if tag == _T_PATH:
        text, _, pos = _read_text(data, pos)
        return KeyPath(text), pos
    if tag == _T_SEQ or tag == _T_DICT:
        if depth >= MAX_DEPTH:
            raise ValueError(f"key nested deeper than {MAX_DEPTH} levels")
        count, pos = _read_varint(data, pos)
        if tag == _T_SEQ:
            items = []
            for _ in range(count):
                item, pos = _decode(data, pos, depth + 1)
                items.append(item)
            return tuple(items), pos
        result = {}
        previous = None
        for _ in range(count):
            key_pos = pos
            name, raw, pos = _read_text(data, pos)
            if previous is not None and raw <= previous:
                raise ValueError(f"dict keys not strictly sorted at offset {key_pos}")
            previous = raw
            result[name], pos = _decode(data, pos, depth + 1)
        return result, pos
    raise ValueError(f"unknown tag {tag:#04x} at offset {pos - 1}")


def decode_key(data: bytes) -> Any:
    """Return the normalised value that ``encode_key`` encoded into ``data``.

    Sequences come back as tuples, bytes-likes as ``bytes``, paths as
    ``KeyPath``, dicts as ``dict`` (in encoded, i.e. sorted, order) and every
    NaN as a NaN.  Decoding is strict: ``encode_key(decode_key(data)) ==
    data`` whenever it returns, and any other input (wrong prefix, unknown
    tag, truncation, trailing bytes, non-minimal varint or int, non-canonical
    NaN, unsorted or duplicate dict keys, invalid UTF-8, too deep) raises
    ``ValueError``.  It exists to check injectivity and for debugging; the
    cache itself never decodes keys.
    """
    data = bytes(data)
    if data[:2] != FORMAT_PREFIX:
        raise ValueError(f"not a safecache key: prefix {data[:2]!r}, expected {FORMAT_PREFIX!r}")
    value, pos = _decode(data, 2, 0)
    if pos != len(data):
        raise ValueError(f"{len(data) - pos} trailing bytes after key at offset {pos}")
    return value


# -- describing ----------------------------------------------------------

_STR_SHOW = 80  # longer str values show their first _STR_HEAD_SHOW characters
_STR_HEAD_SHOW = 60
_BYTES_SHOW = 32  # longer bytes values show their first _BYTES_HEAD_SHOW bytes
_BYTES_HEAD_SHOW = 16
_INT_BITS_SHOW = 128  # larger ints are shown in shortened hexadecimal
_ITEMS_SHOW = 20  # longer containers show their first _ITEMS_SHOW items


def _render_str(s: str) -> str:
    if len(s) <= _STR_SHOW:
        return repr(s)
    return f"str(len={len(s)}, {s[:_STR_HEAD_SHOW]!r}...)"


def _render(v: Any) -> str:
    if isinstance(v, KeyPath):
        return f"path({_render_str(str.__str__(v))})"
    if isinstance(v, str):
        return _render_str(v)
    if isinstance(v, bytes):
        if len(v) <= _BYTES_SHOW:
            return repr(v)
        return f"bytes(len={len(v)}, {v[:_BYTES_HEAD_SHOW]!r}...)"
    if isinstance(v, bool) or v is None or isinstance(v, float):
        return repr(v)
    if isinstance(v, int):
        bits = abs(v).bit_length()
        if bits <= _INT_BITS_SHOW:
            return repr(v)
        return f"int(bits={bits}, {hex(v)[:24]}...)"
    if isinstance(v, tuple):
        parts = [_render(item) for item in v[:_ITEMS_SHOW]]
        if len(v) > _ITEMS_SHOW:
            parts.append(f"... {len(v) - _ITEMS_SHOW} more")
        elif len(v) == 1:
            return f"({parts[0]},)"
        return "(" + ", ".join(parts) + ")"
    if isinstance(v, dict):
        parts = [f"{_render_str(k)}: {_render(item)}" for k, item in list(v.items())[:_ITEMS_SHOW]]
        if len(v) > _ITEMS_SHOW:
            parts.append(f"... {len(v) - _ITEMS_SHOW} more")
        return "{" + ", ".join(parts) + "}"
    raise AssertionError(f"not a decoded key value: {type(v)!r}")  # pragma: no cover


def describe_key(key: Any) -> str:
    """Return a short, human-readable rendering of what went into ``key``.

    It renders the key as encoded, so two keys with the same description
    (and no truncation) have the same digest: sequences as tuples, bytes-likes
    as ``b'...'``, paths as ``path('src/a.py')`` in POSIX-style form, dict
    items in encoded order, floats and ints by ``repr``.  Long values are cut:
    ``str`` over 80 characters and ``bytes`` over 32 bytes show their length
    and first characters or bytes, ints over 128 bits their size and first hex
    digits, containers their first 20 items.  For example the key
    ``["lint", PurePosixPath("src/a.py"), {"line-length": 88}]`` renders as
    ``('lint', path('src/a.py'), {'line-length': 88})``.  Meant for
    ``SAFECACHE_DEBUG_KEYS`` output, not for parsing.  Raises what
    ``encode_key`` raises.
    """
    return _render(decode_key(encode_key(key)))
