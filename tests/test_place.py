"""Placing a tree (safecache._place) never reaches outside the tree or the
destination through a symlink, never places a file that is not the one the
manifest lists, and leaves nothing behind when it places a tree again.

Each attack runs three times: through directory descriptors
(``openat``-style, POSIX); through the path-based way Windows takes (every
component lstat-checked), forced by an OsOps subclass that models paths;
and under the Windows emulator (with the symlink privilege), which takes
that way too."""

from __future__ import annotations

import errno
import os
import warnings
from pathlib import Path
from typing import Iterator

import pytest

import safecache
from safecache import _link, _osops, _tree
from safecache._osops import OsOps

SECRET = b"outside secret\n"  # the size of the tree file the attacks aim at


class PathOps(OsOps):
    """The real OS, modelling paths (as the Windows emulator does), so
    trees take their path-based way: ``has_dir_fd()`` is False."""

    name = "paths"

    def lstat(self, path: str) -> os.stat_result:
        return super().lstat(path)


@pytest.fixture(params=["dir_fd", "paths", "windows"])
def walk(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "windows":
        from safecache.testing import windows_semantics

        with windows_semantics(symlinks=True) as ops:
            assert not ops.has_dir_fd()
            yield request.param
        return
    if request.param == "paths":
        _osops.current = PathOps()  # conftest restores the real OS after the test
        assert not _osops.current.has_dir_fd()
    else:
        assert _osops.current.has_dir_fd()
    yield request.param


@pytest.fixture
def bucket(tmp_path: Path) -> safecache.Bucket:
    return safecache.Cache(tmp_path / "cache").bucket("wheels", version=1)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A directory outside the cache and the destination, with a private
    file of the same size and name as one of the tree's."""
    path = tmp_path / "outside"
    path.mkdir()
    secret = path / "m.py"
    secret.write_bytes(SECRET)
    secret.chmod(0o600)
    return path


def fill(path: str) -> None:
    root = Path(path)
    (root / "pkg" / "sub").mkdir(parents=True)
    (root / "pkg" / "m.py").write_bytes(b"x" * len(SECRET))
    (root / "pkg" / "sub" / "m.py").write_bytes(b"y" * len(SECRET))
    (root / "pkg" / "sub" / "n.py").write_bytes(b"n")
    (root / "top.txt").write_text("top")
    os.symlink("m.py", root / "pkg" / "link")


def snapshot(path: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every name under ``path``: inode, mode, and content (link target)."""
    out = {}
    for p in sorted(path.rglob("*")):
        st = p.lstat()
        data = os.readlink(p).encode() if p.is_symlink() else (p.read_bytes() if p.is_file() else b"")
        out[str(p.relative_to(path))] = (st.st_ino, st.st_mode, data)
    return out


def names(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def place(tree: _tree.Tree, dest: Path, **kwargs: object) -> safecache.PlaceReport:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fallbacks (clone -> ...) are expected here
        return tree.place(dest, **kwargs)  # type: ignore[arg-type]


# -- the cache's copy tampered with -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["copy", "hardlink", "auto", "clone", "symlink"])
def test_a_tree_directory_swapped_for_a_symlink_is_not_entered(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str, mode: str
) -> None:
    """The issue's attack: ``pkg/sub`` replaced by a symlink to a directory
    holding a 0600 file of the right name and size; place(mode="copy")
    copied it into the destination."""
    tree = bucket.trees.get_or_create("k", fill)
    sub = Path(tree.path, "pkg", "sub")
    os.rename(sub, tmp_path / "moved-away")
    os.symlink(outside, sub)
    dest = tmp_path / "dest"
    report = place(tree, dest, mode=mode)
    assert not report.complete and sorted(report.missing) == ["pkg/sub/m.py", "pkg/sub/n.py"]
    assert not (dest / "pkg" / "sub" / "m.py").exists() and not (dest / "pkg" / "sub" / "m.py").is_symlink()
    assert (dest / "pkg" / "m.py").read_bytes() == b"x" * len(SECRET)  # the rest is placed
    assert ("pkg/sub", "not a directory") in tree.verify()


@pytest.mark.parametrize("mode", ["hardlink", "auto", "copy", "clone", "symlink"])
def test_a_tree_file_swapped_for_a_symlink_is_not_placed(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str, mode: str
) -> None:
    """The issue's attack: an object file that is a symlink was placed as a
    symlink (hardlink, auto) or copied through (copy)."""
    tree = bucket.trees.get_or_create("k", fill)
    victim = Path(tree.path, "pkg", "m.py")
    victim.unlink()
    os.symlink(outside / "m.py", victim)
    dest = tmp_path / "dest"
    report = place(tree, dest, mode=mode)
    assert report.missing == ["pkg/m.py"] and not report.complete
    assert not os.path.lexists(dest / "pkg" / "m.py")
    assert ("pkg/m.py", "not a file") in tree.verify()


def test_a_tree_file_of_another_size_is_not_placed(bucket: safecache.Bucket, tmp_path: Path, walk: str) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    Path(tree.path, "top.txt").write_text("grown since it was committed")
    report = place(tree, tmp_path / "dest", mode="copy")
    assert report.missing == ["top.txt"] and not (tmp_path / "dest" / "top.txt").exists()
    assert ("top.txt", "size") in tree.verify()


def test_a_tree_file_swapped_for_a_fifo_is_not_placed_and_never_blocks(
    bucket: safecache.Bucket, tmp_path: Path, walk: str
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    os.unlink(Path(tree.path, "top.txt"))
    os.mkfifo(Path(tree.path, "top.txt"))
    for mode in ("copy", "hardlink"):
        report = place(tree, tmp_path / mode, mode=mode)
        assert report.missing == ["top.txt"]
    assert ("top.txt", "not a file") in tree.verify()


@pytest.mark.parametrize("mode", ["hardlink", "copy"])
def test_a_tree_file_swapped_for_a_directory_is_not_placed_and_decides_nothing(
    bucket: safecache.Bucket, tmp_path: Path, walk: str, mode: str
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    os.unlink(Path(tree.path, "pkg", "m.py"))
    os.mkdir(Path(tree.path, "pkg", "m.py"))
    report = place(tree, tmp_path / "dest", mode=mode)
    assert report.missing == ["pkg/m.py"] and report.fallbacks == []
    assert report.used == {mode: len(tree.manifest.files) - 1}
    assert ("pkg/m.py", "not a file") in tree.verify()


def test_the_tree_directory_swapped_for_a_symlink_places_nothing(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    os.rename(tree.path, tmp_path / "moved-away")
    os.symlink(outside, tree.path)
    report = place(tree, tmp_path / "dest", mode="copy")
    assert not report.complete and report.placed == 0
    assert tree.verify() == [(".", "not a directory")]


@pytest.mark.parametrize("mode", ["hardlink", "copy"])
def test_a_directory_swapped_for_a_symlink_during_placement_is_never_entered(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, mode: str
) -> None:
    """Descriptors close the race the path-based way cannot: the swap
    happens after the first file was placed, and every later file is
    either the tree's own or missing."""
    tree = bucket.trees.get_or_create("k", fill)
    sub = Path(tree.path, "pkg", "sub")
    swapped: list[str] = []

    class Swapping(OsOps):
        # Overrides only *_at operations: has_dir_fd() stays True.
        def link_at(self, src: str, dst: str, *, src_dir_fd: int, dst_dir_fd: int) -> None:
            self._swap()
            super().link_at(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

        def copyfile_at(self, src_fd: int, dst: str, *, dir_fd: int) -> None:
            self._swap()
            super().copyfile_at(src_fd, dst, dir_fd=dir_fd)

        def _swap(self) -> None:
            if not swapped:
                swapped.append("done")
                os.rename(sub, tmp_path / "moved-away")
                os.symlink(outside, sub)

    _osops.current = Swapping()
    assert _osops.current.has_dir_fd()
    dest = tmp_path / "dest"
    report = tree.place(dest, mode=mode)
    assert swapped
    secret = (outside / "m.py").stat()
    for p in dest.rglob("*"):
        st = p.lstat()
        assert (st.st_dev, st.st_ino) != (secret.st_dev, secret.st_ino)
        assert not p.is_symlink() or p.name == "link"
        if p.is_file():
            assert p.read_bytes() != SECRET
    assert set(report.missing) <= {"pkg/sub/m.py", "pkg/sub/n.py"}


# -- the destination ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["copy", "hardlink", "symlink"])
def test_a_destination_symlink_where_the_tree_has_a_directory_is_replaced_not_followed(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str, mode: str
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "pkg")
    before = snapshot(outside)
    report = place(tree, dest, mode=mode)
    assert report.complete
    assert snapshot(outside) == before
    assert (dest / "pkg").is_dir() and not (dest / "pkg").is_symlink()
    assert (dest / "pkg" / "sub" / "n.py").read_bytes() == b"n"


def test_a_destination_symlink_where_the_tree_has_a_directory_is_left_with_skip(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "pkg")
    before = snapshot(outside)
    report = place(tree, dest, mode="copy", on_existing="skip")
    assert snapshot(outside) == before and os.readlink(dest / "pkg") == str(outside)
    assert report.skipped == 4 and report.placed == 1  # all of pkg/ skipped; top.txt placed


def test_a_destination_symlink_where_the_tree_has_a_directory_is_an_existing_file_for_error(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    dest = tmp_path / "dest"
    dest.mkdir()
    os.symlink(outside, dest / "pkg")
    with pytest.raises(FileExistsError):
        tree.place(dest, on_existing="error")
    assert names(dest) == ["pkg"]


def test_a_destination_file_that_is_a_symlink_is_replaced_not_written_through(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    dest = tmp_path / "dest"
    (dest / "pkg").mkdir(parents=True)
    os.symlink(outside / "m.py", dest / "pkg" / "m.py")
    before = snapshot(outside)
    report = place(tree, dest, mode="copy")
    assert report.complete and report.replaced == 1
    assert snapshot(outside) == before
    assert not (dest / "pkg" / "m.py").is_symlink()


def test_the_trees_own_symlinks_are_placed_as_symlinks_and_never_followed(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str
) -> None:
    src = tmp_path / "src"
    src.mkdir()
    os.symlink(outside, src / "out")  # a tree may hold any symlink: it is data
    os.symlink(outside / "m.py", src / "secret")
    tree = bucket.trees.put("k", src)
    before = snapshot(outside)
    dest = tmp_path / "dest"
    for _ in range(2):  # placed, then replaced
        assert place(tree, dest, mode="copy").complete
    assert os.readlink(dest / "out") == str(outside) and os.readlink(dest / "secret") == str(outside / "m.py")
    assert snapshot(outside) == before
    assert tree.verify() == []


def test_placing_over_a_symlink_the_tree_placed_before_never_goes_through_it(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path, walk: str
) -> None:
    """Tree one places symlink ``a`` -> outside; tree two has a directory
    ``a`` with a file: the file lands in a new directory, not outside."""
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    os.symlink(outside, one / "a")
    (two / "a").mkdir(parents=True)
    (two / "a" / "m.py").write_bytes(b"z" * len(SECRET))
    dest = tmp_path / "dest"
    place(bucket.trees.put("one", one), dest)
    before = snapshot(outside)
    assert place(bucket.trees.put("two", two), dest).complete
    assert snapshot(outside) == before
    assert (dest / "a" / "m.py").read_bytes() == b"z" * len(SECRET) and not (dest / "a").is_symlink()


def test_a_symlink_placed_where_symlinks_cannot_be_made_names_only_files_of_the_tree(
    bucket: safecache.Bucket, tmp_path: Path, outside: Path
) -> None:
    """Windows without the symlink privilege: a link is placed as the file
    it names if that file is in the manifest (never followed on disk)."""
    from safecache.testing import inject_errors

    src = tmp_path / "src"
    (src / "pkg").mkdir(parents=True)
    (src / "pkg" / "data.txt").write_text("data")
    os.symlink("data.txt", src / "pkg" / "inside")
    os.symlink("../../outside/m.py", src / "pkg" / "escape")
    os.symlink(str(outside / "m.py"), src / "pkg" / "absolute")
    tree = bucket.trees.put("k", src)
    dest = tmp_path / "dest"
    with inject_errors(errno.EPERM, ops=("symlink", "symlink_at")):
        report = place(tree, dest, mode="copy")
    assert (dest / "pkg" / "inside").read_text() == "data" and not (dest / "pkg" / "inside").is_symlink()
    assert sorted(report.missing) == ["pkg/absolute", "pkg/escape"]
    assert not os.path.lexists(dest / "pkg" / "escape") and not os.path.lexists(dest / "pkg" / "absolute")


# -- placing again ------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["hardlink", "auto", "copy", "symlink", "clone"])
def test_placing_into_the_same_destination_twice_leaves_nothing_behind(
    bucket: safecache.Bucket, tmp_path: Path, walk: str, mode: str
) -> None:
    """rename(2) between two hard links of one inode does nothing: the
    temp files of a second hard-link placement stayed (place-* dirs)."""
    tree = bucket.trees.get_or_create("k", fill)
    dest = tmp_path / "dest"
    first = place(tree, dest, mode=mode)
    expected = names(dest)
    second = place(tree, dest, mode=mode)
    third = place(tree, dest, mode=mode)
    assert names(dest) == expected, "a reinstall left files behind"
    assert first.complete and second.complete and third.complete
    total = len(tree.manifest.files) + len(tree.manifest.symlinks)
    assert first.placed == total and second.replaced == total and third.replaced == total


def test_the_same_destination_placed_by_hard_link_then_copy_then_hard_link_stays_clean(
    bucket: safecache.Bucket, tmp_path: Path
) -> None:
    tree = bucket.trees.get_or_create("k", fill)
    dest = tmp_path / "dest"
    for mode in ("hardlink", "copy", "hardlink", "hardlink"):
        place(tree, dest, mode=mode)
    assert not [n for n in names(dest) if n.endswith(".tmp")]
    assert os.stat(dest / "top.txt").st_ino == os.stat(Path(tree.path, "top.txt")).st_ino


# -- the handles themselves ---------------------------------------------------------------------


def test_dir_handles_refuse_symlinks_and_files(tmp_path: Path, walk: str) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    os.symlink(tmp_path / "d", tmp_path / "link")
    root = _link.open_root(str(tmp_path))
    try:
        assert root.child("d").path == str(tmp_path / "d")
        for name, error in (("f", NotADirectoryError), ("link", NotADirectoryError), ("absent", FileNotFoundError)):
            with pytest.raises(error):
                root.child(name)
    finally:
        root.close()
    with pytest.raises(NotADirectoryError):
        _link.open_root(str(tmp_path / "link"))
    _link.open_root(str(tmp_path / "link"), follow=True).close()  # a destination the caller named


def test_the_dir_cache_keeps_a_bounded_number_of_descriptors_open(tmp_path: Path) -> None:
    deep = tmp_path
    parts = [f"d{i}" for i in range(60)]
    for part in parts:
        deep = deep / part
    deep.mkdir(parents=True)
    dirs = _link.Dirs(_link.open_root(str(tmp_path)), keep=8)
    try:
        before = len(os.listdir("/proc/self/fd"))
        assert dirs.get("/".join(parts)).path == str(deep)
        assert len(os.listdir("/proc/self/fd")) - before <= 8
    finally:
        dirs.close()
        dirs.root.close()


def test_the_windows_emulator_takes_the_path_based_way() -> None:
    from safecache.testing import inject_errors, windows_semantics

    with windows_semantics() as ops:
        assert not ops.has_dir_fd()
        with inject_errors(errno.EIO, ops=()) as faults:
            assert not faults.has_dir_fd()
    with inject_errors(errno.EIO, ops=()) as faults:
        assert faults.has_dir_fd()  # it wraps the real OS


def test_an_unreadable_tree_is_an_incomplete_placement_never_an_error(bucket: safecache.Bucket, tmp_path: Path) -> None:
    """The cache's side of a placement degrades; only the destination's
    errors are the caller's."""
    from safecache.testing import inject_errors

    tree = bucket.trees.get_or_create("k", fill)
    with inject_errors(errno.EACCES, ops=("open",), path_contains=tree.path):
        report = place(tree, tmp_path / "dest", mode="copy")
    assert not report.complete and report.placed == 0
    assert sorted(report.missing) == sorted(f[0] for f in tree.manifest.files)
