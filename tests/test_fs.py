"""The file-system layer: temp files, publishing, retries, tree removal."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

import pytest

from safecache import _fs
from safecache.testing import WinError, inject_errors, windows_semantics


def test_write_file_replaces_atomically_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "d" / "e" / "f"
    assert _fs.write_file(str(target), [b"one"]) is True
    assert _fs.write_file(str(target), [b"two", b"!"]) is True
    assert target.read_bytes() == b"two!"
    assert sorted(p.name for p in target.parent.iterdir()) == ["f"]


def test_temp_files_are_created_beside_the_target_exclusively(tmp_path: Path) -> None:
    target = str(tmp_path / "f")
    name, fd = _fs.create_temp(target)
    os.close(fd)
    assert os.path.dirname(name) == str(tmp_path) and name.endswith(".tmp")
    # O_EXCL: a planted file (or symlink) at the next name is never opened.
    nxt = _fs.temp_name(target)
    os.symlink("/nonexistent-target", nxt + "x")
    name2, fd2 = _fs.create_temp(target)
    os.close(fd2)
    assert name2 != name


def test_temp_file_is_removed_when_writing_fails(tmp_path: Path) -> None:
    def chunks():  # type: ignore[no-untyped-def]
        yield b"partial"
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError):
        _fs.write_file(str(tmp_path / "f"), chunks())
    assert list(tmp_path.iterdir()) == []


def test_publish_noreplace_keeps_the_first_writer(tmp_path: Path) -> None:
    target = str(tmp_path / "blob")
    assert _fs.write_file(target, [b"first"], replace=False) is True
    assert _fs.write_file(target, [b"second"], replace=False) is False
    assert Path(target).read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blob"]


def test_publish_noreplace_without_hard_links_falls_back_to_rename(tmp_path: Path) -> None:
    target = str(tmp_path / "blob")
    with inject_errors(errno.EPERM, ops=("link",)):
        assert _fs.write_file(target, [b"first"], replace=False) is True
        assert _fs.write_file(target, [b"second"], replace=False) is False
    assert Path(target).read_bytes() == b"first"


def test_retry_gives_up_with_the_first_error_marked(tmp_path: Path) -> None:
    calls = []

    def busy() -> None:
        calls.append(1)
        raise OSError(errno.EBUSY, f"busy {len(calls)}")

    with pytest.raises(OSError) as info:
        _fs.retry("replace", busy, budget=0.05)
    assert info.value.strerror == "busy 1"
    attempts, seconds = info.value._safecache_exhausted  # type: ignore[attr-defined]
    assert attempts == len(calls) > 1 and seconds < 0.05


def test_retry_does_not_retry_permanent_errors() -> None:
    calls = []

    def denied() -> None:
        calls.append(1)
        raise PermissionError(errno.EACCES, "denied")

    with pytest.raises(PermissionError):
        _fs.retry("replace", denied, budget=5)
    assert calls == [1]


def test_rmtree_removes_read_only_files_and_directories(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "a" / "b" / "f").write_text("x")
    (tree / "a" / "b" / "f").chmod(0o444)
    (tree / "a" / "b").chmod(0o555)
    _fs.rmtree(str(tree))
    assert not tree.exists()


def test_rmtree_never_follows_symlinks(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("precious")
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "link").symlink_to(outside, target_is_directory=True)
    (tree / "filelink").symlink_to(outside / "keep")
    _fs.rmtree(str(tree))
    assert not tree.exists()
    assert (outside / "keep").read_text() == "precious"


def test_rmtree_under_windows_semantics_copes_with_read_only_files(tmp_path: Path) -> None:
    tree = tmp_path / "t"
    tree.mkdir()
    f = tree / "ro"
    f.write_text("x")
    f.chmod(stat.S_IREAD)
    with windows_semantics():
        _fs.rmtree(str(tree))
    assert not tree.exists()


def test_remove_of_a_file_held_open_is_retried_until_released(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_text("x")
    with windows_semantics():
        with inject_errors(WinError(32), ops=("unlink",), times=2) as faults:
            assert _fs.remove(str(f)) is True
    assert faults.fired == 2 and not f.exists()


def test_makedirs_tolerates_racing_creators(tmp_path: Path) -> None:
    target = str(tmp_path / "a" / "b" / "c")
    _fs.makedirs(target)
    _fs.makedirs(target)
    assert os.path.isdir(target)


# -- odd files: a FIFO, a directory where a file should be ------------------------------------
def test_read_file_of_a_fifo_returns_at_once_as_absent(tmp_path: Path) -> None:
    fifo = tmp_path / "entry"
    os.mkfifo(fifo)
    assert _fs.read_file(str(fifo)) is None


def test_read_file_of_a_directory_is_absent(tmp_path: Path) -> None:
    (tmp_path / "entry").mkdir()
    assert _fs.read_file(str(tmp_path / "entry")) is None
