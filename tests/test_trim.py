"""Trim (``_trim``, ``_trimmer``): the automatic ``maybe_trim`` and an
explicit ``trim``; least recently used first, by age, trees as units,
leftovers of dead processes, one trimmer at a time, the trim stamp.

Ages are set with os.utime, never waited for.  Helpers: _maintenance_helpers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import time
import warnings
from pathlib import Path

import pytest
from _maintenance_helpers import (
    DAY,
    HOUR,
    PLATFORMS,
    UNLINKS,
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
    pointer_path,
    populate,
    root,  # noqa: F401 - a fixture
    totals_size,
    walk_mode,  # noqa: F401 - a fixture
    walk_size,
)

import safecache
from safecache import _stats, _trim, maintenance
from safecache.testing import holding, inject_errors, windows_semantics


# -- trimming under load ---------------------------------------------------------------------------
@pytest.mark.parametrize("platform", list(PLATFORMS))
def test_trim_under_load_ends_under_the_limit_and_keeps_recently_used_entries(
    root: Path, platform: str, stress: bool
) -> None:
    """4 processes get and put (their own keys, shared keys, and the
    prefilled keys the trim removes) while the cache is trimmed from about
    850 KB to its 600 KB limit.  No process sees an exception or a wrong
    value; the cache ends under the limit; the entries the parent used just
    before the trim survive, the oldest others are gone."""
    limit = 600_000
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 400, size=2000)
        paths = [path_of(c, k) for k in keys]
    for i, path in enumerate(paths):
        age(path, 10 * DAY - i * 60)  # entry 0 is the least recently used
    recent = set(range(0, 400, 20))
    windows = PLATFORMS[platform]
    seconds = 20.0 if stress else 2.0
    # Small values: what the processes write after the trim (at most 45 keys
    # of 1 KB) must fit in the 10 % the trim leaves free.
    with Users(root, 4, seconds, keys, sizes=(10, 200, 1000), windows=windows) as users:
        time.sleep(seconds / 4)
        for i in recent:
            os.utime(paths[i])  # what a hit does to an entry last used over an hour ago
        cache = safecache.Cache(root, max_size=limit, auto_trim=False)
        with windows_semantics() if windows is not None else contextlib.nullcontext():
            report = maintenance.trim(cache)
        results = users.results()
    problems = [p for r in results for p in r["problems"]]
    assert problems == [], "\n\n".join(problems)
    assert all(r["ops"] > 20 for r in results), results
    assert report.skipped_reason == ""
    assert report.removed_entries > 100
    assert walk_size(root) < limit
    for i in recent:
        assert os.path.exists(paths[i]), f"recently used entry {i} was trimmed"
    gone = [i for i in range(100) if i not in recent and os.path.exists(paths[i])]
    assert gone == [], "least recently used entries survived"


def test_trim_removes_least_recently_used_first_down_to_90_percent(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 100)
    paths = [path_of(cache, k) for k in keys]
    sizes = [os.path.getsize(p) for p in paths]
    for i, path in enumerate(paths):
        age(path, DAY - i)  # distinct seconds: an exact order
    limit = 60_000
    report = maintenance.trim(cache, max_size=limit)
    kept = [i for i, p in enumerate(paths) if os.path.exists(p)]
    # Oldest first until at most 90 % of the limit remains.
    expected = 0
    while sum(sizes[expected:]) > limit * 0.9:
        expected += 1
    assert kept == list(range(expected, 100))
    assert report.removed_entries == expected
    assert report.freed_bytes == sum(sizes[:expected])


def test_trim_counts_a_tree_as_one_unit_by_its_pointer_use_time(cache: safecache.Cache, root: Path) -> None:
    bucket = cache.bucket("data", 1)
    old_tree = bucket.trees.get_or_create("old", fill)
    new_tree = bucket.trees.get_or_create("new", fill)
    keys = populate(cache, 20)
    for k in keys:
        age(path_of(cache, k), HOUR)
    age(pointer_path(bucket, "old"), 2 * DAY)
    report = maintenance.trim(cache, max_size=walk_size(root) - 1)
    # The old tree was used before every entry: it goes first, whole.
    assert report.removed_trees == 1 and 0 < report.removed_entries < 5
    assert bucket.trees.get("old") is None and not os.path.exists(old_tree.path)
    assert bucket.trees.get("new") is not None and os.path.isdir(new_tree.path)


def test_age_limit_removes_entries_and_trees_not_used_for_max_age(root: Path) -> None:
    with safecache.Cache(root, max_age=5 * DAY, auto_trim=False) as cache:
        keys = populate(cache, 10)
        bucket = cache.bucket("data", 1)
        bucket.trees.get_or_create("stale", fill)
        fresh_tree = bucket.trees.get_or_create("fresh", fill)
        for k in keys[:5]:
            age(path_of(cache, k), 6 * DAY)
        for k in keys[5:]:
            age(path_of(cache, k), 4 * DAY)
        age(pointer_path(bucket, "stale"), 6 * DAY)
        report = maintenance.trim(cache)
        assert report.removed_entries == 5 and report.removed_trees == 1
        assert [bucket.get(k) is not None for k in keys] == [False] * 5 + [True] * 5
        assert bucket.trees.get("stale") is None
        assert bucket.trees.get("fresh") is not None and os.path.isdir(fresh_tree.path)


def test_a_tree_in_use_by_another_process_is_kept_then_removed_once_released(
    cache: safecache.Cache, root: Path
) -> None:
    bucket = cache.bucket("data", 1)
    tree = bucket.trees.get_or_create("held", fill)
    age(pointer_path(bucket, "held"), 60 * DAY)
    with Holder(_hold_tree, str(root), "data", "held"):
        report = maintenance.trim(cache)
        assert report.kept_in_use == 1 and report.removed_trees == 0
        assert os.path.isdir(tree.path)
        assert bucket.trees.get("held") is not None  # the pointer stays with its tree
    report = maintenance.trim(cache)
    assert report.removed_trees == 1 and report.kept_in_use == 0
    assert not os.path.exists(tree.path)
    lock_dir = root / "locks" / "data" / "v1" / "tree-objects"
    assert not (lock_dir / f"{tree.manifest.tree_id}.lock").exists()  # the removed tree's lock file goes too


def test_leftovers_of_dead_processes_are_removed_and_young_ones_kept(cache: safecache.Cache, root: Path) -> None:
    bucket = cache.bucket("data", 1)
    keys = populate(cache, 3)
    entry = Path(path_of(cache, keys[0]))
    old_temp = entry.parent / f"{entry.name}.99-1.tmp"  # a killed writer's
    young_temp = entry.parent / f"{entry.name}.99-2.tmp"  # a live writer's
    old_temp.write_bytes(b"x" * 100)
    young_temp.write_bytes(b"x" * 100)
    age(old_temp, 2 * HOUR)
    age(young_temp, 10 * 60)

    objects = root / "buckets" / "data" / "v1" / "tree-objects"
    objects.mkdir(parents=True)
    old_staging = objects / (os.urandom(16).hex() + ".tmp")
    young_staging = objects / (os.urandom(16).hex() + ".tmp")
    for staging in (old_staging, young_staging):
        fill(str(staging))
    age_tree(old_staging, 2 * HOUR)
    doomed = objects / (os.urandom(16).hex() + ".del-0badf00d")
    fill(str(doomed))

    old_orphan = bucket.trees.get_or_create("orphan-old", fill)
    young_orphan = bucket.trees.get_or_create("orphan-young", fill)
    os.unlink(pointer_path(bucket, "orphan-old"))  # committed, but the pointer was never published
    os.unlink(pointer_path(bucket, "orphan-young"))
    age_tree(old_orphan.path, 2 * HOUR)
    referenced = bucket.trees.get_or_create("kept", fill)
    age_tree(referenced.path, 2 * HOUR)

    pointer_temp = Path(pointer_path(bucket, "kept") + ".99-3.tmp")
    pointer_temp.write_bytes(b"p")
    age(pointer_temp, 2 * HOUR)
    trash = root / ".trash-99-abcdef"
    fill(str(trash))
    age_tree(trash, 2 * HOUR)
    lock_dir = root / "locks" / "data" / "v1" / "tree-objects"
    lock_dir.mkdir(parents=True, exist_ok=True)
    orphan_lock = lock_dir / (os.urandom(16).hex() + ".lock")
    orphan_lock.touch()
    age(orphan_lock, 2 * HOUR)

    report = maintenance.trim(cache, max_age=None, max_size=None)
    assert not old_temp.exists() and young_temp.exists()
    assert not old_staging.exists() and young_staging.exists()
    assert not doomed.exists()
    assert not os.path.exists(old_orphan.path) and os.path.isdir(young_orphan.path)
    assert os.path.isdir(referenced.path) and bucket.trees.get("kept") is not None
    assert not pointer_temp.exists() and not trash.exists() and not orphan_lock.exists()
    assert all(bucket.get(k) is not None for k in keys)
    assert report.removed_trees == 1
    assert report.removed_temp == 5  # entry temp, pointer temp, staging, .del- dir, trash
    assert report.removed_entries == 0


def test_pointers_no_reader_would_use_are_removed(cache: safecache.Cache) -> None:
    bucket = cache.bucket("data", 1)
    dangling = bucket.trees.get_or_create("dangling", fill)
    bucket.trees.get_or_create("corrupt", fill)
    bucket.trees.get_or_create("good", fill)
    import shutil

    shutil.rmtree(dangling.path)  # its directory is gone
    corrupt = pointer_path(bucket, "corrupt")
    with open(corrupt, "r+b") as f:
        f.truncate(os.path.getsize(corrupt) - 1)  # shorter than its header says
    report = maintenance.verify(cache)
    assert sorted(p["reason"] for p in report.problems) == ["pointer: wrong-length", "tree directory missing"]
    report = maintenance.trim(cache)
    assert report.removed_entries == 2 and report.removed_trees == 0
    assert not os.path.exists(pointer_path(bucket, "dangling"))
    assert not os.path.exists(pointer_path(bucket, "corrupt"))
    assert bucket.trees.get("good") is not None
    assert maintenance.verify(cache).problems == []


def test_a_staging_tree_pinned_by_its_builder_is_kept_however_old(cache: safecache.Cache, root: Path) -> None:
    cache.bucket("data", 1).put("k", b"v")
    tree_id = os.urandom(16).hex()
    staging = root / "buckets" / "data" / "v1" / "tree-objects" / f"{tree_id}.tmp"
    fill(str(staging))
    age_tree(staging, 5 * HOUR)
    lock = str(root / "locks" / "data" / "v1" / "tree-objects" / f"{tree_id}.lock")
    with Holder(_hold_lock, lock):
        maintenance.trim(cache)
        assert staging.exists()
    maintenance.trim(cache)
    assert not staging.exists()


def test_one_trimmer_at_a_time_others_do_not_wait(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 10)
    for k in keys:
        age(path_of(cache, k), 60 * DAY)
    with Holder(_hold_lock, str(root / "locks" / "trim.lock")):
        started = time.monotonic()
        report = maintenance.trim(cache)
        assert time.monotonic() - started < 5
        assert report.skipped_reason == "another process is trimming"
        assert report.removed_entries == 0
        cache.bucket("data", 1).put("written", b"by this process")
        (root / "stats").mkdir(exist_ok=True)
        (root / "stats" / "trim").write_text(f"{time.time() - 2 * DAY:.0f}\n")
        assert maintenance.maybe_trim(cache) is not None  # due, but skipped too
        pruned = maintenance.prune(cache, older_than=DAY, timeout=0.2)
        assert pruned.skipped_reason == "another process is trimming"
        forced = maintenance.prune(cache, older_than=DAY, force=True)
        assert forced.skipped_reason == "" and forced.removed_entries == 10


def test_maybe_trim_runs_at_most_once_per_interval_unless_over_the_limit(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        populate(c, 50)
    cache = safecache.Cache(root, max_size=10**9, trim_interval=DAY, auto_trim=False)
    assert maintenance.maybe_trim(cache) is None  # this process only read: it leaves the cache alone
    assert not (root / "stats" / "trim").exists()
    cache.bucket("data", 1).put("written", b"by this process")
    # Never trimmed: the interval starts now (a young cache has nothing to age out).
    assert maintenance.maybe_trim(cache) is None
    stamp = root / "stats" / "trim"
    assert abs(float(stamp.read_text().split()[0]) - time.time()) < 60
    assert maintenance.info(cache)["last_trim"] is None  # the interval started; no trim ran
    stamp.write_text(f"{time.time() - 2 * DAY:.0f}\n")
    first = maintenance.maybe_trim(cache)
    assert first is not None and first.skipped_reason == ""  # the interval has passed
    assert abs(maintenance.info(cache)["last_trim"] - time.time()) < 60  # type: ignore[operator]
    assert maintenance.maybe_trim(cache) is None  # trimmed just now, and under the limit

    stamp.write_text(f"{time.time() + 30 * DAY:.0f}\n")
    assert maintenance.maybe_trim(cache) is not None  # a stamp in the future: the clock jumped
    stamp.write_text("garbage")
    assert maintenance.maybe_trim(cache) is not None  # unreadable: trim
    assert maintenance.maybe_trim(cache) is None

    small = safecache.Cache(root, max_size=20_000, trim_interval=DAY, auto_trim=False)
    small.bucket("data", 1).put("written", b"by this process")
    assert maintenance.maybe_trim(small) is None  # over the limit, but trimmed seconds ago
    stamp.write_text(f"{time.time() - 2 * _trim.OVER_LIMIT_SPACING:.0f}\n")
    assert maintenance.maybe_trim(cache) is None  # recent, and under its limit
    report = maintenance.maybe_trim(small)  # recent, but the counters say over the limit
    assert report is not None and report.removed_entries > 0
    assert walk_size(root) <= 18_000
    assert maintenance.maybe_trim(small) is None


def test_a_never_trimmed_cache_over_its_limit_is_trimmed_at_once(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        populate(c, 50)
    cache = safecache.Cache(root, max_size=20_000, auto_trim=False)
    cache.bucket("data", 1).put("written", b"by this process")
    report = maintenance.maybe_trim(cache)
    assert report is not None and report.removed_entries > 0 and walk_size(root) <= 18_000


def test_maybe_trim_does_nothing_for_a_cache_that_holds_nothing(root: Path) -> None:
    cache = safecache.Cache(root, auto_trim=False)
    assert cache.bucket("data", 1).get("nothing") is None
    assert maintenance.maybe_trim(cache) is None
    assert not root.exists()  # and wrote nothing
    assert maintenance.trim(cache).removed_entries == 0
    assert not root.exists()


def test_sizes_in_the_counters_are_exact_after_a_trim(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 40)
        populate(c, 10, name="other", version=2, size=5000)
        c.bucket("data", 1).trees.get_or_create("t", fill)
        # Drift: files removed behind the counters' back, a counter gone wrong.
        for k in keys[:7]:
            os.unlink(path_of(c, k))
    _stats.flush(str(root), {"data/v1": {"size": 12345, "entries": 3}})
    cache = safecache.Cache(root, auto_trim=False)
    maintenance.trim(cache, max_age=None, max_size=None)
    assert totals_size(root) == (walk_size(root), len(entry_files(root)))
    info = maintenance.info(cache)
    assert info["size"] == walk_size(root) and info["entries"] == 33 + 10


def test_trim_permission_error_is_a_warning_in_lenient_mode(root: Path, walk_mode: str) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 5)
        for k in keys:
            age(path_of(c, k), 60 * DAY)
    cache = safecache.Cache(root, auto_trim=False)
    with (
        inject_errors(errno.EACCES, ops=UNLINKS),
        pytest.warns(safecache.CacheWarning, match="permission"),
    ):
        report = maintenance.trim(cache)
    assert report.removed_entries == 0
    assert len(entry_files(root)) == 5
    errors = maintenance.info(cache)["buckets"]["data/v1"]["errors"]  # type: ignore[index]
    assert errors == {"permission": 5}


def test_trim_permission_error_raises_in_strict_mode(root: Path, walk_mode: str) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 5)
        for k in keys:
            age(path_of(c, k), 60 * DAY)
    cache = safecache.Cache(root, strict=True, auto_trim=False)
    with (
        inject_errors(errno.EACCES, ops=UNLINKS),
        pytest.raises(safecache.CachePermissionError),
    ):
        maintenance.trim(cache)
    # The trim lock was released: the next trim runs.
    assert maintenance.trim(cache).removed_entries == 5


def test_files_vanishing_under_a_trim_are_already_gone(cache: safecache.Cache, root: Path, walk_mode: str) -> None:
    keys = populate(cache, 10)
    for k in keys:
        age(path_of(cache, k), 60 * DAY)
    with (
        inject_errors(errno.ENOENT, ops=UNLINKS, after=True),
        warnings.catch_warnings(),
    ):
        warnings.simplefilter("error")
        report = maintenance.trim(cache)
    assert report.removed_entries == 0 and entry_files(root) == []


def test_an_entry_held_open_on_windows_is_left_for_the_next_trim(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 3)
    for k in keys:
        age(path_of(cache, k), 60 * DAY)
    with windows_semantics(posix_delete=False):
        # Another program holds the file open, without FILE_SHARE_DELETE.
        with holding(path_of(cache, keys[0])), warnings.catch_warnings():
            warnings.simplefilter("error")
            report = maintenance.trim(cache)
        assert report.removed_entries == 2 and os.path.exists(path_of(cache, keys[0]))
        assert maintenance.trim(cache).removed_entries == 1


def test_progress_is_reported_per_shard(cache: safecache.Cache) -> None:
    populate(cache, 50)
    seen: list[tuple[int, int | None]] = []
    maintenance.trim(cache, max_size=10_000, progress=lambda done, total: seen.append((done, total)))
    assert len(seen) > 10
    assert [d for d, _ in seen] == list(range(1, len(seen) + 1))
    assert all(t is not None and d <= t for d, t in seen)
    checked: list[tuple[int, int | None]] = []
    maintenance.verify(cache, progress=lambda done, total: checked.append((done, total)))
    assert checked and checked[-1][0] == checked[-1][1]


def test_report_as_dict_is_json(cache: safecache.Cache) -> None:
    populate(cache, 3)
    report = maintenance.trim(cache, max_size=1)
    data = report.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {
        "removed_entries", "removed_trees", "removed_temp", "freed_bytes", "kept_in_use", "problems", "skipped_reason"
    }


# -- the trim stamp --------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["nan\n", "inf\n", "-inf\n", "nan started\n"])
def test_a_trim_stamp_that_is_not_a_finite_time_counts_as_absent(root: Path, text: str) -> None:
    """``nan`` compares false with every time: taken as it is, the cache
    would never be trimmed again.  It counts as no stamp: the interval
    starts (the stamp is written again), and trimming resumes."""
    with safecache.Cache(root, auto_trim=False) as c:
        populate(c, 5)
    stamp = root / "stats" / "trim"
    stamp.write_text(text)
    cache = safecache.Cache(root, trim_interval=DAY, auto_trim=False)
    cache.bucket("data", 1).put("written", b"by this process")
    assert maintenance.maybe_trim(cache) is None  # absent: the interval starts now
    words = stamp.read_text().split()
    assert words[1:] == ["started"] and abs(float(words[0]) - time.time()) < 60
    assert maintenance.info(cache)["last_trim"] is None
    stamp.write_text(f"{time.time() - 2 * DAY:.0f} started\n")
    assert maintenance.maybe_trim(cache) is not None  # the interval has passed: trimmed


def test_the_automatic_trim_skips_when_the_trim_lock_cannot_be_created_for_lack_of_space(
    root: Path, walk_mode: str
) -> None:
    """Nobody asked for it: on a full disk it does not go on unlocked (an
    explicit prune or clean does: test_prune.py)."""
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 5)
        for k in keys:
            age(path_of(c, k), 60 * DAY)
    import shutil

    shutil.rmtree(root / "locks", ignore_errors=True)  # no lock file created yet
    (root / "stats").mkdir(exist_ok=True)
    (root / "stats" / "trim").write_text(f"{time.time() - 2 * DAY:.0f}\n")
    cache = safecache.Cache(root, max_age=DAY, auto_trim=False)
    cache.bucket("data", 1).put("written", b"by this process")
    with inject_errors(errno.ENOSPC, ops=("mkdir", "mkdir_at")), pytest.warns(safecache.CacheWarning, match="full"):
        report = maintenance.maybe_trim(cache)
    assert report is not None and report.skipped_reason.startswith("the trim lock could not be taken")
    assert len(entry_files(root)) == 6


def test_rescanning_pointers_never_blocks_on_a_fifo(cache: safecache.Cache, root: Path) -> None:
    """A pointer published after pass 1 (here: a FIFO planted there) is read
    non-blocking, and only if it is a regular file."""
    import threading

    from safecache import _trimmer, _walk

    bucket = cache.bucket("data", 1)
    tree = bucket.trees.get_or_create("t", fill)
    age_tree(tree.path, 2 * HOUR)
    fifo = Path(pointer_path(bucket, "planted"))
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    run = _walk.Run(cache, "trim", _walk.Report(), None)
    (b,) = _walk.bucket_dirs(run)
    done: list[bool] = []

    def rescan() -> None:
        with run.opened(b.parts) as vf:
            assert vf is not None
            _trimmer.Trimmer(run, max_age=None, max_size=None).rescan_pointers(b, vf)
        done.append(True)

    thread = threading.Thread(target=rescan, daemon=True)
    thread.start()
    thread.join(30)
    assert done == [True], "a FIFO at a pointer hung the trim"
    assert tree.manifest.tree_id in b.referenced and fifo.name not in b.pointers  # skipped, never opened


# -- expiry and metadata sidecars -----------------------------------------------------------------
def test_trim_drops_entries_past_their_ttl_even_under_every_limit(
    cache: safecache.Cache, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = cache.bucket("data", 1)
    b.put("short", b"v" * 100, ttl=60)
    b.put("forever", b"v" * 100)
    later = time.time_ns() + 120 * 10**9
    monkeypatch.setattr(time, "time_ns", lambda: later)
    report = maintenance.trim(cache, max_size=10**12, max_age=10**9)
    assert report.removed_entries == 1
    assert not Path(b.path_for("short")).exists()  # type: ignore[arg-type]
    assert Path(b.path_for("forever")).exists()  # type: ignore[arg-type]


def test_trim_removes_the_metadata_sidecar_with_its_entry_and_orphans(
    cache: safecache.Cache, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = cache.bucket("data", 1)
    b.put("kept", b"v", meta=b"m")
    b.set_meta("kept", b"m2")
    b.put("gone", b"v", ttl=1)
    b.set_meta("gone", b"m2")
    orphan = Path(b.path_for("kept")).parent / ("0" * 32 + ".meta")  # type: ignore[arg-type]
    orphan.write_bytes(b"left by a crash")
    later = time.time_ns() + 10 * 10**9  # past the ttl
    monkeypatch.setattr(time, "time_ns", lambda: later)
    maintenance.trim(cache, max_size=10**12, max_age=10**9)
    sidecars = sorted(p.name for p in root.rglob("*.meta"))
    assert sidecars == [Path(b.path_for("kept")).name + ".meta"]  # type: ignore[arg-type]
    assert b.get_with_meta("kept") == (b"v", b"m2")
