"""Prune and clean (``_prune``, ``_reclaim``): old bucket versions,
``--ci``, by age and size, named buckets, held trees, and removal that never
follows a symlink, also while processes use the cache.
Helpers: _maintenance_helpers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from _maintenance_helpers import (
    DAY,
    HOUR,
    PLATFORMS,
    Holder,
    Users,
    _hold_lock,
    _hold_tree,
    age,
    age_tree,
    cache,  # noqa: F401 - a fixture
    entry_files,
    fill,
    path_of,
    populate,
    root,  # noqa: F401 - a fixture
    totals_size,
    value_for,
    walk_mode,  # noqa: F401 - a fixture
    walk_size,
)

import safecache
import safecache.cli
from safecache import maintenance
from safecache.testing import inject_errors, windows_semantics


# -- prune ---------------------------------------------------------------------------------------------
def test_prune_removes_old_bucket_versions_and_forgets_their_counters(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        for version in (1, 2, 3):
            populate(c, 5, name="lint", version=version)
        populate(c, 5, name="fmt", version=1)
        c.bucket("lint", 2).trees.get_or_create("t", fill)
    cache = safecache.Cache(root, auto_trim=False)
    report = maintenance.prune(cache)
    assert maintenance.list_buckets(cache) == [("fmt", 1), ("lint", 3)]
    assert report.removed_entries == 10 and report.removed_trees == 1
    assert sorted(maintenance.info(cache)["buckets"]) == ["fmt/v1", "lint/v3"]  # type: ignore[call-overload]
    assert [p.name for p in root.iterdir() if p.name.startswith(".trash-")] == []
    assert totals_size(root) == (walk_size(root), 10)


def test_prune_of_named_buckets_leaves_the_others(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        for version in (1, 2):
            populate(c, 5, name="lint", version=version)
            populate(c, 5, name="fmt", version=version)
    cache = safecache.Cache(root, auto_trim=False)
    maintenance.prune(cache, buckets=["lint"])
    assert maintenance.list_buckets(cache) == [("fmt", 1), ("fmt", 2), ("lint", 2)]
    assert totals_size(root) == (walk_size(root), 15)
    with pytest.raises(ValueError):
        maintenance.prune(cache, buckets=["Not A Bucket"])


def test_prune_older_than_and_max_size(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 20)
    for i, k in enumerate(keys):
        age(path_of(cache, k), (20 - i) * HOUR)  # key 0 oldest: 20 h
    report = maintenance.prune(cache, older_than=10.5 * HOUR)
    assert report.removed_entries == 10
    report = maintenance.prune(cache, max_size=5 * os.path.getsize(path_of(cache, keys[-1])))
    assert [os.path.exists(path_of(cache, k)) for k in keys[10:]] == [False] * 6 + [True] * 4


def test_prune_ci_keeps_built_and_removes_fetched(cache: safecache.Cache) -> None:
    bucket = cache.bucket("data", 1)
    built = populate(cache, 5, kind="built")
    fetched = [f"f{i}" for i in range(5)]
    for k in fetched:
        bucket.put(k, b"wheel", kind="fetched")
    bucket.trees.get_or_create("built-tree", fill, kind="built")
    bucket.trees.get_or_create("fetched-tree", fill, kind="fetched")
    report = maintenance.prune(cache, ci=True)
    assert all(bucket.get(k) is not None for k in built)
    assert all(bucket.get(k) is None for k in fetched)
    assert bucket.trees.get("built-tree") is not None and bucket.trees.get("fetched-tree") is None
    assert report.removed_entries == 5 and report.removed_trees == 1


def test_prune_waits_a_bounded_time_for_held_trees_then_leaves_them(cache: safecache.Cache, root: Path) -> None:
    bucket = cache.bucket("data", 1)
    tree = bucket.trees.get_or_create("held", fill, kind="fetched")
    with Holder(_hold_tree, str(root), "data", "held"):
        started = time.monotonic()
        report = maintenance.prune(cache, ci=True, timeout=0.5)
        waited = time.monotonic() - started
        assert 0.4 < waited < 10
        assert report.kept_in_use == 1 and os.path.isdir(tree.path)
        report = maintenance.prune(cache, ci=True, force=True)
        assert report.removed_trees == 1 and not os.path.exists(tree.path)


# -- clean ----------------------------------------------------------------------------------------------
def test_clean_removes_every_bucket_and_keeps_markers_stats_and_locks(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        populate(c, 10)
        populate(c, 10, name="lint", version=3)
        c.bucket("lint", 3).get_or_create("computed", lambda: b"x")
        c.bucket("data", 1).trees.get_or_create("t", fill)
    (root / "buckets" / "not a bucket").mkdir()
    (root / "buckets" / "not a bucket" / "junk").write_text("x")
    cache = safecache.Cache(root, auto_trim=False)
    report = maintenance.clean(cache)
    assert report.removed_entries == 21 and report.removed_trees == 1
    assert sorted(p.name for p in root.iterdir()) == [".gitignore", "CACHEDIR.TAG", "README", "buckets", "locks", "stats"]
    assert list((root / "buckets").iterdir()) == []
    assert list((root / "locks").rglob("*.lock"))  # compute-once lock files may be in use: kept
    assert maintenance.info(cache)["buckets"] == {}
    assert cache.bucket("lint", 3).put("again", b"works") and cache.bucket("lint", 3).get("again") == b"works"


def test_clean_of_named_buckets(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        for version in (1, 2):
            populate(c, 5, name="lint", version=version)
        populate(c, 5, name="fmt", version=1)
        populate(c, 5, name="keep", version=1)
    cache = safecache.Cache(root, auto_trim=False)
    report = maintenance.clean(cache, buckets=["lint", "fmt/v1"])
    assert report.removed_entries == 15
    assert maintenance.list_buckets(cache) == [("keep", 1)]
    assert sorted(maintenance.info(cache)["buckets"]) == ["keep/v1"]  # type: ignore[call-overload]
    assert totals_size(root)[1] == 5


def test_clean_leaves_a_held_tree_in_place_and_force_removes_it(cache: safecache.Cache, root: Path) -> None:
    bucket = cache.bucket("data", 1)
    populate(cache, 5)
    tree = bucket.trees.get_or_create("held", fill)
    with Holder(_hold_tree, str(root), "data", "held"):
        report = maintenance.clean(cache, timeout=0.3)
        assert report.kept_in_use == 1 and report.removed_entries == 5
        assert os.path.isdir(tree.path) and bucket.trees.get("held") is None  # unreferenced now
        # Released and an hour old: an ordinary trim removes it.
        report = maintenance.clean(cache, force=True)
        assert report.removed_trees == 1 and not os.path.exists(tree.path)


def test_an_unreferenced_tree_left_by_clean_goes_with_the_next_trim(cache: safecache.Cache, root: Path) -> None:
    bucket = cache.bucket("data", 1)
    tree = bucket.trees.get_or_create("held", fill)
    with Holder(_hold_tree, str(root), "data", "held"):
        maintenance.clean(cache, timeout=0.1)
    assert os.path.isdir(tree.path)
    bucket.put("x", b"y")
    age_tree(tree.path, 2 * HOUR)
    assert maintenance.trim(cache).removed_trees == 1 and not os.path.exists(tree.path)


def test_clean_and_trim_never_follow_symlinks(cache: safecache.Cache, root: Path, tmp_path: Path) -> None:
    keys = populate(cache, 3)
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / ("ab" + "0" * 30)
    victim.write_bytes(b"precious")
    age(victim, 90 * DAY)
    vdir = root / "buckets" / "data" / "v1"
    (vdir / "ab").symlink_to(outside, target_is_directory=True)  # a shard that is a symlink
    shard = Path(path_of(cache, keys[0])).parent
    link = shard / (shard.name + "f" * 30)
    link.symlink_to(victim)  # an "entry" that is a symlink
    os.utime(link, (0, 0), follow_symlinks=False)
    (vdir / "tree-objects").mkdir()
    (vdir / "tree-objects" / ("c" * 32)).symlink_to(outside, target_is_directory=True)
    maintenance.trim(cache, max_age=DAY)
    maintenance.verify(cache, repair=True)
    assert victim.read_bytes() == b"precious"
    maintenance.clean(cache)
    assert victim.read_bytes() == b"precious" and outside.is_dir()
    assert list((root / "buckets").iterdir()) == []


def test_clean_copes_with_read_only_files_and_directories(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 5)
    tree = cache.bucket("data", 1).trees.get_or_create("t", fill)
    for k in keys:
        os.chmod(path_of(cache, k), 0o444)
    for dirpath, _dirs, files in os.walk(tree.path):
        for name in files:
            os.chmod(os.path.join(dirpath, name), 0o444)
        os.chmod(dirpath, 0o555)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = maintenance.clean(cache)
    assert report.removed_entries == 5 and report.removed_trees == 1
    assert list((root / "buckets").iterdir()) == []


# -- clean and prune while processes use the cache ----------------------------------------------------
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_prune_ci_and_clean_while_four_processes_use_the_cache(root: Path, platform: str, stress: bool) -> None:
    """4 processes get, put, build, place and hold entries and trees while
    the cache is pruned for CI, then cleaned.  None sees an exception or a
    wrong value; after ``prune --ci`` the built entries and trees made
    before are there and the fetched ones are not; after ``clean`` nothing
    made before is left.

    Under the emulator this also catches a bug outside maintenance: a tree
    commit whose scan meets a transient denial twice (Trees.commit, then
    Trees._ephemeral_from) raises to the caller; rare at 2 % denials, it
    shows here because clean makes the processes rebuild their trees."""
    windows = PLATFORMS[platform]
    with safecache.Cache(root, auto_trim=False) as c:
        bucket = c.bucket("data", 1)
        built = populate(c, 30, kind="built")
        fetched = [f"fetched-{i}" for i in range(30)]
        for k in fetched:
            bucket.put(k, value_for(k), kind="fetched")
        for i in range(3):
            bucket.trees.get_or_create(f"built-tree-{i}", fill, kind="built")
            bucket.trees.get_or_create(f"fetched-tree-{i}", fill, kind="fetched")
        populate(c, 10, version=0)  # an old version
    seconds = 20.0 if stress else 3.0
    with Users(root, 4, seconds, built + fetched, trees=True, windows=windows) as users:
        time.sleep(seconds / 4)
        cache = safecache.Cache(root, auto_trim=False)
        bucket = cache.bucket("data", 1)
        with windows_semantics() if windows is not None else contextlib.nullcontext():
            pruned = maintenance.prune(cache, ci=True, timeout=5)
            # Each assertion names what it found, so a failure under load can be read.
            assert [k for k in built if bucket.get(k) != value_for(k)] == [], pruned
            assert [k for k in fetched if bucket.get(k) is not None] == [], pruned
            assert [i for i in range(3) if bucket.trees.get(f"built-tree-{i}") is None] == [], pruned
            assert [i for i in range(3) if bucket.trees.get(f"fetched-tree-{i}") is not None] == [], pruned
            assert ("data", 0) not in maintenance.list_buckets(cache), pruned
            time.sleep(seconds / 4)
            cleaned = maintenance.clean(cache, timeout=5)
            assert [k for k in built if bucket.get(k) is not None] == [], cleaned
            assert [i for i in range(3) if bucket.trees.get(f"built-tree-{i}") is not None] == [], cleaned
        results = users.results()
    problems = [p for r in results for p in r["problems"]]
    assert problems == [], "\n\n".join(problems)
    assert all(r["ops"] > 20 for r in results), results  # the processes really ran throughout
    assert pruned.skipped_reason == "" and pruned.removed_entries >= 40 and pruned.removed_trees >= 3, pruned
    assert cleaned.removed_entries >= 30, cleaned


# -- a full disk -------------------------------------------------------------------------------------
def _full_disk_cache(root: Path) -> None:
    """Entries but no ``locks/`` yet (a cache that never computed once), on
    a disk about to be full."""
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 10)
        for k in keys:
            age(path_of(c, k), 60 * DAY)
    shutil.rmtree(root / "locks", ignore_errors=True)


#: A full file system: nothing can be created (directories, files), nothing written.
FULL = {"error": errno.ENOSPC, "ops": ("mkdir", "mkdir_at", "write")}


@pytest.mark.parametrize("operation", ["prune", "clean"])
def test_prune_and_clean_free_space_on_a_full_disk_without_creating_a_file_first(
    root: Path, walk_mode: str, operation: str
) -> None:
    """The trim lock cannot be created (no room for ``locks/``), nor a trash
    directory: an operation a person asked for goes on without the lock
    and deletes in place (docs/maintenance.md says why that is safe)."""
    _full_disk_cache(root)
    cache = safecache.Cache(root, auto_trim=False)
    with inject_errors(**FULL), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the counters cannot be written: warned, not raised
        if operation == "prune":
            report = maintenance.prune(cache, older_than=DAY)
        else:
            report = maintenance.clean(cache)
    assert report.skipped_reason == "" and report.removed_entries == 10
    assert entry_files(root) == [] and not (root / "locks").exists()
    assert [p.name for p in root.iterdir() if p.name.startswith(".trash-")] == []


def test_clean_yes_frees_space_on_a_full_disk_from_the_command_line(root: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _full_disk_cache(root)
    with inject_errors(**FULL):
        code = safecache.cli.run(["clean", "--yes", "--json"], cache=lambda: safecache.Cache(root, auto_trim=False))
    assert code == 0 and json.loads(capsys.readouterr().out)["removed_entries"] == 10
    assert entry_files(root) == []


def test_the_trim_lock_held_elsewhere_is_still_respected_on_a_full_disk(root: Path) -> None:
    """Going on without the lock is only for a lock file that does not
    exist (nobody can hold it): one that exists and is held still stops
    prune, full disk or not."""
    _full_disk_cache(root)
    (root / "locks").mkdir()
    with Holder(_hold_lock, str(root / "locks" / "trim.lock")), inject_errors(**FULL):
        report = maintenance.prune(safecache.Cache(root, auto_trim=False), older_than=DAY, timeout=0.2)
    assert report.skipped_reason == "another process is trimming" and len(entry_files(root)) == 10


@pytest.mark.parametrize("operation", ["prune", "clean"])
def test_a_trim_lock_failure_is_reported_under_the_operation_that_hit_it(root: Path, operation: str) -> None:
    _full_disk_cache(root)
    cache = safecache.Cache(root, auto_trim=False)
    with (
        inject_errors(errno.EACCES, ops=("open",), path_contains="trim.lock"),
        pytest.warns(safecache.CacheWarning, match=f"cache {operation} failed \\(permission\\)"),
    ):
        report = getattr(maintenance, operation)(cache)
    assert report.skipped_reason.startswith("the trim lock could not be taken")


# -- one removal protocol for trees ---------------------------------------------------------------------
def test_maintenance_removes_trees_through_the_one_removal_protocol(
    cache: safecache.Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``_tree.remove_tree`` (and its ``lock_for_removal``) is the protocol
    between users and removers; maintenance calls it, never a copy."""
    from safecache import _tree

    calls: list[str] = []
    real_remove, real_lock = _tree.remove_tree, _tree.lock_for_removal

    def remove_tree(*args: Any, **kwargs: Any) -> str:
        calls.append("remove_tree")
        return real_remove(*args, **kwargs)

    def lock_for_removal(*args: Any, **kwargs: Any) -> Any:
        calls.append("lock_for_removal")
        return real_lock(*args, **kwargs)

    monkeypatch.setattr(_tree, "remove_tree", remove_tree)
    monkeypatch.setattr(_tree, "lock_for_removal", lock_for_removal)
    bucket = cache.bucket("data", 1)
    bucket.trees.get_or_create("fetched", fill, kind="fetched")
    bucket.trees.get_or_create("other", fill, kind="fetched")
    assert maintenance.prune(cache, ci=True).removed_trees == 2
    assert calls.count("remove_tree") == 2
    bucket.trees.get_or_create("t", fill)
    assert maintenance.clean(cache).removed_trees == 1
    assert "lock_for_removal" in calls
