"""Maintenance: trim, prune, clean, verify and info (safecache.maintenance).

Ages are set with os.utime, never waited for.  The tests that say "while N
processes use the cache" run real forked processes that get and put for a
couple of seconds and report any exception that reached them.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import random
import time
import traceback
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import _workers
import pytest

import safecache
from safecache import _locks, _stats, _trim, maintenance
from safecache._location import READ_ONLY
from safecache.testing import holding, inject_errors, windows_semantics

ctx = multiprocessing.get_context("fork")

DAY = 86400.0
HOUR = 3600.0

#: How the processes that use the cache run: on POSIX, or under the Windows
#: emulator with 2 % of their operations denied as an antivirus would.  The
#: maintaining process runs under the same Windows rules, without random
#: denials, so what it must have removed is deterministic.
PLATFORMS = {
    "posix": None,
    "windows": {"transient_denials": 0.02, "seed": 4},
}


# -- helpers ---------------------------------------------------------------------------
def age(path: str | os.PathLike[str], seconds: float) -> None:
    """Make ``path`` look last used ``seconds`` ago."""
    t = time.time() - seconds
    os.utime(path, (t, t), follow_symlinks=False)


def age_tree(path: str | os.PathLike[str], seconds: float) -> None:
    """Age a directory and everything in it."""
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            age(os.path.join(dirpath, name), seconds)
    age(path, seconds)


def fill(path: str, text: str = "hello") -> None:
    os.makedirs(os.path.join(path, "pkg"))
    Path(path, "pkg", "__init__.py").write_text(text)
    Path(path, "data.bin").write_bytes(text.encode() * 100)


def entry_files(root: Path) -> list[Path]:
    """Every entry file (32 hex digits, in its shard) under buckets/."""
    out = []
    for path in (root / "buckets").glob("*/*/??/*"):
        if len(path.name) == 32 and path.parent.name == path.name[:2]:
            out.append(path)
    return out


def walk_size(root: Path) -> int:
    """What the cache holds, by a real walk: entries, tree pointers and
    tree files (not temp files, not Windows' delete-pending names)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root / "buckets"):
        for name in filenames:
            if name.endswith(".tmp") or ".~delete-pending-" in name:
                continue
            total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def totals_size(root: Path) -> tuple[int, int]:
    totals = _stats.read_totals(str(root))
    return (
        sum(int(d["size"]) for d in totals.values()),  # type: ignore[call-overload]
        sum(int(d["entries"]) for d in totals.values()),  # type: ignore[call-overload]
    )


def value_for(key: str, size: int = 1000) -> bytes:
    return (key.encode() + b"|") * (size // (len(key) + 1)) + b"!"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(root: Path) -> Iterator[safecache.Cache]:
    with safecache.Cache(root, auto_trim=False) as c:
        yield c


def populate(cache: safecache.Cache, n: int, *, name: str = "data", version: int = 1, size: int = 1000,
             kind: str = "built") -> list[str]:
    bucket = cache.bucket(name, version)
    keys = [f"{name}-{version}-{i}" for i in range(n)]
    for key in keys:
        assert bucket.put(key, value_for(key, size), kind=kind)
    return keys


def path_of(cache: safecache.Cache, key: str, name: str = "data", version: int = 1) -> str:
    path = cache.bucket(name, version).path_for(key)
    assert path is not None
    return path


# -- processes ---------------------------------------------------------------------------------
def _hold_tree(root: str, name: str, key: str, ready: Any, release: Any) -> None:
    """Hold a tree (``with tree:``) until told to let go."""
    warnings.simplefilter("ignore")
    cache = safecache.Cache(root, auto_trim=False)
    tree = cache.bucket(name, 1).trees.get(key)
    assert tree is not None
    with tree:
        ready.set()
        release.wait(30)


def _hold_lock(path: str, ready: Any, release: Any) -> None:
    with _locks.FileLock(path, timeout=5):
        ready.set()
        release.wait(30)


class Holder:
    """A child process that holds something until the block ends."""

    def __init__(self, target: Any, *args: Any) -> None:
        self.ready = ctx.Event()
        self.release = ctx.Event()
        self.proc = ctx.Process(target=target, args=(*args, self.ready, self.release))

    def __enter__(self) -> Holder:  # noqa: PYI034 - typing.Self needs Python 3.11
        self.proc.start()
        assert self.ready.wait(20), "the holder did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.proc.join(20)
        assert self.proc.exitcode == 0


def _user(root: str, n: int, seconds: float, prefilled: list[str], trees: bool, sizes: list[int],
          windows: dict[str, Any] | None, ready: Any, queue: Any) -> None:
    """Get and put own and shared keys (and, with ``trees``, build, place and
    hold trees) for ``seconds``; report every exception and every wrong
    value."""
    result: dict[str, Any] = {"n": n, "ops": 0, "hits": 0, "problems": []}
    try:
        if windows is not None:
            from safecache.testing import enable_windows_semantics

            enable_windows_semantics(**windows)
        warnings.simplefilter("ignore")  # degraded operations warn; only exceptions count here
        import tempfile

        rng = random.Random(n)
        cache = safecache.Cache(root, retry_budget=0.2, auto_trim=False)
        bucket = cache.bucket("data", 1)
        own = [f"w{n}-{k}" for k in range(10)]
        shared = [f"s{k}" for k in range(5)]
        dest = tempfile.mkdtemp(prefix=f"place-{n}-")
        ready.put(n)
        deadline = time.monotonic() + seconds
        seq = 0
        while time.monotonic() < deadline:
            result["ops"] += 1
            r = rng.random()
            if r < 0.35:
                key = rng.choice(own + shared)
                seq += 1
                bucket.put(key, _workers.make_value(key, n, seq, rng.choice(sizes)),
                           kind=rng.choice(["built", "fetched"]))
            elif r < 0.7:
                key = rng.choice(own + shared)
                value = bucket.get(key)
                if value is not None:
                    result["hits"] += 1
                    problem = _workers.check_value(key, value)
                    if problem:
                        result["problems"].append(problem)
            elif r < 0.9 or not trees:
                key = rng.choice(prefilled)
                value = bucket.get(key)
                if value is not None and value not in (value_for(key), value_for(key, 2000)):
                    result["problems"].append(f"wrong bytes for prefilled {key}")
            else:
                key = f"t{n}-{rng.randrange(3)}"
                tree = bucket.trees.get_or_create(
                    key, lambda p, key=key: fill(p, key), kind=rng.choice(["built", "fetched"])
                )
                report = tree.place(dest)
                if report.complete and Path(dest, "pkg", "__init__.py").read_text() != key:
                    result["problems"].append(f"tree {key} placed wrong content")
                with tree:
                    pass
        cache.close()
    except BaseException:  # noqa: BLE001 - the point of the test: nothing may escape
        result["problems"].append("exception reached the caller:\n" + traceback.format_exc())
    queue.put(result)


class Users:
    """``n`` processes running :func:`_user` for ``seconds``."""

    def __init__(self, root: Path, n: int, seconds: float, prefilled: list[str], *, trees: bool = False,
                 sizes: tuple[int, ...] = (10, 500, 70_000), windows: dict[str, Any] | None = None) -> None:
        self.ready = ctx.Queue()
        self.queue = ctx.Queue()
        self.seconds = seconds
        self.procs = [
            ctx.Process(
                target=_user,
                args=(str(root), i, seconds, prefilled, trees, list(sizes), windows, self.ready, self.queue),
            )
            for i in range(n)
        ]

    def __enter__(self) -> Users:  # noqa: PYI034 - typing.Self needs Python 3.11
        for p in self.procs:
            p.start()
        for _ in self.procs:
            self.ready.get(timeout=30)
        return self

    def results(self) -> list[dict[str, Any]]:
        results = [self.queue.get(timeout=self.seconds + 60) for _ in self.procs]
        for p in self.procs:
            p.join(30)
            assert p.exitcode == 0
        return results

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            if p.is_alive():
                p.join(self.seconds + 30)


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
        with windows_semantics() if windows is not None else _nothing():
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
    age(_pointer_path(bucket, "old"), 2 * DAY)
    report = maintenance.trim(cache, max_size=walk_size(root) - 1)
    # The old tree was used before every entry: it goes first, whole.
    assert report.removed_trees == 1 and 0 < report.removed_entries < 5
    assert bucket.trees.get("old") is None and not os.path.exists(old_tree.path)
    assert bucket.trees.get("new") is not None and os.path.isdir(new_tree.path)


def _pointer_path(bucket: safecache.Bucket, key: str) -> str:
    from safecache import _keys

    return bucket.trees._pointer(_keys.key_digest(key))


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
        age(_pointer_path(bucket, "stale"), 6 * DAY)
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
    age(_pointer_path(bucket, "held"), 60 * DAY)
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
    os.unlink(_pointer_path(bucket, "orphan-old"))  # committed, but the pointer was never published
    os.unlink(_pointer_path(bucket, "orphan-young"))
    age_tree(old_orphan.path, 2 * HOUR)
    referenced = bucket.trees.get_or_create("kept", fill)
    age_tree(referenced.path, 2 * HOUR)

    pointer_temp = Path(_pointer_path(bucket, "kept") + ".99-3.tmp")
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
    with open(_pointer_path(bucket, "corrupt"), "r+b") as f:
        f.truncate(60)
    report = maintenance.verify(cache)
    assert sorted(p["reason"] for p in report.problems) == ["pointer: wrong-length", "tree directory missing"]
    report = maintenance.trim(cache)
    assert report.removed_entries == 2 and report.removed_trees == 0
    assert not os.path.exists(_pointer_path(bucket, "dangling"))
    assert not os.path.exists(_pointer_path(bucket, "corrupt"))
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
    assert abs(float(stamp.read_text()) - time.time()) < 60
    assert maintenance.info(cache)["last_trim"] is not None
    stamp.write_text(f"{time.time() - 2 * DAY:.0f}\n")
    first = maintenance.maybe_trim(cache)
    assert first is not None and first.skipped_reason == ""  # the interval has passed
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


def test_info_reads_the_counters_and_never_walks_entries(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 30)
    bucket = cache.bucket("data", 1)
    for k in keys[:10]:
        bucket.get(k)
    bucket.get("missing")
    cache.flush()
    bucket.get("missing-too")  # not flushed: info adds this process's counters
    with inject_errors(errno.EIO, ops=("scandir",), path_contains=os.sep + "nowhere" + os.sep) as faults:
        info = maintenance.info(cache)
    assert not [c for c in faults.calls if c.op in ("scandir", "listdir")]
    assert not [c for c in faults.calls if c.path and os.sep + "buckets" + os.sep in c.path]
    row = info["buckets"]["data/v1"]  # type: ignore[index]
    assert row["entries"] == 30 and row["hits"] == 10 and row["misses"] == 2
    assert row["hit_rate"] == pytest.approx(10 / 12)
    assert row["size"] == walk_size(root)
    assert info["size"] == row["size"] and info["path"] == str(root) and info["state"] == "ready"
    json.dumps(info)


def test_trim_permission_error_is_a_warning_in_lenient_mode(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 5)
        for k in keys:
            age(path_of(c, k), 60 * DAY)
    cache = safecache.Cache(root, auto_trim=False)
    with (
        inject_errors(errno.EACCES, ops=("unlink",), path_contains=os.sep + "buckets" + os.sep),
        pytest.warns(safecache.CacheWarning, match="permission"),
    ):
        report = maintenance.trim(cache)
    assert report.removed_entries == 0
    assert len(entry_files(root)) == 5
    errors = maintenance.info(cache)["buckets"]["data/v1"]["errors"]  # type: ignore[index]
    assert errors == {"permission": 5}


def test_trim_permission_error_raises_in_strict_mode(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 5)
        for k in keys:
            age(path_of(c, k), 60 * DAY)
    cache = safecache.Cache(root, strict=True, auto_trim=False)
    with (
        inject_errors(errno.EACCES, ops=("unlink",), path_contains=os.sep + "buckets" + os.sep),
        pytest.raises(safecache.CachePermissionError),
    ):
        maintenance.trim(cache)
    # The trim lock was released: the next trim runs.
    assert maintenance.trim(cache).removed_entries == 5


def test_files_vanishing_under_a_trim_are_already_gone(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 10)
    for k in keys:
        age(path_of(cache, k), 60 * DAY)
    with (
        inject_errors(errno.ENOENT, ops=("unlink",), path_contains=os.sep + "buckets" + os.sep, after=True),
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
        with windows_semantics() if windows is not None else _nothing():
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


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


# -- verify ------------------------------------------------------------------------------------------------
def _flip(path: str, offset: int, rng: random.Random) -> None:
    data = bytearray(Path(path).read_bytes())
    data[offset] ^= 1 << rng.randrange(8)
    Path(path).write_bytes(bytes(data))


def test_verify_repair_finds_every_injected_corruption_among_10000_entries(root: Path, stress: bool) -> None:
    rng = random.Random(2024)
    n = 50_000 if stress else 10_000
    with safecache.Cache(root, auto_trim=False) as c:
        bucket = c.bucket("data", 1)
        keys = [f"k{i}" for i in range(n)]
        for i, key in enumerate(keys):
            size = 100_000 if i % 1000 == 0 else rng.randrange(0, 400)  # a few take the large-entry path
            assert bucket.put(key, rng.randbytes(size), kind=rng.choice(["built", "fetched"]))
        good_tree = bucket.trees.get_or_create("good", fill)
        damaged_tree = bucket.trees.get_or_create("damaged", fill)
        bad_pointer_tree = bucket.trees.get_or_create("bad-pointer", fill)
        paths = {key: bucket.path_for(key) for key in keys}

    victims = rng.sample(keys, 100)
    # Make sure the large entries get their share of damage.
    victims[:2] = [keys[0], keys[1000]]
    injected: dict[str, str] = {}
    kinds = ["truncate", "header", "version", "payload", "empty", "wrong-key"]
    for i, key in enumerate(victims):
        path = paths[key]
        assert path is not None
        size = os.path.getsize(path)
        kind = kinds[i % len(kinds)]
        if kind == "payload" and size == 48:
            kind = "header"
        if kind == "truncate":
            with open(path, "r+b") as f:
                f.truncate(rng.randrange(1, size))
        elif kind == "header":
            _flip(path, rng.choice([0, 3, 6, 7, 8, 15, 16, 24, 39, 40, 44, 47]), rng)
        elif kind == "version":
            _flip(path, 4, rng)  # readers would take it for a newer safecache's entry
        elif kind == "payload":
            _flip(path, rng.randrange(48, size), rng)
        elif kind == "empty":
            Path(path).write_bytes(b"")
        else:
            other = paths[keys[(keys.index(key) + 1) % n]]
            assert other is not None
            Path(path).write_bytes(Path(other).read_bytes())
        injected[os.path.relpath(path, root).replace(os.sep, "/")] = kind
    damaged_file = Path(damaged_tree.path, "pkg", "__init__.py")
    damaged_file.write_text("HELLO")  # same size, other content: a hard link edited in place
    pointer = _pointer_path(safecache.Cache(root).bucket("data", 1), "bad-pointer")
    _flip(pointer, os.path.getsize(pointer) - 1, rng)
    tree_problems = {
        os.path.relpath(_pointer_path(safecache.Cache(root).bucket("data", 1), "damaged"), root).replace(os.sep, "/"),
        os.path.relpath(pointer, root).replace(os.sep, "/"),
    }

    cache = safecache.Cache(root, auto_trim=False)
    report = maintenance.verify(cache, repair=True)
    found = {p["path"]: p for p in report.problems}
    assert set(found) == set(injected) | tree_problems
    assert len(report.problems) == len(found)
    assert all(p["repaired"] for p in report.problems)
    assert {p["kind"] for p in report.problems if p["path"] in tree_problems} == {"tree"}
    assert "content" in str(found[min(tree_problems - {os.path.relpath(pointer, root).replace(os.sep, "/")})]["reason"])
    # Exactly the corrupt files went; every other entry still reads back.
    bucket = cache.bucket("data", 1)
    for key in keys:
        path = paths[key]
        assert path is not None
        rel = os.path.relpath(path, root).replace(os.sep, "/")
        assert os.path.exists(path) == (rel not in injected)
    survivors = [k for k in keys if os.path.relpath(str(paths[k]), root).replace(os.sep, "/") not in injected]
    assert all(bucket.get(k) is not None for k in rng.sample(survivors, 500))
    assert not os.path.exists(damaged_tree.path)
    assert bucket.trees.get("good") is not None and os.path.isdir(good_tree.path)
    assert bucket.trees.get("damaged") is None and bucket.trees.get("bad-pointer") is None
    assert os.path.isdir(bad_pointer_tree.path)  # unknown to verify; the next trim reclaims it
    again = maintenance.verify(cache)
    assert again.problems == []
    assert maintenance.info(cache)["buckets"]["data/v1"]["corrupt_removed"] == 102  # type: ignore[index]


def test_verify_without_repair_reports_and_touches_nothing(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 5)
    Path(path_of(cache, keys[0])).write_bytes(b"")
    report = maintenance.verify(cache)
    assert [(p["kind"], p["reason"], p["repaired"], p["bucket"]) for p in report.problems] == [
        ("entry", "empty", False, "data/v1")
    ]
    assert os.path.exists(path_of(cache, keys[0]))
    json.dumps(report.as_dict())


def test_verify_leaves_entries_of_a_newer_safecache_alone(cache: safecache.Cache) -> None:
    from safecache import _format

    keys = populate(cache, 2)
    path = path_of(cache, keys[0])
    data = bytearray(Path(path).read_bytes())
    data[4:6] = (2).to_bytes(2, "little")
    data[44:48] = (_format.crc32(bytes(data[:44])) & 0xFFFFFFFF).to_bytes(4, "little")  # a valid version-2 header
    Path(path).write_bytes(bytes(data))
    assert maintenance.verify(cache, repair=True).problems == []
    assert os.path.exists(path)


def test_verify_of_a_read_only_cache_reports_without_repairing(root: Path) -> None:
    with safecache.Cache(root, auto_trim=False) as c:
        keys = populate(c, 3)
        Path(path_of(c, keys[0])).write_bytes(b"junk")
    cache = safecache.Cache(root, auto_trim=False)
    cache.state = READ_ONLY  # as opened on a root this user cannot write
    report = maintenance.verify(cache, repair=True)
    assert len(report.problems) == 1 and not report.problems[0]["repaired"]
    assert "read-only" in report.skipped_reason
    assert maintenance.trim(cache).skipped_reason.startswith("the cache is read-only")
    strict = safecache.Cache(root, strict=True, auto_trim=False)
    strict.state = READ_ONLY
    with pytest.raises(safecache.CacheReadOnlyError):
        maintenance.clean(strict)


def test_a_disabled_cache_has_nothing_to_maintain(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "c", enabled=False)
    assert maintenance.list_buckets(cache) == []
    assert maintenance.trim(cache).skipped_reason.startswith("the cache is disabled")
    assert maintenance.maybe_trim(cache) is None
    assert maintenance.verify(cache).problems == []
    info = maintenance.info(cache)
    assert info["size"] == 0 and info["buckets"] == {}


def test_report_as_dict_is_json(cache: safecache.Cache) -> None:
    populate(cache, 3)
    report = maintenance.trim(cache, max_size=1)
    data = report.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {
        "removed_entries", "removed_trees", "removed_temp", "freed_bytes", "kept_in_use", "problems", "skipped_reason"
    }
