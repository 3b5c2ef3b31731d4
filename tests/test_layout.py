"""The on-disk layout: names, label parsing, path builders, predicates."""

from __future__ import annotations

import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from safecache import _keys, _layout


@pytest.mark.parametrize("name", ["lint", "a", "0", "wheels-v2", "x.y_z", "a" * 64, "conx", "com10"])
def test_valid_bucket_names(name: str) -> None:
    assert _layout.valid_bucket_name(name)


@pytest.mark.parametrize("name", ["", "Lint", "../x", "a/b", "a\\b", ".hidden", "-x", "con", "nul.txt", "COM1", "com1.x", "x" * 65, "é"])
def test_invalid_bucket_names(name: str) -> None:
    assert not _layout.valid_bucket_name(name)


@pytest.mark.parametrize("spec, parsed", [("lint", ("lint", None)), ("lint/v3", ("lint", 3)), ("a.b/v0", ("a.b", 0))])
def test_parse_label(spec: str, parsed: tuple[str, int | None]) -> None:
    assert _layout.parse_label(spec) == parsed


@pytest.mark.parametrize("spec", ["", "Lint", "lint/3", "lint/v", "lint/v-1", "lint/v2147483648", "lint/v1/x", "../lint/v1"])
def test_parse_label_refuses(spec: str) -> None:
    with pytest.raises(ValueError):
        _layout.parse_label(spec)


@pytest.mark.parametrize("name, version", [("v0", 0), ("v17", 17), ("v2147483647", 2**31 - 1)])
def test_version_dirs(name: str, version: int) -> None:
    assert _layout.parse_version_dir(name) == version
    assert _layout.version_dir(version) == name


@pytest.mark.parametrize("name", ["v", "v03", "v-1", "v2147483648", "x1", "v1.tmp", "v١"])
def test_not_version_dirs(name: str) -> None:
    assert _layout.parse_version_dir(name) is None


def test_label_round_trips() -> None:
    assert _layout.parse_label(_layout.label("lint", 3)) == ("lint", 3)


@given(st.one_of(st.text(), st.binary(), st.tuples(st.text(), st.integers())))
def test_every_key_path_stays_inside_its_bucket(key: object) -> None:
    root = os.path.join(os.sep, "cache")
    bucket = _layout.bucket_dir(root, "lint", 3)
    digest = _keys.key_digest(key)
    for path in (
        _layout.entry_path(bucket, digest),
        _layout.tree_pointer(bucket, digest),
        _layout.entry_lock(_layout.bucket_locks_dir(root, "lint", 3), digest),
    ):
        assert os.path.normpath(path).startswith(root + os.sep)
        assert os.path.normpath(path) == path


def test_predicates() -> None:
    tree_id = "0123456789abcdef0123456789abcdef"
    assert _layout.is_staging(tree_id + ".tmp") and not _layout.is_staging(tree_id)
    assert _layout.is_doomed(os.path.basename(_layout.doomed_name(tree_id, "1a2b3c4d")))
    assert not _layout.is_doomed(tree_id)
    assert _layout.is_tree_id(tree_id) and not _layout.is_tree_id(tree_id.upper())
    assert _layout.is_shard("0f") and not _layout.is_shard("0g")
    assert _layout.is_temp("abc.1f-2.tmp")
    assert _layout.is_trash(os.path.basename(_layout.trash_name("/r", "x")))


def test_stats_paths_are_in_the_stats_directory() -> None:
    root = os.path.join(os.sep, "cache")
    stats = _layout.stats_dir(root)
    for n in range(_layout.STATS_SHARDS):
        assert os.path.dirname(_layout.stats_shard_n(root, n)) == stats
    assert _layout.stats_shard(root, pid=17) == _layout.stats_shard_n(root, 1)
    assert os.path.dirname(_layout.trim_stamp(root)) == stats
