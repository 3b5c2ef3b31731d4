"""Trees: committed atomically, computed once, placed by link mode, removable
while in use."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import signal
import time
import warnings
from pathlib import Path
from typing import Any

import pytest

import safecache
from safecache import _fs, _keys, _locks, _manifest, _osops, _tree
from safecache.testing import inject_errors, windows_semantics

ctx = multiprocessing.get_context("fork")


def fill(path: str, files: int = 20, big: int = 0, tag: str = "") -> None:
    """Write a small tree: nested directories, some files, one symlink."""
    root = Path(path)
    (root / "pkg" / "sub").mkdir(parents=True)
    for i in range(files):
        (root / "pkg" / ("sub" if i % 2 else "") / f"m{i}.py").write_text(f"# module {i} {tag}\n" * (i + 1))
    if big:
        with open(root / "pkg" / "big.bin", "wb") as f:
            block = os.urandom(1 << 20)
            for _ in range(big):
                f.write(block)
    (root / "pkg" / "data.txt").write_text("data")
    os.chmod(root / "pkg" / "data.txt", 0o640)
    os.symlink("data.txt", root / "pkg" / "link")


def blake2b_128(path: Path) -> str:
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:  # follows a placed symlink, as a reader would
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def placed_matches(tree: _tree.Tree, dest: Path) -> list[str]:
    """Every manifest file exists in ``dest`` with its size and content."""
    bad = []
    for rel, size, _mode, digest in tree.manifest.files:
        path = dest / rel
        if not path.is_file() or path.stat().st_size != size or blake2b_128(path) != digest:
            bad.append(rel)
    for rel, target in tree.manifest.symlinks:
        link = dest / rel
        if link.is_symlink():
            if os.readlink(link) != target:
                bad.append(rel)
        # Where symlinks cannot be made (Windows without the privilege) the
        # file the link points at is placed instead.
        elif blake2b_128(link) != blake2b_128(Path(tree.path, rel).parent / target):
            bad.append(rel)
    return bad


@pytest.fixture
def bucket(tmp_path: Path) -> safecache.Bucket:
    return safecache.Cache(tmp_path / "cache").bucket("wheels", version=1)


def test_build_commits_a_tree_with_a_manifest(bucket: safecache.Bucket) -> None:
    with bucket.trees.build("pkg-1.0", kind="fetched") as b:
        fill(b.path)
    tree = b.tree
    assert tree is not None and not tree.ephemeral and tree.kind == "fetched"
    assert [f[0] for f in tree.manifest.files][:2] == ["pkg/data.txt", "pkg/m0.py"]
    assert tree.manifest.dirs == ["pkg", "pkg/sub"]
    assert tree.manifest.symlinks == [("pkg/link", "data.txt")]
    assert ("pkg/data.txt", 4, 0o640) == tree.manifest.files[0][:3]
    again = bucket.trees.get("pkg-1.0")
    assert again is not None and again.path == tree.path and again.manifest.to_bytes() == tree.manifest.to_bytes()
    assert tree.verify() == []


def test_missing_tree_is_none(bucket: safecache.Bucket) -> None:
    assert bucket.trees.get("absent") is None
    assert "absent" not in bucket.trees


def test_a_failing_build_commits_nothing_and_leaves_nothing(bucket: safecache.Bucket) -> None:
    with pytest.raises(RuntimeError):
        with bucket.trees.build("k") as b:
            fill(b.path)
            raise RuntimeError("download failed")
    assert bucket.trees.get("k") is None
    objects = Path(bucket.directory, "tree-objects")  # type: ignore[arg-type]
    assert not objects.exists() or list(objects.iterdir()) == []


def test_put_commits_a_copy_of_an_existing_directory(bucket: safecache.Bucket, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fill(str(src))
    tree = bucket.trees.put("k", src)
    assert (src / "pkg" / "m0.py").exists()  # the source is not consumed
    dest = tmp_path / "dest"
    tree.place(dest, mode="copy")
    assert placed_matches(tree, dest) == []


def test_second_commit_of_a_key_uses_the_first_tree_and_removes_its_own(bucket: safecache.Bucket) -> None:
    with bucket.trees.build("k") as first:
        fill(first.path, tag="first")
    with bucket.trees.build("k") as second:
        fill(second.path, tag="second")
    assert first.tree is not None and second.tree is not None
    assert second.tree.path == first.tree.path
    assert len(list(Path(bucket.directory, "tree-objects").iterdir())) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["copy", "hardlink", "symlink", "auto", "clone"])
def test_place_by_each_mode_reproduces_the_tree(bucket: safecache.Bucket, tmp_path: Path, mode: str) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    dest = tmp_path / "dest"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallbacks are reported; here they are expected
        report = tree.place(dest, mode=mode)
    assert report.complete and report.placed == len(tree.manifest.files) + len(tree.manifest.symlinks)
    assert placed_matches(tree, dest) == []
    first = tree.manifest.files[0][0]
    same_inode = os.stat(dest / first).st_ino == os.stat(os.path.join(tree.path, first)).st_ino
    if mode == "hardlink" or (mode in ("auto", "clone") and "hardlink" in report.used):
        assert same_inode
    if mode == "copy":
        assert not same_inode and report.used == {"copy": len(tree.manifest.files)}
    if mode == "symlink" and "symlink" in report.used:
        assert os.path.islink(dest / first)


def test_place_into_a_destination_with_some_files_replaces_them(bucket: safecache.Bucket, tmp_path: Path) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    dest = tmp_path / "dest"
    (dest / "pkg").mkdir(parents=True)
    (dest / "pkg" / "m0.py").write_text("old contents")
    (dest / "pkg" / "mine.txt").write_text("not in the tree")
    report = tree.place(dest, mode="copy")
    assert report.replaced == 1
    assert placed_matches(tree, dest) == []
    assert (dest / "pkg" / "mine.txt").read_text() == "not in the tree"


def test_place_skip_leaves_existing_files(bucket: safecache.Bucket, tmp_path: Path) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    dest = tmp_path / "dest"
    (dest / "pkg").mkdir(parents=True)
    (dest / "pkg" / "m0.py").write_text("keep me")
    report = tree.place(dest, mode="copy", on_existing="skip")
    assert report.skipped == 1 and (dest / "pkg" / "m0.py").read_text() == "keep me"


def test_place_error_refuses_before_placing_anything(bucket: safecache.Bucket, tmp_path: Path) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    dest = tmp_path / "dest"
    (dest / "pkg").mkdir(parents=True)
    (dest / "pkg" / "m0.py").write_text("x")
    with pytest.raises(FileExistsError):
        tree.place(dest, on_existing="error")
    assert sorted(p.name for p in (dest / "pkg").iterdir()) == ["m0.py"]


def test_verify_detects_a_hardlinked_file_edited_in_place(bucket: safecache.Bucket, tmp_path: Path) -> None:
    """The hazard of hard links: an installed file edited in place edits the cache."""
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    dest = tmp_path / "venv"
    tree.place(dest, mode="hardlink")
    with open(dest / "pkg" / "sub" / "m1.py", "r+") as f:  # in place, same inode
        f.write("X")
    assert tree.verify() == [("pkg/sub/m1.py", "content")]


def test_verify_reports_missing_and_unexpected_files(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    os.unlink(os.path.join(tree.path, "pkg", "data.txt"))
    Path(tree.path, "pkg", "extra").write_text("x")
    assert sorted(tree.verify()) == [("pkg/data.txt", "missing"), ("pkg/extra", "unexpected")]


def test_manifest_paths_cannot_escape(bucket: safecache.Bucket) -> None:
    for bad in ["../x", "/abs", "a/../../b", "a\\b", ""]:
        with pytest.raises(ValueError):
            _manifest.check_relative(bad)


def test_corrupt_pointer_is_a_miss(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    pointer = Path(bucket.trees._pointer(__import__("safecache._keys")._keys.key_digest("k")))
    raw = bytearray(pointer.read_bytes())
    raw[-3] ^= 0x55
    pointer.write_bytes(bytes(raw))
    assert bucket.trees.get("k") is None
    assert not pointer.exists()
    assert os.path.isdir(tree.path)  # the tree itself is left for maintenance


def test_disabled_cache_still_builds_an_ephemeral_tree(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c", enabled=False).bucket("wheels")
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    assert tree.ephemeral
    dest = tmp_path / "dest"
    tree.place(dest, mode="copy")
    assert placed_matches(tree, dest) == []
    where = tree.path
    tree.close()
    assert not os.path.exists(where)
    assert not (tmp_path / "c").exists()


def test_delete_removes_pointer_and_tree(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    assert bucket.trees.delete("k") is True
    assert bucket.trees.get("k") is None
    assert not os.path.exists(tree.path)
    assert bucket.trees.delete("k") is False


def test_delete_leaves_a_tree_another_holder_is_using(bucket: safecache.Bucket, tmp_path: Path) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    with tree:  # pinned, as during a placement
        assert bucket.trees.delete("k") is True
        assert bucket.trees.get("k") is None  # new readers miss at once
        assert os.path.isdir(tree.path)  # the holder keeps its tree
        report = tree.place(tmp_path / "dest", mode="copy")
        assert report.complete


def test_placing_a_tree_removed_before_placement_is_a_clean_miss(bucket: safecache.Bucket, tmp_path: Path) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    bucket.trees.delete("k")
    report = tree.place(tmp_path / "dest")
    assert not report.complete and report.placed == 0
    assert not (tmp_path / "dest").exists()


# -- many processes ---------------------------------------------------------------------------
def _tree_worker(root: str, runs: str, dest: str, windows: dict[str, Any] | None, start: Any, queue: Any) -> None:
    try:
        warnings.simplefilter("ignore")
        if windows is not None:
            from safecache.testing import enable_windows_semantics

            enable_windows_semantics(**windows)
        bucket = safecache.Cache(root).bucket("wheels", version=1)

        def factory(path: str) -> None:
            with open(runs, "a") as f:
                f.write(f"{os.getpid()}\n")
            fill(path, files=1000, big=50)

        start.wait()
        tree = bucket.trees.get_or_create("numpy-2.0", factory, kind="fetched")
        report = tree.place(dest)
        queue.put({"bad": placed_matches(tree, Path(dest)), "complete": report.complete, "used": report.used,
                   "ephemeral": tree.ephemeral, "id": tree.manifest.tree_id})
    except BaseException as exc:  # noqa: BLE001
        import traceback

        queue.put({"error": traceback.format_exc(), "exc": repr(exc)})


@pytest.mark.parametrize("platform", ["posix", "windows"])
def test_eight_processes_ask_for_the_same_missing_tree(tmp_path: Path, platform: str) -> None:
    """The factory (a 50 MB file and 1,000 small files) runs once; all eight
    place the tree into their own destination and every file matches."""
    root, runs = str(tmp_path / "cache"), str(tmp_path / "runs")
    start, queue = ctx.Event(), ctx.Queue()
    windows = {"seed": 3} if platform == "windows" else None
    procs = [
        ctx.Process(target=_tree_worker, args=(root, runs, str(tmp_path / f"dest{i}"), windows, start, queue))
        for i in range(8)
    ]
    for p in procs:
        p.start()
    start.set()
    results = [queue.get(timeout=300) for _ in procs]
    for p in procs:
        p.join(60)
    assert [r.get("error") for r in results] == [None] * 8
    assert len(Path(runs).read_text().split()) == 1
    assert all(r["complete"] and r["bad"] == [] and not r["ephemeral"] for r in results)
    assert len({r["id"] for r in results}) == 1


def _crashing_builder(root: str, key: str, stage: str) -> None:
    warnings.simplefilter("ignore")
    bucket = safecache.Cache(root).bucket("wheels", version=1)
    if stage == "commit":
        # Die inside the commit: after the rename, before the pointer.
        original = bucket.trees._pointer

        def pointer_then_die(digest: str) -> str:
            os.kill(os.getpid(), signal.SIGKILL)
            return original(digest)

        bucket.trees._pointer = pointer_then_die  # type: ignore[method-assign]
    bucket.trees.get_or_create(key, lambda path: fill(path, files=300))


def test_builders_killed_mid_build_and_mid_commit_never_expose_a_partial_tree(tmp_path: Path, stress: bool) -> None:
    import random

    root = str(tmp_path / "cache")
    rng = random.Random(11694)
    rounds = 200 if stress else 40
    for i in range(rounds):
        stage = "commit" if i % 4 == 0 else "build"
        p = ctx.Process(target=_crashing_builder, args=(root, f"k{i % 5}", stage))
        p.start()
        if stage == "build":
            time.sleep(rng.uniform(0, 0.03))
            os.kill(p.pid, signal.SIGKILL)  # type: ignore[arg-type]
        p.join(60)
    bucket = safecache.Cache(root).bucket("wheels", version=1)
    seen = 0
    for i in range(5):
        tree = bucket.trees.get(f"k{i}")
        if tree is not None:
            seen += 1
            assert tree.verify() == []  # a visible tree is always whole
    objects = Path(root, "buckets", "wheels", "v1", "tree-objects")
    leftovers = [p.name for p in objects.iterdir() if len(p.name) != 32]
    # Killed builders leave staging directories ("<id>.tmp") or unreferenced
    # trees, which maintenance reclaims; a fresh process works regardless.
    assert all(name.endswith(".tmp") for name in leftovers)
    tree = bucket.trees.get_or_create("fresh", lambda path: fill(path))
    assert tree.verify() == [] and seen >= 0


def _placer(root: str, dest: str, stop: Any, queue: Any) -> None:
    warnings.simplefilter("ignore")
    bucket = safecache.Cache(root).bucket("wheels", version=1)
    outcomes = []
    try:
        i = 0
        while not stop.is_set() or "placed" not in outcomes:
            i += 1
            tree = bucket.trees.get("k")
            if tree is None:
                outcomes.append("miss")
                continue
            report = tree.place(f"{dest}/{i}", mode="copy")
            if report.complete:
                outcomes.append("bad" if placed_matches(tree, Path(dest, str(i))) else "placed")
            else:
                outcomes.append("missing-before-start" if report.placed == 0 else "PARTIAL")
        queue.put(outcomes)
    except BaseException:  # noqa: BLE001
        import traceback

        queue.put(["exception: " + traceback.format_exc()])


def test_removal_racing_placement_never_breaks_the_placer(tmp_path: Path) -> None:
    """uv #11694: pruning a tree a running process was using broke it.  Here
    a remover deletes and recreates the tree while two processes place it:
    each placement completes from the tree it started with, or is a clean miss."""
    root = str(tmp_path / "cache")
    bucket = safecache.Cache(root).bucket("wheels", version=1)
    bucket.trees.get_or_create("k", lambda path: fill(path, files=200))
    queue, stop = ctx.Queue(), ctx.Event()
    placers = [ctx.Process(target=_placer, args=(root, str(tmp_path / f"d{i}"), stop, queue)) for i in range(2)]
    for p in placers:
        p.start()
    kept = 0
    for _ in range(30):
        time.sleep(0.02)  # let the placers find the tree, then pull it from under them
        tree = bucket.trees.get("k")
        bucket.trees.delete("k")
        kept += tree is not None and os.path.isdir(tree.path)  # in use: left for maintenance
        bucket.trees.get_or_create("k", lambda path: fill(path, files=200))
    stop.set()
    assert kept > 0  # the race happened: removals found trees in use and left them
    outcomes = [o for _ in placers for o in queue.get(timeout=300)]
    for p in placers:
        p.join(60)
    assert not [o for o in outcomes if o not in ("placed", "miss", "missing-before-start")], outcomes
    assert "placed" in outcomes


def test_trees_under_windows_semantics(tmp_path: Path) -> None:
    with windows_semantics():
        bucket = safecache.Cache(tmp_path / "c").bucket("wheels")
        tree = bucket.trees.get_or_create("k", lambda path: fill(path))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = tree.place(tmp_path / "dest")
        assert report.complete and placed_matches(tree, tmp_path / "dest") == []
        assert bucket.trees.delete("k")
        assert not os.path.exists(tree.path)


# -- through the fs layer -------------------------------------------------------------------
def test_put_copies_symlinks_as_symlinks_with_modes_and_mtimes(bucket: safecache.Bucket, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    fill(str(src))
    os.utime(src / "pkg" / "data.txt", (1_000_000_000, 1_000_000_000))
    tree = bucket.trees.put("k", src)
    assert os.readlink(os.path.join(tree.path, "pkg", "link")) == "data.txt"
    copied = os.stat(os.path.join(tree.path, "pkg", "data.txt"))
    assert (copied.st_mode & 0o777, copied.st_mtime) == (0o640, 1_000_000_000)
    assert tree.verify() == []


def test_put_of_a_directory_holding_a_fifo_raises_and_commits_nothing(bucket: safecache.Bucket, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.mkfifo(src / "pipe")
    with pytest.raises(OSError):
        bucket.trees.put("k", src)
    assert bucket.trees.get("k") is None
    assert list(Path(bucket.directory, "tree-objects").iterdir()) == []  # type: ignore[arg-type]


def test_an_ephemeral_tree_lives_alone_in_a_private_temp_directory(tmp_path: Path) -> None:
    import tempfile

    bucket = safecache.Cache(tmp_path / "c", enabled=False).bucket("wheels")
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    private = os.path.dirname(tree.path)
    assert os.path.dirname(private) == tempfile.gettempdir()
    assert os.stat(private).st_mode & 0o777 == 0o700
    assert os.listdir(private) == [os.path.basename(tree.path)]
    tree.close()
    assert not os.path.exists(private)


def test_ephemeral_trees_are_made_through_the_fs_layer(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c", enabled=False).bucket("wheels")
    with inject_errors(errno.ENOSPC, ops=("mkdir",), path_contains="safecache-tree-") as faults:
        with pytest.raises(OSError):
            bucket.trees.get_or_create("k", lambda path: fill(path))
    assert faults.fired >= 1


def test_a_failed_build_in_a_private_directory_leaves_nothing(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c", enabled=False).bucket("wheels")
    with pytest.raises(RuntimeError):
        with bucket.trees.build("k") as b:
            fill(b.path)
            raise RuntimeError("download failed")
    assert not os.path.exists(os.path.dirname(b.path))


def test_a_commit_that_cannot_rename_hands_out_an_ephemeral_copy(bucket: safecache.Bucket, tmp_path: Path) -> None:
    # Every rename of the staging directory fails: into tree-objects, and
    # into the private temp directory too, so the staged files are copied.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with inject_errors(errno.EIO, ops=("rename",), path_contains=".tmp") as faults:
            tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    assert faults.fired == 2
    assert tree.ephemeral and os.readlink(os.path.join(tree.path, "pkg", "link")) == "data.txt"
    assert list(Path(bucket.directory, "tree-objects").iterdir()) == []  # type: ignore[arg-type]
    assert bucket.trees.get("k") is None
    assert tree.verify() == []
    tree.close()


def test_ephemeral_trees_under_windows_semantics(tmp_path: Path) -> None:
    with windows_semantics():
        bucket = safecache.Cache(tmp_path / "c", enabled=False).bucket("wheels")
        with bucket.trees.get_or_create("k", lambda path: fill(path)) as tree:
            report = tree.place(tmp_path / "dest", mode="copy")
            assert report.complete and placed_matches(tree, tmp_path / "dest") == []
        assert not os.path.exists(tree.path)


# -- removal: one function for Trees.delete and maintenance --------------------------------------
def _removal_args(bucket: safecache.Bucket, tree: _tree.Tree) -> tuple[str, str, str]:
    assert bucket.directory is not None and bucket.trees.locks_dir is not None
    return bucket.directory, bucket.trees.locks_dir, tree.manifest.tree_id


def test_remove_tree_renames_then_deletes_and_drops_the_lock_file(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    pointer = bucket.trees._pointer(_keys.key_digest("k"))
    directory, locks, tree_id = _removal_args(bucket, tree)
    with tree:
        pass  # the lock file exists once the tree has been held
    lock_file = bucket.trees._object_lock(tree_id)
    assert os.path.exists(lock_file)
    assert _tree.remove_tree(directory, locks, tree_id, pointer=pointer) == "removed"
    assert not os.path.exists(pointer) and not os.path.exists(tree.path) and not os.path.exists(lock_file)
    assert list(Path(directory, "tree-objects").iterdir()) == []
    assert _tree.remove_tree(directory, locks, tree_id) == "gone"


def test_remove_tree_leaves_a_held_tree_and_its_pointer_untouched(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    pointer = bucket.trees._pointer(_keys.key_digest("k"))
    with tree:
        assert _tree.remove_tree(*_removal_args(bucket, tree), pointer=pointer, wait=0.05) == "held"
        assert os.path.exists(pointer) and os.path.isdir(tree.path)


def test_remove_tree_with_force_removes_a_held_tree(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    with tree:
        assert _tree.remove_tree(*_removal_args(bucket, tree), force=True) == "removed"
        assert not os.path.exists(tree.path)


def test_remove_tree_goes_on_without_locks_where_the_file_system_has_none(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    with inject_errors(errno.ENOLCK, ops=("lock",)):
        assert _tree.remove_tree(*_removal_args(bucket, tree)) == "removed"
    assert not os.path.exists(tree.path)


def test_remove_tree_reports_a_lock_it_cannot_examine_and_leaves_the_tree(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    seen: list[tuple[int | None, str]] = []
    with inject_errors(errno.EIO, ops=("lock",)):
        outcome = _tree.remove_tree(*_removal_args(bucket, tree), failed=lambda exc, path: seen.append((exc.errno, path)))
    assert outcome == "failed" and os.path.isdir(tree.path)
    assert seen == [(errno.EIO, bucket.trees._object_lock(tree.manifest.tree_id))]


def test_remove_tree_reports_a_failed_rename_and_leaves_the_tree(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    seen: list[str] = []
    with inject_errors(errno.EIO, ops=("rename",)):
        outcome = _tree.remove_tree(*_removal_args(bucket, tree), failed=lambda exc, path: seen.append(path))
    assert outcome == "failed" and os.path.isdir(tree.path) and seen == [tree.path]
    assert bucket.trees.get("k") is not None


def test_lock_for_removal_hands_back_the_exclusive_lock_for_a_caller_that_moves_the_tree(
    bucket: safecache.Bucket,
) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    _directory, locks, tree_id = _removal_args(bucket, tree)
    with tree:
        assert _tree.lock_for_removal(locks, tree_id, wait=0.05) == ("held", None)
    status, lock = _tree.lock_for_removal(locks, tree_id)
    assert status == "ok" and lock is not None and lock.locked
    lock.release()


# -- holding a tree: with tree, hold(), bounded waits ------------------------------------------------
def test_entering_a_tree_says_whether_it_is_held(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    with tree as held:
        assert held is tree and tree.held
    bucket.trees.delete("k")
    with tree:
        assert not tree.held  # removed by another process (or this one): do not read tree.path
    assert tree.hold() is False


def test_a_nested_with_keeps_the_tree_held_until_the_outer_block_ends(bucket: safecache.Bucket) -> None:
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    with tree:
        with tree:
            assert tree.held
        assert _tree.remove_tree(*_removal_args(bucket, tree), wait=0.0) == "held"
    assert _tree.remove_tree(*_removal_args(bucket, tree), wait=0.0) == "removed"


def test_a_tree_waits_for_a_remover_no_longer_than_the_caches_budget(tmp_path: Path) -> None:
    cache = safecache.Cache(tmp_path / "cache", retry_budget=0.05, lock_timeout=30)
    tree = cache.bucket("wheels").trees.get_or_create("k", lambda path: fill(path))
    assert tree.pin_timeout == 0.05
    assert safecache.Cache(tmp_path / "c2", retry_budget=5, lock_timeout=0.5).bucket("w").trees.get_or_create(
        "k", lambda path: fill(path)
    ).pin_timeout == 0.5


def test_a_tree_held_exclusively_elsewhere_is_placed_unpinned_and_not_held(bucket: safecache.Bucket, tmp_path: Path) -> None:
    """A remover holds a tree's lock for one rename; a holder that keeps it
    (stuck, or another user in a shared cache) must not stall placements:
    they go on unpinned after the bounded wait, checking every file."""
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    stuck = _locks.FileLock(bucket.trees._object_lock(tree.manifest.tree_id))  # another open file description
    stuck.acquire()
    try:
        report = tree.place(tmp_path / "dest", mode="copy", timeout=0.0)
        assert report.complete and placed_matches(tree, tmp_path / "dest") == []
        assert tree.hold(timeout=0.0) is False
        with tree:
            assert not tree.held
    finally:
        stuck.release()
    assert tree.hold(timeout=0.0) is True
    tree.close()


@pytest.mark.unprivileged
def test_another_user_holding_a_tree_lock_cannot_stall_a_placement(unprivileged: Any, tmp_path: Path) -> None:
    """A lock file other users can open (made 0644 by a safecache from
    before lock files were private) lets them flock it: place() waits at
    most the tree's pin_timeout, then places unpinned."""
    import subprocess

    import conftest

    work = unprivileged.workdir()
    cache = safecache.Cache(work / "cache", retry_budget=0.05)
    tree = cache.bucket("wheels").trees.get_or_create("k", lambda path: fill(path))
    lock = Path(cache.bucket("wheels").trees._object_lock(tree.manifest.tree_id))
    with tree:
        pass  # the lock file exists
    os.chmod(lock, 0o644)
    holder = subprocess.Popen(
        [unprivileged.python, "-c",
         "import fcntl, os, sys, time\n"
         "fd = os.open(sys.argv[1], os.O_RDONLY)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX)\n"
         "print('held', flush=True)\n"
         "time.sleep(30)\n", str(lock)],  # far beyond pin_timeout (the old wait was 60 s)
        preexec_fn=conftest._drop(unprivileged.uid, unprivileged.gid),
        stdout=subprocess.PIPE, text=True, cwd="/",
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        report = tree.place(work / "dest", mode="copy")
        assert holder.poll() is None  # still holding: the placement did not wait for it
        assert report.complete and placed_matches(tree, work / "dest") == []
        assert tree.hold() is False
    finally:
        holder.kill()
        holder.wait()


# -- ephemeral and staged trees ---------------------------------------------------------------------
def test_verify_leaves_an_ephemeral_tree_in_place(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "c", enabled=False).bucket("wheels")
    tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    assert tree.ephemeral and tree.verify() == []
    assert os.path.isdir(tree.path)
    assert tree.place(tmp_path / "dest", mode="copy").complete
    tree.close()
    assert not os.path.exists(tree.path)


@pytest.mark.filterwarnings("ignore::safecache.CacheWarning")
def test_a_tree_handed_out_from_staging_is_held_until_closed(bucket: safecache.Bucket, tmp_path: Path) -> None:
    """No commit (the rename fails) and no private temp directory: the
    staging directory itself is handed out, held for the tree's life, so
    maintenance (which removes old unheld staging trees) leaves it."""
    import safecache.maintenance as maintenance

    with inject_errors(errno.EIO, ops=("rename",), path_contains=".tmp"):
        with inject_errors(errno.ENOSPC, ops=("mkdir",), path_contains="safecache-tree-"):
            tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    assert tree.ephemeral and tree.path.endswith(".tmp") and os.path.dirname(tree.path).endswith("tree-objects")
    old = time.time() - 3 * 3600
    for p in [Path(tree.path), *Path(tree.path).rglob("*")]:
        os.utime(p, (old, old), follow_symlinks=False)
    maintenance.trim(bucket.cache)
    assert os.path.isdir(tree.path) and tree.verify() == []
    assert tree.place(tmp_path / "dest", mode="copy").complete
    tree.close()
    assert not os.path.exists(tree.path)
    assert not os.path.exists(bucket.trees._object_lock(_layout_id(tree.path)))


def _layout_id(staging: str) -> str:
    from safecache import _layout

    return _layout.staging_tree_id(staging)


# -- a full cache file system ----------------------------------------------------------------------
def writing_factory(path: str) -> None:
    """A factory whose writes go through safecache's system-call layer, so
    an injected ENOSPC reaches them as a full disk would."""
    os.makedirs(os.path.join(path, "pkg"))
    _fs.write_file(os.path.join(path, "pkg", "data.bin"), [b"payload" * 100])


def test_get_or_create_on_a_full_cache_falls_back_to_an_ephemeral_tree(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    bucket = safecache.Cache(root).bucket("wheels", version=1)
    bucket.trees.get_or_create("made before the disk filled up", writing_factory)
    with pytest.warns(safecache.CacheWarning, match="full"):
        with inject_errors(errno.ENOSPC, ops=("write",), path_contains=str(root)) as faults:
            tree = bucket.trees.get_or_create("k", writing_factory)
    assert faults.fired >= 1
    assert tree.ephemeral and Path(tree.path, "pkg", "data.bin").read_bytes() == b"payload" * 100
    objects = root / "buckets" / "wheels" / "v1" / "tree-objects"
    assert not [n for n in os.listdir(objects) if n.endswith(".tmp")]  # the staging dir is gone
    assert bucket.trees.get("k") is None
    tree.close()


def test_put_on_a_full_cache_falls_back_to_an_ephemeral_copy(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    src = tmp_path / "src"
    src.mkdir()
    fill(str(src))
    bucket = safecache.Cache(root).bucket("wheels")
    bucket.put("made before the disk filled up", b"x")
    with pytest.warns(safecache.CacheWarning, match="full"):
        with inject_errors(errno.ENOSPC, ops=("copyfile",), path_contains=str(root)):
            tree = bucket.trees.put("k", src)
    assert tree.ephemeral and tree.verify() == []
    tree.close()


def test_a_full_cache_in_strict_mode_raises_cache_full_error(tmp_path: Path) -> None:
    root = tmp_path / "cache"
    bucket = safecache.Cache(root, strict=True).bucket("wheels")
    bucket.put("made before the disk filled up", b"x")
    with inject_errors(errno.ENOSPC, ops=("write",), path_contains=str(root)):
        with pytest.raises(safecache.CacheFullError):
            bucket.trees.get_or_create("k", writing_factory)


def test_a_factorys_own_enospc_elsewhere_is_the_callers(tmp_path: Path) -> None:
    bucket = safecache.Cache(tmp_path / "cache").bucket("wheels")
    calls = []

    def factory(path: str) -> None:
        calls.append(path)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "downloads" / "pkg.whl"))

    with pytest.raises(OSError) as info:
        bucket.trees.get_or_create("k", factory)
    assert info.value.errno == errno.ENOSPC and len(calls) == 1


def test_a_healthy_cache_builds_in_staging_when_no_temp_directory_can_be_made(bucket: safecache.Bucket) -> None:
    with inject_errors(errno.ENOSPC, ops=("mkdir",), path_contains="safecache-tree-"):
        tree = bucket.trees.get_or_create("k", lambda path: fill(path))
    assert not tree.ephemeral and bucket.trees.get("k") is not None


# -- commit --------------------------------------------------------------------------------------------
def test_a_pointer_committed_while_a_dangling_one_is_removed_is_kept(bucket: safecache.Bucket) -> None:
    """A commit that finds a dangling pointer removes it only if it is still
    the file it read: a pointer another process committed since stays."""
    first = bucket.trees.get_or_create("k", lambda path: fill(path, tag="first"))
    pointer = Path(bucket.trees._pointer(_keys.key_digest("k")))
    good = pointer.read_bytes()  # points at the live tree `first`
    # A dangling pointer: same key, a tree id no directory has.
    document = json.loads(first.manifest.to_bytes())
    document["tree"] = "f" * 32
    payload = json.dumps(document).encode()
    from safecache import _format

    header = _format.pack_header(len(payload), time.time_ns(), bytes.fromhex(_keys.key_digest("k")),
                                 _format.crc32(payload), _format.KIND_BUILT)
    pointer.write_bytes(header + payload)
    original = bucket.trees._read

    def read_then_race(digest: str) -> Any:
        result = original(digest)
        if result[1] is not None and result[1].tree_id == "f" * 32:
            fresh = pointer.with_name("fresh")
            fresh.write_bytes(good)
            os.replace(fresh, pointer)  # another process commits `first` again
        return result

    bucket.trees._read = read_then_race  # type: ignore[method-assign]
    staging = bucket.trees._staging()
    assert staging is not None
    fill(staging, tag="second")
    tree = bucket.trees.commit("k", staging)
    assert pointer.read_bytes() == good
    assert tree.manifest.tree_id == first.manifest.tree_id
    assert not os.path.exists(staging)
