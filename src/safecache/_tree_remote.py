"""Trees through the remote tier (docs/remote.md): one archive per tree,
verified against its manifest on arrival.

The archive is the tree's pointer entry (whose payload is the manifest)
followed by the bytes of every file the manifest lists, in its order::

    0  4  magic b"SCT1"
    4  8  length of the pointer entry
    12 .. the pointer entry (entry format 2), then each file's bytes

It travels in the tier's envelope (size-bounded, signed when a key is set).
On arrival nothing is trusted until checked: the pointer entry by the entry
format (its key digest must be the key asked for), the manifest by its
strict parser (no path outside the tree, none under a symlink), the archive's
length against the manifest's sizes, and every file's bytes against its
BLAKE2b digest before it is written.  Only then is the tree built and
committed as any tree is; a tree that fails any check is a miss.
"""

from __future__ import annotations

import hashlib
import os

from . import _format, _fs, _keys, _layout, _osops
from ._manifest import Manifest, ManifestError, join

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)
if TYPE_CHECKING:
    from ._tree import Tree
    from ._trees import Trees

MAGIC = b"SCT1"


def object_name(bucket: str, version: int, digest: str) -> str:
    """A tree's remote name: a function of bucket, version and key only."""
    return "cas/" + hashlib.sha256(f"{_layout.label(bucket, version)}/tree/{digest}".encode()).hexdigest()


def upload(trees: Trees, digest: str, manifest: Manifest) -> None:
    """Queue the committed tree of ``digest`` for upload (the archive is made
    in the uploader thread, from the files on disk)."""
    tier = trees.bucket.cache.tier
    if tier is None or trees.index_dir is None:
        return
    bucket = trees.bucket
    pointer = trees._pointer(digest)
    root = trees._object(manifest.tree_id)
    tier.upload_object(
        object_name(bucket.name, bucket.version, digest),
        lambda: _pack(pointer, root, manifest, tier.max_size),
        bucket.counters,
        manifest.size + 4096,
    )


def _read_all(path: str, limit: int) -> bytes | None:
    opened = _fs.read_file(path, budget=0.5)
    if opened is None:
        return None
    fd, block = opened
    try:
        return block + _fs.read_exact(fd, limit)
    finally:
        _osops.current.close(fd)


def _pack(pointer: str, root: str, manifest: Manifest, limit: int) -> bytes | None:
    """The archive, or None when a file changed or the tree is too large."""
    entry = _read_all(pointer, 1 << 20)
    if entry is None or manifest.size > limit:
        return None
    parts = [MAGIC, len(entry).to_bytes(8, "little"), entry]
    for rel, size, _mode, _digest in manifest.files:
        data = _read_all(join(root, rel), size + 1)
        if data is None or len(data) != size:
            return None  # removed or changed meanwhile: not uploaded
        parts.append(data)
    return b"".join(parts)


class _Refused(Exception):
    pass


def fetch(trees: Trees, key: object, digest: str) -> Tree | None:
    """On a local miss: the remote's tree for ``key``, verified, committed
    locally and returned; None otherwise.  Never raises in lenient mode."""
    bucket = trees.bucket
    tier = bucket.cache.tier
    if tier is None or not bucket.cache.writable or trees.index_dir is None:
        return None
    name = object_name(bucket.name, bucket.version, digest)
    archive = tier.fetch_object(name, bucket.counters)
    if archive is None:
        return None
    try:
        header, manifest, offset = _parse(archive, digest)
        with trees.build(key, kind=header.kind_name) as builder:
            _unpack(archive, offset, manifest, builder.path)
    except _Refused as exc:
        tier.refuse(name, bucket.counters, f"tree-{exc}")
        return None
    except _format.Invalid as exc:
        tier.refuse(name, bucket.counters, f"tree-invalid-{exc.reason}")
        return None
    except ManifestError:
        tier.refuse(name, bucket.counters, "tree-bad-manifest")
        return None
    except OSError as exc:
        bucket.counters.error(bucket.cache._failed("get_tree", exc, name))
        return None
    tier.stats.hits += 1
    bucket.counters.remote_hits += 1
    return builder.tree


def _parse(archive: bytes, digest: str) -> tuple[_format.Header, Manifest, int]:
    if len(archive) < 12 or archive[:4] != MAGIC:
        raise _Refused("bad-archive")
    length = int.from_bytes(archive[4:12], "little")
    if length > len(archive) - 12:
        raise _Refused("truncated")
    header, payload = _format.decode_small(archive[12 : 12 + length], bytes.fromhex(digest))
    manifest = Manifest.from_bytes(payload)
    offset = 12 + length
    if len(archive) - offset != manifest.size:
        raise _Refused("wrong-length")
    return header, manifest, offset


def _unpack(archive: bytes, offset: int, manifest: Manifest, staging: str) -> None:
    """Write the verified files into ``staging`` (paths come only from the
    manifest, which the strict parser has checked)."""
    for rel in manifest.dirs:
        _fs.makedirs(join(staging, rel))
    for rel, size, mode, digest in manifest.files:
        data = archive[offset : offset + size]
        offset += size
        check = _keys.new_blake2b_128()
        check.update(data)
        if check.hexdigest() != digest:
            raise _Refused("bad-file-digest")
        path = join(staging, rel)
        _fs.makedirs(os.path.dirname(path))
        _fs.write_file(path, [data], replace=False, mode=(mode & 0o755) | 0o600)
    for rel, target in manifest.symlinks:
        path = join(staging, rel)
        _fs.makedirs(os.path.dirname(path))
        _osops.current.symlink(target, path)
