"""Placing files by link mode (safecache._link) and the whole-file operations
under it (OsOps.clone, OsOps.copyfile).

The copy-on-write success path needs a file system with reflinks: the
``reflink_dir`` fixture makes a small XFS (``mkfs.xfs -m reflink=1``, from
Debian's ``xfsprogs``) or btrfs image and loop-mounts it, which needs root and
a container that may mount; where it cannot, those tests skip and say why.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
import struct
import sys
import tempfile
import tracemalloc
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

import safecache
from safecache import _link, _osops
from safecache._osops import OsOps
from safecache.testing import WinError, inject_errors, windows_semantics

linux_only = pytest.mark.skipif(sys.platform != "linux", reason="FICLONE, copy_file_range and the emulator are Linux's")
pytestmark = linux_only

MiB = 1 << 20


# -- helpers -----------------------------------------------------------------------------------


def make(path: Path, data: bytes = b"cached bytes\n", mode: int = 0o640) -> str:
    path.write_bytes(data)
    os.chmod(path, mode)
    return str(path)


def assert_same_file_contents(src: str, dst: str, *, windows: bool = False) -> None:
    assert Path(dst).read_bytes() == Path(src).read_bytes()
    src_mode, dst_mode = stat.S_IMODE(os.stat(src).st_mode), stat.S_IMODE(os.stat(dst).st_mode)
    if windows:  # only the read-only attribute exists there
        assert bool(dst_mode & stat.S_IWRITE) == bool(src_mode & stat.S_IWRITE)
    else:
        assert dst_mode == src_mode


def cache_warnings(record: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in record if issubclass(w.category, safecache.CacheWarning)]


def can_clone(directory: Path) -> bool:
    """Whether the file system of ``directory`` supports FICLONE."""
    src = make(directory / ".probe-src")
    try:
        OsOps().clone(src, str(directory / ".probe-dst"))
    except OSError:
        return False
    else:
        os.unlink(directory / ".probe-dst")
        return True
    finally:
        os.unlink(src)


def needs_no_reflink(tmp_path: Path) -> None:
    if can_clone(tmp_path):
        pytest.skip(f"the file system of {tmp_path} supports reflinks; the fallback is tested by injection")


_FS_IOC_FIEMAP = 0xC020660B  # _IOWR('f', 11, struct fiemap)
_FIEMAP_FLAG_SYNC = 0x1
_FIEMAP_EXTENT_SHARED = 0x2000
_FIEMAP = struct.Struct("=QQIIII")  # fm_start, fm_length, fm_flags, fm_mapped_extents, fm_extent_count, fm_reserved
_EXTENT = struct.Struct("=QQQQQIIII")  # logical, physical, length, reserved64[2], flags, reserved[3]


def extents_shared(path: str) -> bool:
    """Whether every data extent of ``path`` is shared with another file
    (FIEMAP_EXTENT_SHARED): the proof that a clone is copy-on-write."""
    import fcntl

    count = 64
    buf = bytearray(_FIEMAP.pack(0, 2**64 - 1, _FIEMAP_FLAG_SYNC, 0, count, 0) + bytes(_EXTENT.size * count))
    with open(path, "rb") as f:
        fcntl.ioctl(f.fileno(), _FS_IOC_FIEMAP, buf, True)
    mapped = _FIEMAP.unpack_from(buf)[3]
    flags = [_EXTENT.unpack_from(buf, _FIEMAP.size + i * _EXTENT.size)[5] for i in range(mapped)]
    return bool(flags) and all(f & _FIEMAP_EXTENT_SHARED for f in flags)


class CloningOps(OsOps):
    """The real OS, except that ``clone`` succeeds everywhere (by copying):
    for the placer's decisions after a clone has worked, on any file system."""

    name = "fake-clone"

    def clone(self, src: str, dst: str) -> None:
        self.copyfile(src, dst)


@pytest.fixture
def cloning() -> CloningOps:
    ops = CloningOps()
    _osops.current = ops  # conftest restores the real OS after the test
    return ops


@pytest.fixture(autouse=True)
def _no_mode_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_link.ENV_VAR, raising=False)


@pytest.fixture(params=["posix", "windows"])
def semantics(request: pytest.FixtureRequest) -> Iterator[bool]:
    """Runs a test on the real OS and under the Windows emulator (with the
    symlink privilege); yields whether Windows rules are on."""
    if request.param == "posix":
        yield False
    else:
        with windows_semantics(symlinks=True):
            yield True


# -- a reflink-capable file system ---------------------------------------------------------------

@pytest.fixture
def on_reflink(reflink_dir: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh directory on the reflink file system, for one test."""
    path = Path(tempfile.mkdtemp(prefix=request.node.name[:40] + "-", dir=reflink_dir))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# -- resolve_mode and SAFECACHE_LINK_MODE -----------------------------------------------------------


def test_the_default_mode_is_auto() -> None:
    assert _link.resolve_mode(None) == "auto"
    assert _link.Placer().mode == "auto"


def test_the_environment_variable_sets_the_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_LINK_MODE", "copy")
    placer = _link.Placer()
    assert placer.mode == "copy"
    assert placer.place(make(tmp_path / "a"), str(tmp_path / "b")) == "copy"


def test_an_explicit_mode_wins_over_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_LINK_MODE", "copy")
    assert _link.resolve_mode("hardlink") == "hardlink"


def test_an_empty_environment_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_LINK_MODE", "")
    assert _link.resolve_mode(None) == "auto"


@pytest.mark.parametrize(("given", "expected"), [("Copy", "copy"), (" symlink ", "symlink"), ("reflink", "clone")])
def test_mode_names_are_case_insensitive_and_reflink_means_clone(given: str, expected: str) -> None:
    assert _link.resolve_mode(given) == expected


def test_an_invalid_environment_value_is_rejected_naming_the_valid_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFECACHE_LINK_MODE", "hardlinks")
    with pytest.raises(ValueError, match="SAFECACHE_LINK_MODE") as info:
        _link.Placer()
    for mode in ("auto", "clone", "hardlink", "symlink", "copy"):
        assert mode in str(info.value)


def test_an_invalid_argument_is_rejected() -> None:
    with pytest.raises(ValueError, match="use one of auto, clone, hardlink, symlink, copy"):
        _link.Placer("junction")


# -- each mode ----------------------------------------------------------------------------------------


def test_copy_makes_a_new_inode_with_the_same_bytes_and_mode(tmp_path: Path, semantics: bool) -> None:
    src = make(tmp_path / "src", os.urandom(100_000), 0o751)
    dst = str(tmp_path / "dst")
    placer = _link.Placer("copy")
    assert placer.place(src, dst) == "copy"
    assert_same_file_contents(src, dst, windows=semantics)
    assert os.stat(dst).st_ino != os.stat(src).st_ino
    assert placer.used == {"copy": 1} and placer.fallbacks == []


def test_hardlink_shares_the_inode(tmp_path: Path, semantics: bool) -> None:
    src = make(tmp_path / "src", mode=0o604)
    dst = str(tmp_path / "dst")
    placer = _link.Placer("hardlink")
    assert placer.place(src, dst) == "hardlink"
    assert os.stat(dst).st_ino == os.stat(src).st_ino
    assert_same_file_contents(src, dst)
    assert placer.used == {"hardlink": 1}


def test_symlink_points_at_the_absolute_source(
    tmp_path: Path, semantics: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    make(tmp_path / "src", mode=0o640)
    (tmp_path / "out").mkdir()
    monkeypatch.chdir(tmp_path)
    placer = _link.Placer("symlink")
    assert placer.place("src", os.path.join("out", "dst")) == "symlink"
    target = os.readlink(tmp_path / "out" / "dst")
    assert os.path.isabs(target) and target == str(tmp_path / "src")
    assert_same_file_contents(str(tmp_path / "src"), str(tmp_path / "out" / "dst"))


@pytest.mark.filterwarnings("ignore::safecache.CacheWarning")
def test_placing_onto_an_existing_name_raises_and_keeps_it(tmp_path: Path, semantics: bool) -> None:
    src = make(tmp_path / "src")
    dst = make(tmp_path / "dst", b"someone else's")
    for mode in ("clone", "hardlink", "copy"):
        with pytest.raises(FileExistsError):
            _link.Placer(mode).place(src, dst)
        assert Path(dst).read_bytes() == b"someone else's"


def test_a_missing_source_raises_file_not_found_naming_it(tmp_path: Path) -> None:
    for mode in ("auto", "clone", "hardlink", "symlink", "copy"):
        placer = _link.Placer(mode)
        if mode == "symlink":  # a dangling symlink is made without complaint
            continue
        with pytest.raises(FileNotFoundError):
            placer.place(str(tmp_path / "missing"), str(tmp_path / f"dst-{mode}"))
        assert placer.fallbacks == []
        assert not os.path.lexists(tmp_path / f"dst-{mode}")


# -- clone --------------------------------------------------------------------------------------------


def test_clone_attempts_the_ficlone_ioctl(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clone code runs here whatever the file system: the ioctl is made on
    the new destination with the source's descriptor."""
    import fcntl

    seen: list[tuple[int, int, int, str, str]] = []
    real_ioctl = fcntl.ioctl

    def spy(fd: int, request: int, arg: Any = 0, *rest: Any) -> Any:
        seen.append((fd, request, arg, os.readlink(f"/proc/self/fd/{fd}"), os.readlink(f"/proc/self/fd/{arg}")))
        return real_ioctl(fd, request, arg, *rest)

    monkeypatch.setattr(fcntl, "ioctl", spy)
    src = make(tmp_path / "src", mode=0o600)
    dst = str(tmp_path / "dst")
    try:
        OsOps().clone(src, dst)
    except OSError as exc:
        assert exc.errno in (errno.EOPNOTSUPP, errno.EXDEV, errno.EINVAL, errno.ENOTTY, errno.EBADF)
        assert exc.filename == src and exc.filename2 == dst
        assert not os.path.lexists(dst)  # the empty destination is removed
    else:
        assert_same_file_contents(src, dst)
    assert [(s[1], s[3], s[4]) for s in seen] == [(_osops._FICLONE, dst, src)]
    assert _osops._FICLONE == 0x40049409 or os.uname().machine.startswith(("ppc", "mips", "sparc", "alpha", "powerpc"))


def test_clone_falls_back_to_hardlink_and_warns_where_the_file_system_cannot(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_no_reflink(tmp_path)
    src = make(tmp_path / "src")
    placer = _link.Placer("clone")
    with caplog.at_level(logging.INFO, logger="safecache"), pytest.warns(safecache.CacheWarning, match="to clone"):
        assert placer.place(src, str(tmp_path / "dst")) == "hardlink"
    assert [f[:2] for f in placer.fallbacks] == [("clone", "hardlink")]
    assert "Operation not supported" in placer.fallbacks[0][2]
    assert any("link mode clone failed" in r.getMessage() and r.levelno == logging.INFO for r in caplog.records)


def test_clone_makes_a_copy_on_write_clone_on_a_reflink_file_system(on_reflink: Path) -> None:
    data = os.urandom(4 * MiB)
    src = make(on_reflink / "src", data, 0o666)  # 0o666: the umask would narrow it
    dst = str(on_reflink / "dst")
    placer = _link.Placer("clone")
    with warnings.catch_warnings():
        warnings.simplefilter("error", safecache.CacheWarning)
        assert placer.place(src, dst) == "clone"
    assert placer.used == {"clone": 1} and placer.fallbacks == []
    assert_same_file_contents(src, dst)
    assert os.stat(dst).st_ino != os.stat(src).st_ino
    assert extents_shared(dst) and extents_shared(src)
    with open(dst, "r+b") as f:  # copy-on-write: the source keeps its bytes
        f.write(b"changed")
    assert Path(src).read_bytes() == data


def test_auto_clones_on_a_reflink_file_system(on_reflink: Path) -> None:
    placer = _link.Placer("auto")
    src = make(on_reflink / "src", os.urandom(MiB))
    assert placer.place(src, str(on_reflink / "dst")) == "clone"
    assert extents_shared(str(on_reflink / "dst"))


def test_auto_hard_links_where_the_file_system_cannot_clone_without_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    needs_no_reflink(tmp_path)
    placer = _link.Placer("auto")
    with caplog.at_level(logging.INFO, logger="safecache"), warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        for name in ("a", "b"):
            assert placer.place(make(tmp_path / name), str(tmp_path / f"{name}.out")) == "hardlink"
    assert cache_warnings(record) == []  # expected for "auto": logged, not warned
    assert [f[:2] for f in placer.fallbacks] == [("clone", "hardlink")]
    assert any("link mode clone failed" in r.getMessage() for r in caplog.records)
    assert placer.used == {"hardlink": 2}


def test_windows_block_cloning_on_a_reflink_file_system_clones(on_reflink: Path) -> None:
    src = make(on_reflink / "src", os.urandom(MiB))
    with windows_semantics(block_cloning=True):
        assert _link.Placer("clone").place(src, str(on_reflink / "dst")) == "clone"
    assert extents_shared(str(on_reflink / "dst"))


def test_a_clone_failure_leaves_no_destination_behind(on_reflink: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The clone worked, then setting the mode failed: the clone is removed."""
    src = make(on_reflink / "src", mode=0o666)

    def refuse(fd: int, mode: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fchmod", refuse)
    with pytest.raises(OSError) as info:
        OsOps().clone(src, str(on_reflink / "dst"))
    assert info.value.errno == errno.EIO
    assert not os.path.lexists(on_reflink / "dst")


# -- fallbacks decided on the first file --------------------------------------------------------------


def test_clone_unsupported_on_the_first_file_is_decided_for_all_files(tmp_path: Path) -> None:
    placer = _link.Placer("auto")
    with inject_errors(errno.EOPNOTSUPP, ops="clone") as faults:
        modes = [placer.place(make(tmp_path / n), str(tmp_path / f"{n}.out")) for n in "abc"]
    assert modes == ["hardlink"] * 3
    assert [c.op for c in faults.calls].count("clone") == 1  # never tried again
    assert [f[:2] for f in placer.fallbacks] == [("clone", "hardlink")]


def test_hardlink_across_devices_falls_back_to_copy_and_warns_once(tmp_path: Path) -> None:
    placer = _link.Placer("hardlink")
    with inject_errors(errno.EXDEV, ops="link") as faults, pytest.warns(safecache.CacheWarning) as record:
        modes = [placer.place(make(tmp_path / n), str(tmp_path / f"{n}.out")) for n in "abc"]
        assert _link.Placer("hardlink").place(make(tmp_path / "d"), str(tmp_path / "d.out")) == "copy"
    assert modes == ["copy"] * 3
    assert [c.op for c in faults.calls].count("link") == 2  # the first file of each placer
    assert placer.fallbacks == [("hardlink", "copy", placer.fallbacks[0][2])]
    assert "Invalid cross-device link" in placer.fallbacks[0][2]
    messages = cache_warnings(record.list)
    assert len(messages) == 1  # one per kind per process, however many placers
    assert "different file systems" in messages[0] and "SAFECACHE_LINK_MODE=copy" in messages[0]
    for n in "abc":
        assert_same_file_contents(str(tmp_path / n), str(tmp_path / f"{n}.out"))


@pytest.mark.parametrize("error", [errno.EPERM, errno.EACCES])
def test_hardlink_refused_on_the_first_file_falls_back_to_copy(tmp_path: Path, error: int) -> None:
    """Linux's protected_hardlinks (EPERM) or a cache owned by another user."""
    placer = _link.Placer("hardlink")
    with inject_errors(error, ops="link"), pytest.warns(safecache.CacheWarning, match="failed to hard-link"):
        assert placer.place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "copy"
    assert placer.used == {"copy": 1}


def test_auto_goes_down_the_whole_chain_on_the_first_file(tmp_path: Path) -> None:
    placer = _link.Placer("auto")
    with inject_errors(errno.EOPNOTSUPP, ops="clone"), inject_errors(errno.EXDEV, ops="link"):
        with pytest.warns(safecache.CacheWarning) as record:
            assert placer.place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "copy"
            assert placer.place(make(tmp_path / "b"), str(tmp_path / "b.out")) == "copy"
    assert [f[:2] for f in placer.fallbacks] == [("clone", "hardlink"), ("hardlink", "copy")]
    assert len(cache_warnings(record.list)) == 1  # hardlink -> copy only: auto's first step is expected


def test_symlink_refused_on_the_first_file_falls_back_to_copy(tmp_path: Path) -> None:
    placer = _link.Placer("symlink")
    with inject_errors(errno.EPERM, ops="symlink"), pytest.warns(safecache.CacheWarning, match="failed to symlink"):
        assert placer.place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "copy"
    assert not os.path.islink(tmp_path / "a.out")


def test_too_many_links_copies_only_that_file(tmp_path: Path) -> None:
    placer = _link.Placer("hardlink")
    with inject_errors(errno.EMLINK, ops="link", path_contains="b.bin"):
        with pytest.warns(safecache.CacheWarning, match="too many hard links"):
            modes = [placer.place(make(tmp_path / f"{n}.bin"), str(tmp_path / f"{n}.out")) for n in "abc"]
    assert modes == ["hardlink", "copy", "hardlink"]
    assert placer.used == {"hardlink": 2, "copy": 1}
    assert [f[:2] for f in placer.fallbacks] == [("hardlink", "copy")]
    assert os.stat(tmp_path / "b.out").st_ino != os.stat(tmp_path / "b.bin").st_ino


def test_too_many_links_on_the_first_file_does_not_decide(tmp_path: Path) -> None:
    placer = _link.Placer("hardlink")
    with inject_errors(errno.EMLINK, ops="link", times=1), pytest.warns(safecache.CacheWarning):
        modes = [placer.place(make(tmp_path / n), str(tmp_path / f"{n}.out")) for n in "ab"]
    assert modes == ["copy", "hardlink"]


def test_a_later_hardlink_failure_is_raised_not_fallen_back(tmp_path: Path) -> None:
    placer = _link.Placer("hardlink")
    assert placer.place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "hardlink"
    with inject_errors(errno.EXDEV, ops="link"), pytest.raises(OSError) as info:
        placer.place(make(tmp_path / "b"), str(tmp_path / "b.out"))
    assert info.value.errno == errno.EXDEV
    assert placer.fallbacks == []
    assert not os.path.lexists(tmp_path / "b.out")


def test_a_later_symlink_failure_is_raised(tmp_path: Path) -> None:
    placer = _link.Placer("symlink")
    placer.place(make(tmp_path / "a"), str(tmp_path / "a.out"))
    with inject_errors(errno.EPERM, ops="symlink"), pytest.raises(PermissionError):
        placer.place(make(tmp_path / "b"), str(tmp_path / "b.out"))


def test_an_error_that_is_not_a_fallback_is_raised_on_the_first_file(tmp_path: Path) -> None:
    placer = _link.Placer("hardlink")
    with inject_errors(errno.ENOSPC, ops="link", times=1), pytest.raises(OSError) as info:
        placer.place(make(tmp_path / "a"), str(tmp_path / "a.out"))
    assert info.value.errno == errno.ENOSPC and placer.fallbacks == []
    # Undecided still: the next file is the first to decide.
    assert placer.place(str(tmp_path / "a"), str(tmp_path / "a.out")) == "hardlink"


def test_copy_is_terminal(tmp_path: Path) -> None:
    placer = _link.Placer("copy")
    with inject_errors(errno.EXDEV, ops="copyfile"), pytest.raises(OSError) as info:
        placer.place(make(tmp_path / "a"), str(tmp_path / "a.out"))
    assert info.value.errno == errno.EXDEV and placer.fallbacks == []


def test_a_later_clone_failure_falls_back_for_that_file_only(tmp_path: Path, cloning: CloningOps) -> None:
    """uv's reflink exception (ZFS's EAGAIN, uv #19674): a clone that worked
    before may fail for one file, which goes down the chain alone."""
    placer = _link.Placer("clone")
    assert placer.place(make(tmp_path / "a.bin"), str(tmp_path / "a.out")) == "clone"
    with inject_errors(errno.EAGAIN, ops="clone", path_contains="b.bin"), pytest.warns(safecache.CacheWarning):
        assert placer.place(make(tmp_path / "b.bin"), str(tmp_path / "b.out")) == "hardlink"
        assert placer.place(make(tmp_path / "c.bin"), str(tmp_path / "c.out")) == "clone"
    assert placer.used == {"clone": 2, "hardlink": 1}
    assert [f[:2] for f in placer.fallbacks] == [("clone", "hardlink")]


def test_a_later_clone_failure_goes_down_the_whole_chain_for_that_file(tmp_path: Path, cloning: CloningOps) -> None:
    placer = _link.Placer("clone")
    placer.place(make(tmp_path / "a.bin"), str(tmp_path / "a.out"))
    with inject_errors(errno.EOPNOTSUPP, ops="clone", path_contains="b.bin"), inject_errors(errno.EXDEV, ops="link"):
        with pytest.warns(safecache.CacheWarning):
            assert placer.place(make(tmp_path / "b.bin"), str(tmp_path / "b.out")) == "copy"
    assert placer.place(make(tmp_path / "c.bin"), str(tmp_path / "c.out")) == "clone"


def test_a_later_clone_failure_with_another_error_is_raised(tmp_path: Path, cloning: CloningOps) -> None:
    placer = _link.Placer("clone")
    placer.place(make(tmp_path / "a"), str(tmp_path / "a.out"))
    with inject_errors(errno.ENOSPC, ops="clone"), pytest.raises(OSError) as info:
        placer.place(make(tmp_path / "b"), str(tmp_path / "b.out"))
    assert info.value.errno == errno.ENOSPC and placer.fallbacks == []


def test_a_transient_clone_failure_on_the_first_file_does_not_decide(tmp_path: Path, cloning: CloningOps) -> None:
    placer = _link.Placer("clone")
    with inject_errors(errno.EAGAIN, ops="clone", times=1), pytest.warns(safecache.CacheWarning):
        modes = [placer.place(make(tmp_path / n), str(tmp_path / f"{n}.out")) for n in "ab"]
    assert modes == ["hardlink", "clone"]


@pytest.mark.filterwarnings("ignore::safecache.CacheWarning")
def test_every_placement_goes_through_osops(tmp_path: Path) -> None:
    src = make(tmp_path / "src")
    with inject_errors(errno.EIO, ops=(), path_contains="never") as faults:
        for mode in ("clone", "hardlink", "symlink", "copy"):
            _link.Placer(mode).place(src, str(tmp_path / f"out-{mode}"))
    assert [c.op for c in faults.calls][:1] == ["clone"]
    assert {"clone", "link", "symlink", "copyfile"} <= {c.op for c in faults.calls}
    assert all(c.dst is not None for c in faults.calls)  # both paths are recorded


# -- under the Windows emulator -------------------------------------------------------------------


def test_windows_auto_falls_back_from_clone_to_hardlink(tmp_path: Path) -> None:
    placer = _link.Placer("auto")
    with windows_semantics():
        assert placer.place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "hardlink"
        assert placer.place(make(tmp_path / "b"), str(tmp_path / "b.out")) == "hardlink"
    assert [f[:2] for f in placer.fallbacks] == [("clone", "hardlink")]
    assert "WinError 50" in placer.fallbacks[0][2]


def test_windows_clone_is_refused_with_error_50(tmp_path: Path) -> None:
    with windows_semantics() as ops, pytest.raises(OSError) as info:
        ops.clone(make(tmp_path / "a"), str(tmp_path / "b"))
    assert info.value.winerror == 50 and info.value.errno == errno.EINVAL  # type: ignore[attr-defined]
    assert not os.path.lexists(tmp_path / "b")


def test_windows_clone_of_a_missing_source_is_error_2(tmp_path: Path) -> None:
    with windows_semantics() as ops, pytest.raises(FileNotFoundError) as info:
        ops.clone(str(tmp_path / "missing"), str(tmp_path / "b"))
    assert info.value.winerror == 2  # type: ignore[attr-defined]


def test_windows_block_cloning_where_linux_cannot_clone_is_error_50(tmp_path: Path) -> None:
    needs_no_reflink(tmp_path)
    with windows_semantics(block_cloning=True) as ops, pytest.raises(OSError) as info:
        ops.clone(make(tmp_path / "a"), str(tmp_path / "b"))
    assert info.value.winerror == 50  # type: ignore[attr-defined]
    assert not os.path.lexists(tmp_path / "b")
    assert ops.options["block_cloning"] is True


def test_windows_symlink_without_the_privilege_falls_back_to_copy(tmp_path: Path) -> None:
    placer = _link.Placer("symlink")
    with windows_semantics(), pytest.warns(safecache.CacheWarning, match="Developer Mode"):
        assert placer.place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "copy"
    assert "WinError 1314" in placer.fallbacks[0][2]
    assert not os.path.islink(tmp_path / "a.out")


def test_windows_symlink_with_developer_mode_is_a_symlink(tmp_path: Path) -> None:
    with windows_semantics(symlinks=True):
        assert _link.Placer("symlink").place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "symlink"


def test_windows_without_hard_links_falls_back_to_copy(tmp_path: Path) -> None:
    placer = _link.Placer("auto")
    with windows_semantics(hardlinks=False), pytest.warns(safecache.CacheWarning, match="hard-link"):
        assert placer.place(make(tmp_path / "a"), str(tmp_path / "a.out")) == "copy"
        assert placer.place(make(tmp_path / "b"), str(tmp_path / "b.out")) == "copy"
    assert [f[:2] for f in placer.fallbacks] == [("clone", "hardlink"), ("hardlink", "copy")]
    assert "WinError 1]" in placer.fallbacks[1][2]


def test_windows_sharing_violation_on_a_hardlink_is_not_a_fallback(tmp_path: Path) -> None:
    """32 is another process holding the file, not a missing capability."""
    placer = _link.Placer("hardlink")
    with windows_semantics(), inject_errors(WinError(32), ops="link"), pytest.raises(PermissionError):
        placer.place(make(tmp_path / "a"), str(tmp_path / "a.out"))
    assert placer.fallbacks == []


def test_windows_copy_of_a_read_only_file_is_read_only_and_its_failure_leaves_nothing(tmp_path: Path) -> None:
    src = make(tmp_path / "src", os.urandom(3 * MiB), 0o444)
    with windows_semantics() as ops:
        ops.copyfile(src, str(tmp_path / "dst"))
        assert_same_file_contents(src, str(tmp_path / "dst"), windows=True)
        with pytest.raises(FileExistsError) as info:
            ops.copyfile(src, str(tmp_path / "dst"))
        assert getattr(info.value, "emulated_winerror", None) == 80
        with inject_errors(errno.EIO, ops="chmod"):  # the last step fails
            with pytest.raises(OSError):
                _osops._copy_file(_osops.current, src, str(tmp_path / "dst2"), windows=True)
        assert not os.path.lexists(tmp_path / "dst2")


# -- copyfile -------------------------------------------------------------------------------------

PRIMITIVES = ("copy_file_range", "sendfile", "loop")


def use_primitive(monkeypatch: pytest.MonkeyPatch, primitive: str) -> dict[str, int]:
    """Leave only ``primitive`` (and the loop) to copyfile; count the calls."""
    counts = {name: 0 for name in PRIMITIVES}
    for name in ("copy_file_range", "sendfile"):
        if name != primitive:
            monkeypatch.delattr(os, name, raising=False)
        elif hasattr(os, name):
            real = getattr(os, name)

            def counted(*args: Any, _real: Callable[..., int] = real, _name: str = name) -> int:
                counts[_name] += 1
                return _real(*args)

            monkeypatch.setattr(os, name, counted)
        else:
            pytest.skip(f"os.{name} is missing here")
    real_read = OsOps.read

    def read(self: OsOps, fd: int, n: int) -> bytes:
        counts["loop"] += 1
        return real_read(self, fd, n)

    monkeypatch.setattr(OsOps, "read", read)
    return counts


@pytest.mark.parametrize("primitive", PRIMITIVES)
def test_copyfile_copies_a_large_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primitive: str) -> None:
    src = make(tmp_path / "src", os.urandom(20 * MiB + 12345), 0o666)
    counts = use_primitive(monkeypatch, primitive)
    OsOps().copyfile(src, str(tmp_path / "dst"))
    assert_same_file_contents(src, str(tmp_path / "dst"))
    assert counts[primitive] > 0
    assert all(n == 0 for name, n in counts.items() if name not in (primitive, "loop"))
    if primitive != "loop":
        assert counts["loop"] == 0


@pytest.mark.parametrize("primitive", ["copy_file_range", "sendfile"])
def test_copyfile_failing_midway_leaves_no_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, primitive: str
) -> None:
    src = make(tmp_path / "src", os.urandom(20 * MiB))
    use_primitive(monkeypatch, primitive)
    real = getattr(os, primitive)
    calls = []

    def partial_then_eio(*args: Any) -> int:
        if calls:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        calls.append(args)
        args = list(args)  # type: ignore[assignment]
        args[2 if primitive == "copy_file_range" else 3] = MiB  # count
        return int(real(*args))

    monkeypatch.setattr(os, primitive, partial_then_eio)
    with pytest.raises(OSError) as info:
        OsOps().copyfile(src, str(tmp_path / "dst"))
    assert info.value.errno == errno.EIO
    assert calls  # it did copy a first part
    assert not os.path.lexists(tmp_path / "dst")


def test_copyfile_failing_midway_in_the_loop_leaves_no_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = make(tmp_path / "src", os.urandom(20 * MiB))
    use_primitive(monkeypatch, "loop")
    written = []
    real_write = OsOps.write

    def write(self: OsOps, fd: int, data: bytes | memoryview) -> int:
        if written:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        written.append(len(data))
        return real_write(self, fd, data)

    monkeypatch.setattr(OsOps, "write", write)
    with pytest.raises(OSError) as info:
        OsOps().copyfile(src, str(tmp_path / "dst"))
    assert info.value.errno == errno.EIO and written == [MiB]
    assert not os.path.lexists(tmp_path / "dst")


def test_copyfile_failure_under_fault_injection_leaves_no_destination(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """OsOps.copyfile's loop runs through the operations object it is given
    (the emulator's copyfile works this way), so a FaultOps can fail its
    writes."""
    src = make(tmp_path / "src", os.urandom(3 * MiB))
    use_primitive(monkeypatch, "loop")
    with inject_errors(errno.EIO, ops="write", after=True) as faults:
        with pytest.raises(OSError) as info:
            _osops._copy_file(faults, src, str(tmp_path / "dst"), windows=False)
    assert info.value.errno == errno.EIO and faults.fired == 1
    assert [c.op for c in faults.calls if c.op in ("open", "unlink")] == ["open", "open", "unlink"]
    assert not os.path.lexists(tmp_path / "dst")


def test_copyfile_moves_on_when_copy_file_range_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels before 5.3 refuse cross-device copy_file_range (EXDEV)."""
    src = make(tmp_path / "src", os.urandom(5 * MiB))
    counts = use_primitive(monkeypatch, "sendfile")

    def refuse(*args: Any) -> int:
        raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))

    monkeypatch.setattr(os, "copy_file_range", refuse, raising=False)
    OsOps().copyfile(src, str(tmp_path / "dst"))
    assert_same_file_contents(src, str(tmp_path / "dst"))
    assert counts["sendfile"] > 0


def test_copyfile_reads_with_the_loop_when_the_kernel_copies_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems report 0 bytes copied for a file that has data."""
    src = make(tmp_path / "src", b"x" * 100)
    counts = use_primitive(monkeypatch, "loop")
    monkeypatch.setattr(os, "copy_file_range", lambda *args: 0, raising=False)
    OsOps().copyfile(src, str(tmp_path / "dst"))
    assert Path(tmp_path / "dst").read_bytes() == b"x" * 100 and counts["loop"] > 0


def test_copyfile_keeps_memory_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = make(tmp_path / "src", os.urandom(20 * MiB))
    use_primitive(monkeypatch, "loop")  # the only path that holds data in Python
    tracemalloc.start()
    try:
        OsOps().copyfile(src, str(tmp_path / "dst"))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * MiB
    assert_same_file_contents(src, str(tmp_path / "dst"))


def test_copyfile_gives_the_exact_mode_whatever_the_umask(tmp_path: Path) -> None:
    src = make(tmp_path / "src", mode=0o777)
    old = os.umask(0o077)
    try:
        OsOps().copyfile(src, str(tmp_path / "dst"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "dst").st_mode) == 0o777


def test_copyfile_and_clone_never_follow_a_symlink(tmp_path: Path) -> None:
    make(tmp_path / "real")
    os.symlink(tmp_path / "real", tmp_path / "link")
    for operation in (OsOps().copyfile, OsOps().clone):
        with pytest.raises(OSError) as info:
            operation(str(tmp_path / "link"), str(tmp_path / "dst"))
        assert info.value.errno == errno.ELOOP
        assert not os.path.lexists(tmp_path / "dst")


def test_copyfile_and_clone_refuse_a_directory_or_a_fifo(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")  # must not block the open either
    for operation in (OsOps().copyfile, OsOps().clone):
        with pytest.raises(IsADirectoryError):
            operation(str(tmp_path / "dir"), str(tmp_path / "dst"))
        with pytest.raises(OSError) as info:
            operation(str(tmp_path / "fifo"), str(tmp_path / "dst"))
        assert info.value.errno == errno.EINVAL
        assert not os.path.lexists(tmp_path / "dst")


def test_copyfile_onto_an_existing_name_leaves_that_file_alone(tmp_path: Path) -> None:
    src = make(tmp_path / "src")
    dst = make(tmp_path / "dst", b"theirs")
    for operation in (OsOps().copyfile, OsOps().clone):
        with pytest.raises(FileExistsError):
            operation(src, dst)
        assert Path(dst).read_bytes() == b"theirs"


def test_the_windows_module_is_never_imported_here(tmp_path: Path) -> None:
    src = make(tmp_path / "src")
    for mode in ("auto", "hardlink", "symlink", "copy"):
        _link.Placer(mode).place(src, str(tmp_path / f"out-{mode}"))
    assert "safecache._win32" not in sys.modules
