"""Tests of safecache.testing.patch_os: the Windows rules for the code under
test's own calls (open, os.replace, tempfile, mmap, ...), and the
SAFECACHE_EMULATE_WINDOWS variable that turns it on in other processes.

Another process holds files open in a forked child, synchronised by pipes.
"""

from __future__ import annotations

import builtins
import errno
import fcntl
import io
import mmap
import multiprocessing
import multiprocessing.connection
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pytest

import safecache
from safecache import _osops
from safecache.testing import WindowsOps, _environ, holding, inject_errors, patch_os, windows_semantics

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the emulator needs Linux OFD locks")

FORK = multiprocessing.get_context("fork")
SRC = str(Path(safecache.__file__).resolve().parent.parent)
ORIGINALS = {
    "os.open": os.open,
    "os.replace": os.replace,
    "os.rename": os.rename,
    "os.unlink": os.unlink,
    "os.remove": os.remove,
    "os.rmdir": os.rmdir,
    "os.stat": os.stat,
    "os.listdir": os.listdir,
    "builtins.open": builtins.open,
    "io.open": io.open,
    "mmap.mmap": mmap.mmap,
    "fcntl.lockf": fcntl.lockf,
}


def _current() -> dict[str, object]:
    return {name: getattr(sys.modules[name.split(".")[0]], name.split(".")[1]) for name in ORIGINALS}


@pytest.fixture(autouse=True)
def _nothing_left_patched(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(_environ.VARIABLE, raising=False)
    yield
    assert _current() == ORIGINALS, "a test left functions patched"


@pytest.fixture
def win() -> Iterator[WindowsOps]:
    with patch_os() as ops:
        yield ops


def underneath(exc: pytest.ExceptionInfo[BaseException]) -> int | None:
    return getattr(exc.value, "emulated_winerror", None)


def _run_in_child(action: Callable[[], object], conn: multiprocessing.connection.Connection) -> None:
    held = action()
    conn.send("held")
    conn.recv()
    del held


@contextmanager
def in_child(action: Callable[[], object]) -> Iterator[None]:
    """A forked child (which inherits the patches) runs ``action`` and keeps
    what it returns alive inside the block."""
    parent, child = FORK.Pipe()
    proc = FORK.Process(target=_run_in_child, args=(action, child), daemon=True)
    proc.start()
    try:
        assert parent.recv() == "held"
        yield
    finally:
        parent.send("release")
        proc.join()
        assert proc.exitcode == 0


# -- the bug users have: ruff #12284 -----------------------------------------------------


def test_replacing_a_file_another_process_reads_with_open_is_access_denied(tmp_path: Path, win: WindowsOps) -> None:
    cache = tmp_path / "cache.json"
    cache.write_text("{}")
    fd, tmp = tempfile.mkstemp(dir=tmp_path)
    os.close(fd)
    with in_child(lambda: open(cache, "rb")):
        with pytest.raises(PermissionError) as exc:
            os.replace(tmp, cache)
    assert exc.value.winerror == 5  # type: ignore[attr-defined]
    assert "Access is denied" in str(exc.value)
    os.replace(tmp, cache)  # the reader has closed it


def test_removing_a_file_another_process_has_open_is_a_sharing_violation(tmp_path: Path, win: WindowsOps) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with in_child(lambda: open(path, "rb")):
        with pytest.raises(PermissionError) as exc:
            os.remove(path)
    assert exc.value.winerror == 32  # type: ignore[attr-defined]


def test_a_file_tempfile_holds_open_cannot_be_renamed(tmp_path: Path, win: WindowsOps) -> None:
    with tempfile.NamedTemporaryFile(dir=tmp_path, delete=False) as tmp:
        with pytest.raises(PermissionError) as exc:
            os.rename(tmp.name, tmp_path / "target")
    assert exc.value.winerror == 32  # type: ignore[attr-defined]
    os.rename(tmp.name, tmp_path / "target")


def test_pathlib_goes_through_the_emulator(tmp_path: Path, win: WindowsOps) -> None:
    target, new = tmp_path / "target", tmp_path / "new"
    target.write_text("old")
    new.write_text("new")
    with target.open("rb"):
        with pytest.raises(PermissionError) as exc:
            new.replace(target)
    assert exc.value.winerror == 5  # type: ignore[attr-defined]


# -- which calls are routed -----------------------------------------------------------------


def test_the_patches_are_undone_when_the_block_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), patch_os():
        assert os.replace is not ORIGINALS["os.replace"]
        raise RuntimeError
    assert _current() == ORIGINALS
    assert _osops.current is _osops.real


def test_safecache_works_as_usual_under_patch_os(tmp_path: Path, win: WindowsOps) -> None:
    bucket = safecache.Cache(tmp_path / "cache").bucket("lint", version=1)
    assert bucket.put("key", b"value")
    with holding(str(tmp_path / "cache")):  # a directory held open by another program
        assert bucket.get("key") == b"value"
    assert bucket.put("key", b"value 2") in (True, False)


def test_names_bound_before_the_block_are_not_routed(tmp_path: Path) -> None:
    from os import replace  # what the documentation says is not routed

    (tmp_path / "a").write_text("a")
    (tmp_path / "b").write_text("b")
    with patch_os(), open(tmp_path / "b", "rb"):
        replace(tmp_path / "a", tmp_path / "b")  # Linux semantics: no error
    assert (tmp_path / "b").read_text() == "a"


def test_special_files_are_left_alone(win: WindowsOps) -> None:
    with open("/dev/null", "w") as null:  # "null" would be a device name Windows refuses to create
        null.write("x")


def test_descriptors_are_left_alone(tmp_path: Path, win: WindowsOps) -> None:
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    with open(fd, "wb") as f:  # os.fdopen
        f.write(b"x")
    assert (tmp_path / "f").read_bytes() == b"x"


def test_fault_injection_stacks_on_patch_os(tmp_path: Path, win: WindowsOps) -> None:
    with inject_errors(errno.EROFS, ops="open", path_contains="refused"):
        open(tmp_path / "allowed", "w").close()
        with pytest.raises(OSError) as exc:
            open(tmp_path / "refused", "w")
    assert exc.value.errno == errno.EROFS


def test_windows_semantics_inside_patch_os_takes_over_the_routing(tmp_path: Path, win: WindowsOps) -> None:
    with windows_semantics(strict_names=False):
        open(tmp_path / "a:b", "w").close()
    with pytest.raises(OSError) as exc:
        open(tmp_path / "c:d", "w")
    assert exc.value.errno == errno.EINVAL and underneath(exc) == 123


# -- directories -------------------------------------------------------------------------------


def test_opening_a_directory_with_open_is_permission_denied(tmp_path: Path, win: WindowsOps) -> None:
    with pytest.raises(PermissionError) as exc:
        open(tmp_path)
    assert underneath(exc) == 5 and getattr(exc.value, "winerror", None) is None  # the C runtime's _wopen


def test_posix_only_code_may_still_open_a_directory_with_o_directory(tmp_path: Path, win: WindowsOps) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.fsync(fd)
    os.close(fd)


def test_removing_a_directory_another_process_holds_is_a_sharing_violation(tmp_path: Path, win: WindowsOps) -> None:
    (tmp_path / "d").mkdir()
    with in_child(lambda: os.open(tmp_path / "d", os.O_RDONLY | os.O_DIRECTORY)):
        with pytest.raises(PermissionError) as exc:
            os.rmdir(tmp_path / "d")
    assert exc.value.winerror == 32  # type: ignore[attr-defined]
    os.rmdir(tmp_path / "d")


def test_the_standard_librarys_tree_removal_works(tmp_path: Path, win: WindowsOps) -> None:
    (tmp_path / "t" / "u").mkdir(parents=True)
    (tmp_path / "t" / "u" / "f").write_text("x")
    shutil.rmtree(tmp_path / "t")
    with tempfile.TemporaryDirectory(dir=tmp_path) as scratch:
        (Path(scratch) / "f").write_text("x")
    assert os.listdir(tmp_path) == []


# -- mapped views ---------------------------------------------------------------------------------


def _mapped(path: Path) -> mmap.mmap:
    with open(path, "r+b") as f:
        return mmap.mmap(f.fileno(), 0)


def test_truncating_a_file_with_a_mapped_view_fails_with_1224(tmp_path: Path, win: WindowsOps) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"x" * 100)
    view = _mapped(path)
    with pytest.raises(OSError) as opened:
        open(path, "wb")  # CreateFileW with CREATE_ALWAYS; _wopen turns 1224 into EINVAL
    with open(path, "r+b") as f, pytest.raises(PermissionError) as shrunk:
        f.truncate(10)  # _chsize_s: SetEndOfFile fails, errno EACCES
    assert opened.value.errno == errno.EINVAL and underneath(opened) == 1224
    assert underneath(shrunk) == 1224
    assert path.read_bytes() == b"x" * 100
    view.close()
    os.truncate(path, 10)
    assert path.stat().st_size == 10


def test_growing_a_file_with_a_mapped_view_is_allowed(tmp_path: Path, win: WindowsOps) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"x" * 100)
    with _mapped(path), open(path, "r+b") as f:
        f.truncate(200)  # _chsize_s extends by writing zeros
    assert path.stat().st_size == 200


def test_a_mapped_view_keeps_its_file_open_after_the_file_is_closed(tmp_path: Path, win: WindowsOps) -> None:
    path = tmp_path / "m"
    path.write_bytes(b"x" * 100)
    with _mapped(path):  # the file object is closed already
        with pytest.raises(PermissionError) as exc:
            os.remove(path)
    assert exc.value.winerror == 32  # type: ignore[attr-defined]
    os.remove(path)


# -- byte-range locks ---------------------------------------------------------------------------------


def _locked(path: Path, length: int, cmd: int = fcntl.LOCK_EX) -> int:
    fd = os.open(path, os.O_RDWR)
    fcntl.lockf(fd, cmd | fcntl.LOCK_NB, length, 0)
    return fd


def test_reading_bytes_another_process_has_locked_fails_with_33(tmp_path: Path, win: WindowsOps) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    with in_child(lambda: _locked(path, 4)), open(path, "rb", buffering=0) as f:
        with pytest.raises(PermissionError) as exc:
            f.read(2)
        f.seek(5)
        assert f.read(5) == b"56789"  # outside the locked range
    assert underneath(exc) == 33 and getattr(exc.value, "winerror", None) is None


def test_a_shared_record_lock_refuses_writes_but_not_reads(tmp_path: Path, win: WindowsOps) -> None:
    path = tmp_path / "data"
    path.write_bytes(b"0123456789")
    with in_child(lambda: _locked(path, 0, fcntl.LOCK_SH)), open(path, "r+b", buffering=0) as f:
        assert f.read(3) == b"012"
        with pytest.raises(PermissionError) as exc:
            f.write(b"x")
    assert underneath(exc) == 33


def test_a_whole_file_record_lock_of_the_code_under_test_works(tmp_path: Path, win: WindowsOps) -> None:
    """The emulator's records sit at offsets a lock "to the end of the file"
    would cover; patch_os keeps such a lock below them."""
    with open(tmp_path / "lock", "w") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write("held")
        fcntl.lockf(f, fcntl.LOCK_UN)


# -- delete-pending names (posix_delete=False) -------------------------------------------------------


def test_a_delete_pending_name_stays_listed_and_present(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    with patch_os(posix_delete=False):
        with holding(str(path), share_delete=True):  # a reader that shares delete
            os.remove(path)
            assert os.listdir(tmp_path) == ["f"]
            assert [entry.name for entry in os.scandir(tmp_path)] == ["f"]
            assert os.path.exists(path)
            with pytest.raises(PermissionError):
                open(path, "rb")
        assert os.listdir(tmp_path) == []  # the last handle closed
        assert not os.path.exists(path)


# -- in other processes: SAFECACHE_EMULATE_WINDOWS ----------------------------------------------


def _python(code: str, value: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != _environ.VARIABLE}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))
    if value is not None:
        env[_environ.VARIABLE] = value
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True)


NAIVE_WRITE = """
    import os, sys, tempfile
    import safecache  # a tool that uses safecache somewhere: the variable is read here
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(sys.argv[1]))
    os.close(fd)
    try:
        os.replace(tmp, sys.argv[1])
    except PermissionError as exc:
        print("denied", exc.winerror)
    else:
        print("replaced")
"""


def test_the_variable_turns_the_emulator_on_in_a_child_process(tmp_path: Path, win: WindowsOps) -> None:
    target = tmp_path / "cache.json"
    target.write_text("{}")
    with open(target, "rb"):
        env = dict(os.environ, PYTHONPATH=SRC, **{_environ.VARIABLE: "1"})
        child = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(NAIVE_WRITE), str(target)], env=env, capture_output=True, text=True
        )
    assert child.stdout.strip() == "denied 5", child.stderr


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1", {"transient_denials": 0.0, "posix_delete": True}),
        ("0.25", {"transient_denials": 0.25}),
        ('{"posix_delete": false, "seed": 7}', {"posix_delete": False, "seed": 7}),
    ],
)
def test_the_variable_sets_the_options(value: str, expected: dict[str, object]) -> None:
    child = _python(
        """
        import json, safecache
        from safecache.testing import _environ
        print(json.dumps(_environ.active().options))
        """,
        value,
    )
    import json

    options = json.loads(child.stdout.strip().splitlines()[-1])
    assert {key: options[key] for key in expected} == expected, child.stderr


@pytest.mark.parametrize("value", [None, ""])
def test_without_the_variable_importing_safecache_imports_no_testing_code(value: str | None) -> None:
    child = _python("import sys, safecache; print('safecache.testing' in sys.modules)", value)
    assert child.stdout.strip() == "False", child.stderr


@pytest.mark.parametrize("value", ["0", "off", "false"])
def test_the_variable_can_say_off(value: str) -> None:
    child = _python(
        "import os, safecache; print(safecache._osops.current is safecache._osops.real, os.open.__module__)", value
    )
    assert child.stdout.split() == ["True", "posix"], child.stderr


def test_a_value_it_cannot_read_fails_the_import_with_the_variable_named() -> None:
    child = _python("import safecache", "maybe")
    assert child.returncode != 0
    assert "SAFECACHE_EMULATE_WINDOWS='maybe'" in child.stderr


def test_xdist_workers_draw_different_seeded_streams(monkeypatch: pytest.MonkeyPatch) -> None:
    from safecache.testing._perprocess import _stream_seed

    monkeypatch.setenv("PYTEST_XDIST_WORKER", "gw3")
    assert _stream_seed(7, os.getpid()) == "7/gw3"
