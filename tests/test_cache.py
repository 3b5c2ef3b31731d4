"""The Cache: bucket names and versions, the root's markers, turning caching off."""

from __future__ import annotations

from pathlib import Path

import pytest

import safecache


def test_buckets_and_versions_are_separate_namespaces(cache: safecache.Cache) -> None:
    cache.bucket("lint", version=1).put("k", b"v1")
    assert cache.bucket("lint", version=2).get("k") is None
    assert cache.bucket("format", version=1).get("k") is None
    assert cache.bucket("lint", version=1).get("k") == b"v1"


@pytest.mark.parametrize("name", ["", "Lint", "../x", "a/b", "a\\b", ".hidden", "-x", "con", "nul.txt", "x" * 65, "é"])
def test_invalid_bucket_names_are_refused(cache: safecache.Cache, name: str) -> None:
    with pytest.raises(ValueError):
        cache.bucket(name)


@pytest.mark.parametrize("version", [-1, 2**31])
def test_invalid_bucket_versions_are_refused(cache: safecache.Cache, version: int) -> None:
    with pytest.raises(ValueError):
        cache.bucket("lint", version=version)


def test_bucket_version_must_be_int(cache: safecache.Cache) -> None:
    with pytest.raises(TypeError):
        cache.bucket("lint", version="3")  # type: ignore[arg-type]


def test_first_write_creates_root_markers(cache_dir: Path) -> None:
    c = safecache.Cache(cache_dir, app_name="mytool")
    assert not cache_dir.exists()  # opening writes nothing
    c.bucket("lint").put("k", b"v")
    assert (cache_dir / "CACHEDIR.TAG").read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")
    assert (cache_dir / ".gitignore").read_text().splitlines()[-1] == "*"
    assert "mytool" in (cache_dir / "README").read_text()


def test_disable_environment_variable(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_DISABLE", "1")
    c = safecache.Cache(cache_dir)
    assert not c.enabled
    assert c.bucket("lint").put("k", b"v") is False
