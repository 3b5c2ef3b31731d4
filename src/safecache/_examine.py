"""Maintenance: examining what a walk finds, as a reader would: an entry
fully validated (as ``get`` does), an entry's kind, a tree pointer and its
manifest.

Each read retries "in use" errors only briefly (:data:`READ_BUDGET`): a
bulk operation must not spend 2 s on every busy file; the next run sees it.
``opened_as`` hands back the ``fstat`` of the file judged, so a caller can
later remove that very file and not a good one put in its place since.
"""

from __future__ import annotations

import os

from . import _format, _fs, _osops
from ._format import Invalid
from ._walk import REMOVE_BUDGET

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing: Cache.close() imports this module
if TYPE_CHECKING:
    from ._manifest import Manifest

#: How long one read retries "in use" errors: as long as a removal does.
READ_BUDGET = REMOVE_BUDGET


def load(
    path: str,
    digest: str,
    *,
    payload: bool,
    exact_version: bool = False,
    opened_as: list[os.stat_result] | None = None,
) -> tuple[_format.Header, bytes | None, os.stat_result] | None:
    """Read and fully validate the entry at ``path`` (as ``get`` does:
    length, both CRCs, key); return ``(header, payload or None, fstat)``,
    None if it is gone.  Raises :class:`Invalid` or ``OSError``.

    ``exact_version``: a version other than 1 whose header CRC does not
    match is reported as ``bad-header`` (a bit flip in the version field),
    not as an entry from a newer safecache.  ``opened_as`` receives the
    file's ``fstat``, so a caller can later remove the very file it judged.
    """
    opened = _fs.read_file(path, budget=READ_BUDGET)
    if opened is None:
        return None
    fd, block = opened
    ops = _osops.current
    try:
        st = ops.fstat(fd)
        if opened_as is not None:
            opened_as.append(st)
        raw = bytes.fromhex(digest)
        try:
            header, data = _format.read_entry(fd, block, raw, keep=payload, size=st.st_size)
        except Invalid as invalid:
            if (
                exact_version
                and invalid.reason == "unsupported-version"
                and _format.crc32(block[:44]) != int.from_bytes(block[44:48], "little")
            ):
                raise Invalid("bad-header", "header checksum mismatch (damaged version field)") from None
            raise
        return header, data, st
    finally:
        ops.close(fd)


def kind_of(path: str, digest: str) -> int | None:
    """The kind byte of a valid entry header; None if unreadable or invalid."""
    try:
        opened = _fs.read_file(path, budget=READ_BUDGET)  # retries "in use" errors
    except OSError:
        return None
    if opened is None:
        return None
    fd, block = opened
    try:
        return _format.parse_header(block, bytes.fromhex(digest)).kind
    except Invalid:
        return None
    finally:
        _osops.current.close(fd)


def read_pointer(
    path: str, digest: str, opened_as: list[os.stat_result] | None = None
) -> tuple[_format.Header, Manifest, os.stat_result] | None:
    """A tree pointer's header and manifest; None if gone.  Raises
    ``Invalid`` or ``ValueError`` (a pointer no reader would use), ``OSError``."""
    from ._manifest import Manifest  # here: Cache.close() imports this module, and most tools never use trees

    loaded = load(path, digest, payload=True, opened_as=opened_as)
    if loaded is None:
        return None
    header, payload, st = loaded
    assert payload is not None
    try:
        manifest = Manifest.from_bytes(payload)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"bad manifest: {exc}") from None
    return header, manifest, st
