"""Removing a directory tree (``_fs.rmtree``): relative to directory
descriptors where the OS has them (``_osops.rmtree_at``), by checked paths
elsewhere; never through a symlink, however late it is swapped in."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _maintenance_helpers import PathsOnly

from safecache import _fs, _osops
from safecache._osops import OsOps


def _tree(tmp_path: Path) -> tuple[Path, Path]:
    """``t/sub/victim`` to remove, and ``outside/victim``, which must survive."""
    tree = tmp_path / "t"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "victim").write_text("cache junk")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious")
    return tree, outside


def _swap(tree: Path, outside: Path, moved: Path) -> None:
    """What an attacker does: the real directory away, a symlink in its place."""
    os.rename(tree / "sub", moved)
    (tree / "sub").symlink_to(outside, target_is_directory=True)


class _SwapAfterLstatAt(OsOps):
    """The real OS (descriptors and all) that swaps ``t/sub`` right after
    the walk has found it is a directory, before it opens it."""

    def __init__(self, tree: Path, outside: Path, moved: Path) -> None:
        self.args = (tree, outside, moved)
        self.swapped = False

    def lstat_at(self, path: str, *, dir_fd: int) -> os.stat_result:
        st = super().lstat_at(path, dir_fd=dir_fd)
        if path == "sub" and not self.swapped:
            self.swapped = True
            _swap(*self.args)
        return st


class _SwapAfterLstat(PathsOnly):
    """The same by path (Windows' way): the swap comes after the lstat that
    said ``t/sub`` is a directory, before it is listed."""

    def __init__(self, tree: Path, outside: Path, moved: Path) -> None:
        self.args = (tree, outside, moved)
        self.swapped = False

    def lstat(self, path: str) -> os.stat_result:
        st = super().lstat(path)
        if path == str(self.args[0] / "sub") and not self.swapped:
            self.swapped = True
            _swap(*self.args)
        return st


def test_rmtree_never_enters_a_directory_swapped_for_a_symlink_after_it_was_listed(tmp_path: Path) -> None:
    if not _osops.real.has_dir_fd():
        pytest.skip("no dir_fd on this platform")
    tree, outside = _tree(tmp_path)
    ops = _SwapAfterLstatAt(tree, outside, tmp_path / "moved")
    assert ops.has_dir_fd()  # still the descriptor walk
    _osops.current = ops
    _fs.rmtree(str(tree))
    assert ops.swapped and not tree.exists()
    assert (outside / "victim").read_text() == "precious"  # the link was removed, never entered
    assert (tmp_path / "moved" / "victim").read_text() == "cache junk"  # moved away: no longer in the tree


def test_rmtree_by_path_refuses_a_directory_swapped_before_it_is_listed(tmp_path: Path) -> None:
    tree, outside = _tree(tmp_path)
    ops = _SwapAfterLstat(tree, outside, tmp_path / "moved")
    _osops.current = ops
    with pytest.raises(NotADirectoryError):
        _fs.rmtree(str(tree))
    assert ops.swapped
    assert (outside / "victim").read_text() == "precious"


@pytest.mark.parametrize("mode", ["dir-fd", "paths"])
def test_rmtree_removes_a_symlink_at_its_own_path_without_entering_it(tmp_path: Path, mode: str) -> None:
    if mode == "paths":
        _osops.current = PathsOnly()
    _tree_path, outside = _tree(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(outside, target_is_directory=True)
    _fs.rmtree(str(link))
    assert not os.path.lexists(link) and (outside / "victim").read_text() == "precious"


def test_rmtree_of_a_very_deep_tree_does_not_recurse(tmp_path: Path) -> None:
    """Deeper than Python's recursion limit: the descriptor walk keeps a
    stack of its own (a RecursionError would escape every error policy)."""
    if not _osops.real.has_dir_fd():
        pytest.skip("no dir_fd on this platform")
    top = tmp_path / "deep"
    top.mkdir()
    fd = os.open(top, os.O_RDONLY)
    try:
        for _ in range(1100):  # past the recursion limit (1000)
            os.mkdir("d", dir_fd=fd)
            inner = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = inner
        os.close(os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    _fs.rmtree(str(top))
    assert not top.exists()


@pytest.mark.unprivileged
def test_rmtree_gives_its_owner_the_permissions_it_lacks(unprivileged: Any) -> None:
    """Root ignores modes, so an unprivileged owner removes a tree whose
    directories it cannot read, search or write (a tree restored with odd
    modes), relative to descriptors."""
    work = unprivileged.workdir()
    os.chown(work, unprivileged.uid, unprivileged.gid)
    code = textwrap.dedent(f"""
        import json, os
        from safecache import _fs
        top = os.path.join({str(work)!r}, "t")
        os.makedirs(os.path.join(top, "a", "b"))
        open(os.path.join(top, "a", "b", "f"), "w").close()
        os.chmod(os.path.join(top, "a", "b"), 0o000)
        os.chmod(os.path.join(top, "a"), 0o500)
        _fs.rmtree(top)
        print(json.dumps({{"gone": not os.path.exists(top)}}))
    """)
    assert unprivileged.run_json(code) == {"gone": True}


def test_rmtree_by_descriptor_copes_with_a_read_only_tree(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "a").mkdir(parents=True)
    (tree / "a" / "f").write_text("x")
    (tree / "a" / "f").chmod(stat.S_IREAD)
    (tree / "a").chmod(0o555)
    _fs.rmtree(str(tree))
    assert not tree.exists()
