"""Where a cache lives and what state its root is in."""

from __future__ import annotations

import os
import shutil
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


def _give_to_nobody(root: Path) -> None:
    for dirpath, _dirs, files in os.walk(root):
        os.chown(dirpath, 65534, 65534)
        for name in files:
            os.chown(os.path.join(dirpath, name), 65534, 65534)


def test_root_owned_by_another_user_is_not_used_by_root(tmp_path: Path) -> None:
    """pip #7488, applied fully: a cache owned by someone else may hold that
    user's bytes (or an attacker's); root reaching it (sudo without -H) does
    not serve it and does not write into it."""
    if os.geteuid() != 0:
        pytest.skip("the rule is about running as root")
    root = tmp_path / "usercache"
    c = safecache.Cache(root)
    c.bucket("b").put("k", b"v")
    _give_to_nobody(root)
    with pytest.warns(safecache.CacheWarning, match=r"owned by .*uid 65534") as caught:
        c2 = safecache.Cache(root)
    assert c2.state == "disabled"
    assert c2.bucket("b").get("k") is None
    assert c2.bucket("b").put("k2", b"v") is False
    message = str(caught[0].message)
    assert "sudo -H" in message and "chown -R 0" not in message
    assert not list(root.rglob("*k2*"))


def test_shared_mode_uses_a_cache_other_users_wrote(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a directory owned by another user")
    root = tmp_path / "team"
    safecache.Cache(root).bucket("b").put("k", b"v")
    _give_to_nobody(root)
    c = safecache.Cache(root, shared=True)
    assert c.state == "ready"
    assert c.bucket("b").get("k") == b"v"


def test_shared_mode_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_SHARED", "1")
    assert safecache.Cache(tmp_path / "c").shared is True
    monkeypatch.delenv("SAFECACHE_SHARED")
    monkeypatch.setenv("MYTOOL_CACHE_SHARED", "yes")
    assert safecache.Cache(tmp_path / "c", app_name="mytool").shared is True
    assert safecache.Cache(tmp_path / "c").shared is False


def test_root_does_not_create_a_missing_root_inside_another_users_directory(tmp_path: Path) -> None:
    """sudo without -H: creating ~user/.cache/mytool as root would leave the
    user read-only in their own cache for good."""
    if os.geteuid() != 0:
        pytest.skip("the rule is about running as root")
    home = tmp_path / "home"
    home.mkdir()
    os.chown(home, 65534, 65534)
    with pytest.warns(safecache.CacheWarning, match="sudo -H"):
        c = safecache.Cache(home / ".cache" / "mytool")
    assert c.state == "disabled"
    assert c.bucket("b").put("k", b"v") is False
    assert not (home / ".cache").exists()


def test_a_missing_root_may_be_created_in_a_sticky_directory(tmp_path: Path) -> None:
    shared_tmp = tmp_path / "tmp"
    shared_tmp.mkdir()
    shared_tmp.chmod(0o1777)
    if os.geteuid() == 0:
        os.chown(shared_tmp, 65534, 65534)
    c = safecache.Cache(shared_tmp / "mine")
    assert c.state == "ready" and c.bucket("b").put("k", b"v")


@pytest.mark.parametrize("where", ["buckets", "buckets/b", "buckets/b/v0", "locks/b"])
def test_a_symlink_planted_for_a_cache_directory_is_never_followed(tmp_path: Path, where: str) -> None:
    root = tmp_path / "cache"
    safecache.Cache(root).bucket("other").put("k", b"v")
    elsewhere = tmp_path / "attacker"
    elsewhere.mkdir()
    planted = root / where
    planted.parent.mkdir(parents=True, exist_ok=True)
    if planted.exists():
        shutil.rmtree(planted)
    planted.symlink_to(elsewhere, target_is_directory=True)
    with pytest.warns(safecache.CacheWarning, match="symbolic link"):
        c = safecache.Cache(root)
        b = c.bucket("b")
        assert b.put("k", b"v") is False
        assert b.get_or_create("k", lambda: b"made") == b"made"
    assert list(elsewhere.iterdir()) == []


def test_a_directory_owned_by_another_user_inside_the_root_is_not_used(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs a directory owned by another user")
    root = tmp_path / "cache"
    safecache.Cache(root).bucket("b").put("k", b"v")
    os.chown(root / "buckets" / "b", 65534, 65534)
    with pytest.warns(safecache.CacheWarning, match="owned by"):
        b = safecache.Cache(root).bucket("b")
        assert b.get("k") is None
        assert b.put("k", b"w") is False
    with pytest.raises(safecache.CachePermissionError):
        safecache.Cache(root, strict=True).bucket("b")


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


def test_nothing_created_is_writable_by_others_even_under_umask_0(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        c = safecache.Cache(tmp_path / "cache")
        b = c.bucket("b")
        b.put("small", b"v")
        b.put_stream("large", [b"x" * 100_000])
        b.get_or_create("computed", lambda: b"v")
        c.close()
    finally:
        os.umask(old)
    loose = [
        (str(p), oct(p.lstat().st_mode))
        for p in [tmp_path / "cache", *(tmp_path / "cache").rglob("*")]
        if p.lstat().st_mode & 0o022
    ]
    assert not loose
