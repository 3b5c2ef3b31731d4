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


def test_a_root_deleted_while_the_cache_ran_is_not_recreated_at_close(cache_dir: Path) -> None:
    import shutil

    c = safecache.Cache(cache_dir)
    c.bucket("b").put("k", b"v")
    shutil.rmtree(cache_dir)
    c.close()
    assert not cache_dir.exists()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_size": float("nan")},
        {"max_size": -1},
        {"max_size": "1Q"},
        {"max_age": float("inf")},
        {"max_age": "-3d"},
        {"trim_interval": float("nan")},
        {"retry_budget": -0.5},
        {"lock_timeout": float("nan")},
    ],
)
def test_invalid_settings_are_refused_at_the_call(cache_dir: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        safecache.Cache(cache_dir, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [{"max_size": [1]}, {"max_age": True}, {"lock_timeout": "3"}])
def test_settings_of_the_wrong_type_are_a_type_error(cache_dir: Path, kwargs: dict[str, object]) -> None:
    with pytest.raises(TypeError):
        safecache.Cache(cache_dir, **kwargs)  # type: ignore[arg-type]


def test_sizes_and_durations_may_be_written_as_the_cli_writes_them(cache_dir: Path) -> None:
    c = safecache.Cache(cache_dir, max_size="1G", max_age="30d", trim_interval="12h")
    assert (c.max_size, c.max_age, c.trim_interval) == (1024**3, 30 * 86400.0, 12 * 3600.0)


def test_an_empty_path_is_refused_rather_than_meaning_the_current_directory() -> None:
    with pytest.raises(ValueError, match="empty"):
        safecache.Cache("")
