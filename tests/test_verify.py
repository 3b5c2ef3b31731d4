"""Verify (``_verify``): every entry and tree read as a reader would, what
is damaged reported and (``repair``) removed, nothing else touched.
Helpers: _maintenance_helpers.
"""

from __future__ import annotations

import json
import os
import random
import stat
from pathlib import Path

import pytest
from _maintenance_helpers import (  # noqa: F401 - cache, root: fixtures
    cache,
    fill,
    flip,
    path_of,
    pointer_path,
    populate,
    root,
    value_for,
)

import safecache
from safecache import maintenance
from safecache._location import READ_ONLY


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
            flip(path, rng.choice([0, 3, 6, 7, 8, 15, 16, 24, 39, 40, 44, 47]), rng)
        elif kind == "version":
            flip(path, 4, rng)  # readers would take it for a newer safecache's entry
        elif kind == "payload":
            flip(path, rng.randrange(48, size), rng)
        elif kind == "empty":
            Path(path).write_bytes(b"")
        else:
            other = paths[keys[(keys.index(key) + 1) % n]]
            assert other is not None
            Path(path).write_bytes(Path(other).read_bytes())
        injected[os.path.relpath(path, root).replace(os.sep, "/")] = kind
    damaged_file = Path(damaged_tree.path, "pkg", "__init__.py")
    damaged_file.write_text("HELLO")  # same size, other content: a hard link edited in place
    pointer = pointer_path(safecache.Cache(root).bucket("data", 1), "bad-pointer")
    flip(pointer, os.path.getsize(pointer) - 1, rng)
    tree_problems = {
        os.path.relpath(pointer_path(safecache.Cache(root).bucket("data", 1), "damaged"), root).replace(os.sep, "/"),
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


def test_verify_leaves_entries_of_a_newer_safecache_alone(cache: safecache.Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    from safecache import _format

    populate(cache, 2)
    with monkeypatch.context() as newer:
        newer.setattr(_format, "VERSION", _format.VERSION + 1)  # a valid header of the next version
        assert cache.bucket("data", 1).put("from a newer safecache", b"value")
    path = path_of(cache, "from a newer safecache")
    with open(path, "rb") as f:
        assert int.from_bytes(f.read(6)[4:6], "little") == _format.VERSION + 1
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


# -- what is not a regular file, and what safecache never makes ------------------------------------------
def _special(path: Path, what: str, outside: Path) -> None:
    path.parent.mkdir(exist_ok=True)
    path.unlink(missing_ok=True)
    if what == "fifo":
        os.mkfifo(path)
    elif what == "symlink":
        path.symlink_to(outside)
    else:
        os.mknod(path, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # /dev/null's


@pytest.mark.parametrize("what", ["fifo", "symlink", "device"])
def test_verify_reports_and_repair_removes_what_is_not_a_regular_file_where_an_entry_pointer_or_counter_should_be(
    cache: safecache.Cache, root: Path, tmp_path: Path, what: str
) -> None:
    if what == "device" and os.geteuid() != 0:
        pytest.skip("making a device node needs root")
    keys = populate(cache, 3)
    bucket = cache.bucket("data", 1)
    bucket.trees.get_or_create("t", fill)
    outside = tmp_path / "outside"
    outside.write_text("precious")
    entry, pointer = Path(path_of(cache, keys[0])), Path(pointer_path(bucket, "t"))
    counter, stamp = root / "stats" / "3", root / "stats" / "trim"
    for path in (entry, pointer, counter, stamp):
        _special(path, what, outside)
    name = {"fifo": "a FIFO", "symlink": "a symlink", "device": "a character device"}[what]
    rel = {str(p.relative_to(root)): kind for p, kind in ((entry, "entry"), (pointer, "tree"), (counter, "counter"), (stamp, "counter"))}
    report = maintenance.verify(cache)
    found = {p["path"]: p for p in report.problems}
    assert {path: p["kind"] for path, p in found.items()} == rel
    assert all(name in str(p["reason"]) and not p["repaired"] for p in found.values())
    report = maintenance.verify(cache, repair=True)
    assert all(p["repaired"] for p in report.problems) and len(report.problems) == 4
    assert not any(os.path.lexists(p) for p in (entry, pointer, counter, stamp))
    assert outside.read_text() == "precious"
    assert maintenance.verify(cache).problems == []
    assert [bucket.get(k) for k in keys[1:]] == [value_for(k) for k in keys[1:]]


def test_verify_leaves_files_safecache_never_makes_and_says_what_to_do(cache: safecache.Cache, root: Path) -> None:
    keys = populate(cache, 2)
    stray = Path(path_of(cache, keys[0])).parent / "notes.txt"
    stray.write_text("mine")
    report = maintenance.verify(cache, repair=True)
    (problem,) = report.problems
    assert problem["reason"] == "unexpected file" and problem["repaired"] is False
    assert "not made by safecache" in str(problem["remedy"]) and stray.read_text() == "mine"


def test_a_corrupt_counter_file_is_reported_and_repair_removes_it(cache: safecache.Cache, root: Path) -> None:
    populate(cache, 2)
    cache.flush()
    shard = next(p for p in (root / "stats").iterdir() if len(p.name) == 1)
    shard.write_text('{"format": 1, "buckets": {"data/v1": {"hits": 1e400}}}')
    (root / "stats" / "trim").write_text("nan\n")
    report = maintenance.verify(cache)
    assert sorted(str(p["reason"]) for p in report.problems) == [
        "counts: not a valid document (torn or foreign)", "trim stamp: not a time"
    ]
    assert all(p["kind"] == "counter" and p["bucket"] == "" for p in report.problems)
    maintenance.verify(cache, repair=True)
    assert not shard.exists() and maintenance.verify(cache).problems == []


def test_verify_accepts_metadata_sidecars(cache: safecache.Cache, root: Path) -> None:
    b = cache.bucket("data", 1)
    b.put("k", b"v", meta=b"m")
    b.set_meta("k", b"m2")
    report = maintenance.verify(cache)
    assert report.problems == []
