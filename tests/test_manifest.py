"""Manifests (safecache._manifest): one strict parser, whose only error is
ManifestError (a ValueError), which every reader treats as a corrupt
pointer: a miss for ``trees.get`` and ``get_or_create``, a problem for
``verify``, never an exception out of the cache."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import safecache
from safecache import _format, _keys, _manifest
from safecache._manifest import Manifest, ManifestError

TREE_ID = "0123456789abcdef0123456789abcdef"
DIGEST = "00112233445566778899aabbccddeeff"


def doc(**changes: Any) -> dict[str, Any]:
    """A valid manifest document, with ``changes``."""
    base: dict[str, Any] = {
        "manifest": 1,
        "tree": TREE_ID,
        "kind": "built",
        "created_ns": 1_700_000_000_000_000_000,
        "dirs": ["pkg", "pkg/sub"],
        "files": [["pkg/a.py", 3, 0o644, DIGEST], ["pkg/sub/b.py", 0, 0o755, DIGEST]],
        "symlinks": [["pkg/link", "a.py"]],
    }
    base.update(changes)
    return base


def encode(document: object) -> bytes:
    return json.dumps(document).encode()


def test_a_valid_manifest_round_trips() -> None:
    m = Manifest.from_bytes(encode(doc()))
    assert m.dirs == ["pkg", "pkg/sub"] and m.symlinks == [("pkg/link", "a.py")]
    assert Manifest.from_bytes(m.to_bytes()).to_bytes() == m.to_bytes()


@pytest.mark.parametrize(
    "text",
    [
        # non-finite and huge numbers (json accepts them by default)
        '{"manifest": 1, "created_ns": Infinity}',
        '{"manifest": 1, "created_ns": -Infinity}',
        '{"manifest": 1, "created_ns": NaN}',
        '{"manifest": 1, "created_ns": 1e400}',
        '{"manifest": 1.0}',
        '{"manifest": 1, "created_ns": ' + "9" * 5000 + "}",
        # not JSON, not UTF-8, not an object
        "{",
        "",
        "[]",
        '"manifest"',
        "null",
    ],
)
def test_numbers_and_documents_json_would_accept_are_refused(text: str) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(text.encode())


def test_bytes_that_are_not_utf8_are_refused() -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(b"\xff\xfe{\x00")


def test_deep_nesting_is_refused_not_a_recursion_error() -> None:
    with pytest.raises(ManifestError, match="nested"):
        Manifest.from_bytes(b"[" * 200_000 + b"]" * 200_000)
    with pytest.raises(ManifestError):
        Manifest.from_bytes(encode(doc(dirs=[[[[[["x"]]]]]])))


@pytest.mark.parametrize(
    "changes",
    [
        {"manifest": True},
        {"manifest": "1"},
        {"tree": 7},
        {"tree": "../../etc"},
        {"tree": TREE_ID.upper()},
        {"kind": "other"},
        {"kind": None},
        {"created_ns": -1},
        {"created_ns": 1 << 63},
        {"created_ns": True},
        {"dirs": "pkg"},
        {"dirs": [1]},
        {"files": [["pkg/a.py", 3, 0o644]]},
        {"files": [["pkg/a.py", -1, 0o644, DIGEST]]},
        {"files": [["pkg/a.py", 3, 0o10000, DIGEST]]},
        {"files": [["pkg/a.py", "3", 0o644, DIGEST]]},
        {"files": [["pkg/a.py", 3, 0o644, "nothex"]]},
        {"files": {"pkg/a.py": 3}},
        {"symlinks": [["pkg/link"]]},
        {"symlinks": [["pkg/link", ""]]},
        {"symlinks": [["pkg/link", "a\x00b"]]},
        {"symlinks": [["pkg/link", 5]]},
        {"extra": 1},
    ],
    ids=lambda c: ",".join(f"{k}={v!r}"[:40] for k, v in c.items()),
)
def test_wrong_types_ranges_and_keys_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(encode(doc(**changes)))


def test_a_missing_key_is_refused() -> None:
    document = doc()
    del document["symlinks"]
    with pytest.raises(ManifestError):
        Manifest.from_bytes(encode(document))


@pytest.mark.parametrize("bad", ["../x", "/abs", "a/../../b", "a/./b", "a//b", "a\\b", "", "c:x", "a\x00b", "."])
def test_unsafe_paths_are_refused(bad: str) -> None:
    with pytest.raises(ManifestError):
        _manifest.check_relative(bad)
    with pytest.raises(ManifestError):
        Manifest.from_bytes(encode(doc(dirs=["pkg", "pkg/sub", bad] if bad else ["pkg", "pkg/sub", ""])))


def test_a_path_under_a_symlink_is_refused() -> None:
    """The issue's attack: symlink ``a`` -> outside, then ``a/victim``."""
    with pytest.raises(ManifestError, match="not under a directory"):
        Manifest.from_bytes(encode(doc(symlinks=[["a", "/tmp"]], files=[["a/victim", 1, 0o644, DIGEST]], dirs=[])))


def test_a_path_under_a_file_is_refused() -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(
            encode(doc(dirs=[], symlinks=[], files=[["f", 1, 0o644, DIGEST], ["f/g", 1, 0o644, DIGEST]]))
        )


def test_a_path_whose_directory_is_not_listed_is_refused() -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(encode(doc(dirs=["pkg"])))  # pkg/sub/b.py's directory is missing


@pytest.mark.parametrize(
    "changes",
    [
        {"dirs": ["pkg", "pkg", "pkg/sub"]},
        {"files": [["pkg/a.py", 3, 0o644, DIGEST], ["pkg/a.py", 3, 0o644, DIGEST]]},
        {"symlinks": [["pkg/sub", "a.py"]]},  # a symlink and a directory at one path
        {"symlinks": [["pkg/a.py", "x"]]},  # a symlink and a file at one path
    ],
)
def test_a_path_listed_twice_is_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ManifestError, match="twice"):
        Manifest.from_bytes(encode(doc(**changes)))


def test_a_later_manifest_version_is_flagged_newer() -> None:
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(encode(doc(manifest=2)))
    assert info.value.newer
    with pytest.raises(ManifestError) as info:
        Manifest.from_bytes(encode(doc(manifest=0)))
    assert not info.value.newer


def test_manifest_error_is_a_value_error_and_pickles() -> None:
    import pickle

    error = ManifestError("x", newer=True)
    assert isinstance(error, ValueError)
    again = pickle.loads(pickle.dumps(error))
    assert str(again) == "x" and again.newer


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=200), _json.map(lambda v: json.dumps(v).encode()), _json.map(lambda v: encode(doc(files=v)))))
def test_anything_parses_or_raises_manifest_error(data: bytes) -> None:
    """The only exception from_bytes raises is ManifestError."""
    try:
        Manifest.from_bytes(data)
    except ManifestError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(doc())), _json)
def test_any_one_field_changed_parses_or_raises_manifest_error(key: str, value: object) -> None:
    try:
        Manifest.from_bytes(encode(doc(**{key: value})))
    except ManifestError:
        pass


# -- every reader treats a bad manifest as a corrupt pointer --------------------------------------
MALFORMED = {
    "infinity": b'{"manifest": 1, "tree": "' + TREE_ID.encode() + b'", "created_ns": Infinity}',
    "huge": b'{"manifest": 1, "created_ns": 1e400}',
    "deep": b"[" * 100_000 + b"]" * 100_000,
    "under-a-symlink": encode(doc(symlinks=[["a", "/etc"]], files=[["a/victim", 1, 0o644, DIGEST]], dirs=[])),
}


def write_pointer(bucket: safecache.Bucket, key: str, payload: bytes, *, format_version: int = _format.VERSION) -> Path:
    """A tree pointer for ``key`` holding ``payload``, valid as an entry."""
    digest = _keys.key_digest(key)
    pointer = Path(bucket.trees._pointer(digest))
    header = bytearray(
        _format.pack_header(len(payload), time.time_ns(), bytes.fromhex(digest), _format.crc32(payload), _format.KIND_BUILT)
    )
    header[4:6] = format_version.to_bytes(2, "little")
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_bytes(bytes(header) + payload)
    return pointer


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_a_malformed_manifest_is_a_miss_for_get_and_get_or_create(tmp_path: Path, name: str) -> None:
    bucket = safecache.Cache(tmp_path / "cache").bucket("wheels", version=1)
    pointer = write_pointer(bucket, "k", MALFORMED[name])
    assert bucket.trees.get("k") is None
    assert not pointer.exists()  # corrupt: removed
    assert bucket.counters.corrupt_removed == 1
    write_pointer(bucket, "k", MALFORMED[name])
    tree = bucket.trees.get_or_create("k", lambda path: Path(path, "f").write_text("x"))
    assert not tree.ephemeral and tree.verify() == []
    assert bucket.trees.get("k") is not None


@pytest.mark.parametrize("name", sorted(MALFORMED))
@pytest.mark.parametrize("operation", ["verify", "verify-repair", "prune", "trim"])
def test_a_malformed_manifest_is_reported_by_maintenance_never_raised(tmp_path: Path, name: str, operation: str) -> None:
    import safecache.maintenance as maintenance

    cache = safecache.Cache(tmp_path / "cache")
    bucket = cache.bucket("wheels", version=1)
    bucket.trees.get_or_create("good", lambda path: Path(path, "f").write_text("x"))
    pointer = write_pointer(bucket, "bad", MALFORMED[name])
    with warnings.catch_warnings():
        warnings.simplefilter("error", safecache.CacheWarning)
        if operation == "verify":
            report = maintenance.verify(cache)
            assert any(pointer.name in str(p) for p in report.problems), report.problems
        elif operation == "verify-repair":
            maintenance.verify(cache, repair=True)
            assert not pointer.exists()
        elif operation == "prune":
            maintenance.prune(cache)
        else:
            maintenance.trim(cache)
    assert bucket.trees.get("good") is not None


def test_a_newer_safecache_pointer_is_kept_and_not_counted_corrupt(tmp_path: Path) -> None:
    """As Bucket keeps an entry of a newer format, trees keep such a pointer:
    a miss here, left for the safecache that wrote it."""
    bucket = safecache.Cache(tmp_path / "cache").bucket("wheels", version=1)
    newer_format = write_pointer(bucket, "a", encode(doc()), format_version=_format.VERSION + 1)
    newer_manifest = write_pointer(bucket, "b", encode(doc(manifest=2)))
    assert bucket.trees.get("a") is None and bucket.trees.get("b") is None
    assert newer_format.exists() and newer_manifest.exists()
    assert bucket.counters.corrupt_removed == 0


def test_a_commit_never_replaces_a_newer_safecache_pointer(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "cache").bucket("wheels", version=1)
    pointer = write_pointer(bucket, "k", encode(doc(manifest=2)))
    before = pointer.read_bytes()
    tree = bucket.trees.get_or_create("k", lambda path: Path(path, "f").write_text("x"))
    assert pointer.read_bytes() == before
    assert tree.verify() == [] and Path(tree.path, "f").read_text() == "x"  # ours, unpublished


def test_a_tree_with_names_no_manifest_may_hold_is_handed_out_not_committed(tmp_path: Path) -> None:
    """A file named ``a\\b`` is fine on POSIX, but no manifest may list it
    (it would be two names on Windows): the tree is usable, never published."""
    bucket = safecache.Cache(tmp_path / "cache").bucket("wheels", version=1)
    tree = bucket.trees.get_or_create("k", lambda path: Path(path, "a\\b").write_text("x"))
    assert tree.ephemeral and bucket.trees.get("k") is None
    dest = tmp_path / "dest"
    assert tree.place(dest, mode="copy").complete and (dest / "a\\b").read_text() == "x"
    tree.close()
    assert os.listdir(Path(bucket.directory, "tree-objects")) == []  # type: ignore[arg-type]
