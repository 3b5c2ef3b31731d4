"""Where a cache lives and what state its root is in."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import safecache
from safecache import _location


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SAFECACHE_DIR", "SAFECACHE_DISABLE", "MYTOOL_CACHE_DIR", "MYTOOL_NO_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)


def test_explicit_path_wins_over_every_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYTOOL_CACHE_DIR", str(tmp_path / "app"))
    monkeypatch.setenv("SAFECACHE_DIR", str(tmp_path / "global"))
    c = safecache.Cache(tmp_path / "explicit", app_name="mytool")
    assert c.path == str(tmp_path / "explicit")
    assert "path passed" in c.location.source


def test_application_variable_comes_before_safecache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYTOOL_CACHE_DIR", str(tmp_path / "app"))
    monkeypatch.setenv("SAFECACHE_DIR", str(tmp_path / "global"))
    c = safecache.Cache(app_name="mytool")
    assert c.path == str(tmp_path / "app")
    assert "MYTOOL_CACHE_DIR" in c.location.source


def test_explicit_env_var_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTHER_DIR", str(tmp_path / "other"))
    assert safecache.Cache(env_var="OTHER_DIR").path == str(tmp_path / "other")


def test_safecache_dir_comes_before_the_platform_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_DIR", str(tmp_path / "global"))
    c = safecache.Cache(app_name="mytool")
    assert c.path == str(tmp_path / "global")
    assert "SAFECACHE_DIR" in c.location.source


def test_platform_default_is_the_user_cache_dir_for_the_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    c = safecache.Cache(app_name="mytool")
    if sys.platform.startswith("linux"):
        assert c.path == str(tmp_path / "xdg" / "mytool")
    assert "platform" in c.location.source


def test_relative_paths_are_made_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert safecache.Cache("rel").path == str(tmp_path / "rel")


def test_app_disable_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MYTOOL_NO_CACHE", "true")
    c = safecache.Cache(tmp_path / "c", disable_env="MYTOOL_NO_CACHE")
    assert c.state == "disabled" and "MYTOOL_NO_CACHE" in c.location.source


def test_enabled_true_overrides_disable_variables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_DISABLE", "1")
    assert safecache.Cache(tmp_path / "c", enabled=True).enabled


def test_falsy_disable_values_do_not_disable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_DISABLE", "0")
    assert safecache.Cache(tmp_path / "c").enabled


def test_root_that_is_a_file_disables_with_one_warning(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.warns(safecache.CacheWarning, match="not a directory"):
        c = safecache.Cache(tmp_path / "file")
    assert c.state == "disabled"
    assert c.bucket("b").put("k", b"v") is False
    assert c.bucket("b").get("k") is None


def test_root_that_is_a_file_raises_in_strict_mode(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(safecache.CacheUnavailableError):
        safecache.Cache(tmp_path / "file", strict=True)


def test_root_owned_by_another_user_is_read_only_for_root(tmp_path: Path) -> None:
    """pip #7488: as root (sudo without -H), writing into a user's cache would
    leave root-owned files there; the cache serves hits but writes nothing."""
    if os.geteuid() != 0:
        pytest.skip("the rule is about running as root")
    root = tmp_path / "usercache"
    c = safecache.Cache(root)
    c.bucket("b").put("k", b"v")
    for dirpath, _dirs, files in os.walk(root):
        os.chown(dirpath, 65534, 65534)
        for name in files:
            os.chown(os.path.join(dirpath, name), 65534, 65534)
    with pytest.warns(safecache.CacheWarning, match="owned by uid 65534"):
        c2 = safecache.Cache(root)
    assert c2.state == "read-only"
    assert c2.bucket("b").get("k") == b"v"
    assert c2.bucket("b").put("k2", b"v") is False
    assert not any(p.stat().st_uid == 0 for p in root.rglob("*"))


def test_many_processes_creating_the_root_at_once(tmp_path: Path) -> None:
    """pytest #12381: concurrent creation of the cache directory failed with
    'Directory not empty' in all but one process."""
    root = tmp_path / "race" / "deep" / "cache"
    code = (
        "import sys, warnings; warnings.simplefilter('error'); import safecache;"
        "c = safecache.Cache(sys.argv[1], strict=True);"
        "assert c.bucket('b').put(sys.argv[2], b'v');"
        "assert c.bucket('b').get(sys.argv[2]) == b'v'"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(i)]) for i in range(8)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 8
    names = {p.name for p in root.iterdir()}
    assert {".gitignore", "CACHEDIR.TAG", "README", "buckets", "stats"} <= names <= {
        ".gitignore", "CACHEDIR.TAG", "README", "buckets", "stats", "locks"
    }
    assert not list(root.rglob("*.tmp"))


def test_markers_written_concurrently_are_complete(tmp_path: Path) -> None:
    for _ in range(3):
        _location.write_markers(str(tmp_path / "m"), "tool")
    assert (tmp_path / "m" / "CACHEDIR.TAG").read_text() == _location.CACHEDIR_TAG
