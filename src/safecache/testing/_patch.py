"""``patch_os``: the Windows emulator for the code under test's own calls.

:func:`windows_semantics` changes only ``safecache._osops.current``, which
safecache's own calls go through.  :func:`patch_os` installs the same
emulator there and also routes the standard library's calls through it:
``os.open``, ``os.replace``, ``os.rename``, ``os.unlink``/``os.remove``,
``os.rmdir``, ``os.truncate``/``os.ftruncate``, ``builtins.open`` and
``io.open`` (and so ``pathlib``, ``tempfile``, ``shutil``), ``mmap.mmap``,
and with ``posix_delete=False`` the listings and ``stat`` that see
delete-pending names.  A tool author's naive cache then meets the rules a
Windows machine would apply to it.

Which calls are routed: those made by the code under test, looked up
through the module at call time (``os.replace(...)``, not a name bound by
``from os import replace`` before the block).  Calls the emulator makes
itself, safecache's own (already routed through ``_osops.current``) and the
test framework's (pytest, pluggy, xdist, hypothesis, coverage) go to the
real functions; so do calls on descriptors and on ``/dev``, ``/proc`` and
``/sys``.

Whole-file record locks (``fcntl.lockf(fd, LOCK_EX)``, length 0) are cut
at ``_ranges._LIMIT``: the emulator keeps its records above it, and a lock
to infinity would collide with them.
"""

from __future__ import annotations

import builtins
import contextlib
import io
import mmap
import os
import sys
import threading
from types import FrameType
from typing import Any, Callable, Iterator

from safecache import _osops

from ._files import open_file
from ._handles import _FLOCK
from ._install import _installed
from ._mapped import _EmulatedMmap
from ._ranges import _LIMIT
from ._windows import WindowsOps

try:
    import fcntl
except ImportError:  # Windows: the emulator is not used there
    fcntl = None  # type: ignore[assignment]

_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_SPECIAL = ("/dev/", "/proc/", "/sys/")
# The standard library's POSIX-only directory walkers (shutil.rmtree with
# descriptors, os.fwalk) open directories, which Windows' os.open cannot;
# on Windows they take other paths, so here they open them as POSIX code.
_POSIX_ONLY_CALLERS = frozenset({"shutil", "os"})

# Callers whose calls stay real: safecache itself and the test framework.
_NOT_ROUTED = frozenset(
    {"safecache", "_pytest", "pytest", "pluggy", "xdist", "execnet", "hypothesis", "_hypothesis_pytestplugin",
     "coverage", "pytest_cov"}
)  # fmt: skip
_STDLIB = frozenset(sys.stdlib_module_names) - {"__main__"}

_local = threading.local()  # .depth: routed calls in progress on this thread
_lock = threading.Lock()
_saved: dict[str, Any] = {}  # "os.open" -> the function patch_os replaced
_depth = {"all": 0, "listing": 0}


def _real(name: str) -> Any:
    return _saved[name]


def _routed_caller(depth: int) -> bool:
    """Whether the code that called the patched function (``depth`` frames
    above the caller of this one) goes to the emulator.

    The caller that counts is the nearest one outside the standard library
    (``pathlib``, ``tempfile``, ``shutil``... call these functions on behalf
    of someone).  Not routed: the emulator's own calls (on this thread),
    safecache's (already routed through ``_osops.current``), and the test
    framework's -- a scanner's transient denial of pytest reading its own
    plugins would only break the run, not test the code under test.
    """
    if getattr(_local, "depth", 0) or _osops.current is _osops.real:
        return False
    frame: FrameType | None
    try:
        frame = sys._getframe(depth + 1)
    except ValueError:
        return True
    while frame is not None:
        module = str(frame.f_globals.get("__name__", ""))
        top = module.partition(".")[0]
        if top not in _STDLIB and module != __name__:  # our own wrappers: io.open calling tempfile's opener
            return top not in _NOT_ROUTED
        frame = frame.f_back
    return True


def _target(path: Any, dir_fd: int | None = None) -> str | None:
    """The path to hand the emulator, or None for a call it must not see."""
    if isinstance(path, int) or not _routed_caller(2):  # _target, the patched function, its caller
        return None
    try:
        name = os.fsdecode(os.fspath(path))
    except TypeError:
        return None
    if dir_fd is not None and not os.path.isabs(name):
        try:
            name = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)
        except OSError:
            return None
    return None if name.startswith(_SPECIAL) else name


def _call(method: str, *args: Any, **kwargs: Any) -> Any:
    """``_osops.current.<method>(...)``, with this thread's own calls inside
    it going to the real functions."""
    _local.depth = getattr(_local, "depth", 0) + 1
    try:
        return getattr(_osops.current, method)(*args, **kwargs)
    finally:
        _local.depth -= 1


# -- the patched functions -----------------------------------------------------------
def _os_open(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
    target = _target(path, dir_fd)
    if target is None:
        return int(_real("os.open")(path, flags, mode, dir_fd=dir_fd))
    if sys._getframe(1).f_globals.get("__name__") in _POSIX_ONLY_CALLERS and os.path.isdir(target):
        flags |= _O_DIRECTORY
    return int(_call("open", target, flags, mode, share_delete=False))


def _two_paths(name: str) -> Callable[..., None]:
    def patched(src: Any, dst: Any, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None) -> None:
        source = _target(src, src_dir_fd)
        target = _target(dst, dst_dir_fd) if source is not None else None
        if source is None or target is None:
            _real(f"os.{name}")(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
            return
        _call(name, source, target)

    patched.__name__ = patched.__qualname__ = name
    return patched


def _one_path(name: str, method: str) -> Callable[..., None]:
    def patched(path: Any, *, dir_fd: int | None = None) -> None:
        target = _target(path, dir_fd)
        if target is None:
            _real(f"os.{name}")(path, dir_fd=dir_fd)
            return
        _call(method, target)

    patched.__name__ = patched.__qualname__ = name
    return patched


def _os_truncate(path: Any, length: int) -> None:
    if isinstance(path, int):
        if _routed_caller(1):
            return _call("ftruncate", path, length)  # type: ignore[no-any-return]
        return _real("os.truncate")(path, length)  # type: ignore[no-any-return]
    target = _target(path)
    if target is None:
        return _real("os.truncate")(path, length)  # type: ignore[no-any-return]
    # os.truncate on Windows opens the file (_wopen) and calls _chsize_s.
    fd = _call("open", target, os.O_WRONLY | _osops.O_CLOEXEC, 0o666, share_delete=False)
    try:
        _call("ftruncate", fd, length)
    finally:
        _call("close", fd)


def _os_ftruncate(fd: int, length: int) -> None:
    if not _routed_caller(1):
        return _real("os.ftruncate")(fd, length)  # type: ignore[no-any-return]
    _call("ftruncate", fd, length)


def _io_open(
    file: Any,
    mode: str = "r",
    buffering: int = -1,
    encoding: str | None = None,
    errors: str | None = None,
    newline: str | None = None,
    closefd: bool = True,
    opener: Callable[[str, int], int] | None = None,
) -> Any:
    target = None if opener is not None else _target(file)
    if target is not None:

        def handle(_name: object, flags: int) -> int:
            return int(_call("open", target, flags, 0o666, share_delete=False))

        opened = open_file(os.fspath(file), mode, buffering, encoding, errors, newline, closefd, handle)
        if opened is not None:
            return opened
    return _real("io.open")(file, mode, buffering, encoding, errors, newline, closefd, opener)


def _os_listdir(path: Any = ".") -> Any:
    target = None if isinstance(path, bytes) else _target("." if path is None else path)
    return _real("os.listdir")(path) if target is None else _call("listdir", target)


def _os_scandir(path: Any = ".") -> Any:
    target = None if isinstance(path, bytes) else _target("." if path is None else path)
    return _real("os.scandir")(path) if target is None else _call("scandir", target)


def _os_stat(path: Any, *, dir_fd: int | None = None, follow_symlinks: bool = True) -> os.stat_result:
    target = _target(path, dir_fd)
    if target is None:
        return _real("os.stat")(path, dir_fd=dir_fd, follow_symlinks=follow_symlinks)  # type: ignore[no-any-return]
    return _call("stat" if follow_symlinks else "lstat", target)  # type: ignore[no-any-return]


def _os_lstat(path: Any, *, dir_fd: int | None = None) -> os.stat_result:
    target = _target(path, dir_fd)
    if target is None:
        return _real("os.lstat")(path, dir_fd=dir_fd)  # type: ignore[no-any-return]
    return _call("lstat", target)  # type: ignore[no-any-return]


def _to_limit(fd: Any, whence: int, start: int) -> int:
    """The length of a record lock from ``start`` to ``_LIMIT``."""
    number = fd if isinstance(fd, int) else fd.fileno()
    if whence == os.SEEK_CUR:
        start += os.lseek(number, 0, os.SEEK_CUR)
    elif whence == os.SEEK_END:
        start += os.fstat(number).st_size
    return max(_LIMIT - start, 1)


def _fcntl_lockf(fd: Any, cmd: int, len: int = 0, start: int = 0, whence: int = 0, /) -> Any:
    if len == 0:
        len = _to_limit(fd, whence, start)
    return _real("fcntl.lockf")(fd, cmd, len, start, whence)


def _fcntl_fcntl(fd: Any, cmd: int, arg: Any = 0, /) -> Any:
    if cmd in _LOCK_COMMANDS and isinstance(arg, bytes) and len(arg) == _FLOCK.size:
        ltype, whence, start, length, pid = _FLOCK.unpack(arg)
        if length == 0:
            arg = _FLOCK.pack(ltype, whence, start, _to_limit(fd, whence, start), pid)
    return _real("fcntl.fcntl")(fd, cmd, arg)


_LOCK_COMMANDS = frozenset(
    getattr(fcntl, name)
    for name in ("F_GETLK", "F_SETLK", "F_SETLKW", "F_OFD_GETLK", "F_OFD_SETLK", "F_OFD_SETLKW")
    if fcntl is not None and hasattr(fcntl, name)
)


def _patches(listing: bool) -> list[tuple[object, str, object]]:
    if listing:
        return [
            (os, "listdir", _os_listdir),
            (os, "scandir", _os_scandir),
            (os, "stat", _os_stat),
            (os, "lstat", _os_lstat),
        ]
    return [
        (os, "open", _os_open),
        (os, "replace", _two_paths("replace")),
        (os, "rename", _two_paths("rename")),
        (os, "unlink", _one_path("unlink", "unlink")),
        (os, "remove", _one_path("remove", "unlink")),
        (os, "rmdir", _one_path("rmdir", "rmdir")),
        (os, "truncate", _os_truncate),
        (os, "ftruncate", _os_ftruncate),
        (builtins, "open", _io_open),
        (io, "open", _io_open),
        (mmap, "mmap", _EmulatedMmap),
        (fcntl, "lockf", _fcntl_lockf),
        (fcntl, "fcntl", _fcntl_fcntl),
    ]


@contextlib.contextmanager
def _patched(kind: str) -> Iterator[None]:
    """The standard library's functions routed through the emulator inside
    the block (``kind`` "all", or "listing" for the delete-pending views);
    nested blocks share one set of patches."""
    patches = _patches(listing=kind == "listing")
    with _lock:
        if _depth[kind] == 0:
            for module, name, function in patches:
                _saved[f"{module.__name__}.{name}"] = getattr(module, name)  # type: ignore[attr-defined]
                setattr(module, name, function)
        _depth[kind] += 1
    try:
        yield
    finally:
        with _lock:
            _depth[kind] -= 1
            if _depth[kind] == 0:
                for module, name, _function in patches:
                    setattr(module, name, _saved[f"{module.__name__}.{name}"])  # type: ignore[attr-defined]


@contextlib.contextmanager
def patch_os(
    *,
    posix_delete: bool = True,
    posix_rename: bool = False,
    hardlinks: bool = True,
    symlinks: bool = False,
    strict_names: bool = True,
    transient_denials: float = 0.0,
    transient_read_denials: float | None = None,
    transient_lock_violations: float | None = None,
    acl_denied: tuple[str, ...] | list[str] = (),
    seed: int | None = None,
    block_cloning: bool = False,
) -> Iterator[WindowsOps]:
    """Emulate Windows file semantics inside the ``with`` block, for the
    code under test's own calls as well as safecache's.

    Installs a :class:`WindowsOps` made with these options (documented
    there) as :func:`windows_semantics` does, and routes through it the
    standard library's calls that code makes: ``os.open``, ``os.replace``,
    ``os.rename``, ``os.unlink``, ``os.remove``, ``os.rmdir``,
    ``os.truncate``, ``os.ftruncate``, ``open``/``io.open`` (reads and
    writes of the file objects are checked too), ``mmap.mmap``, and with
    ``posix_delete=False`` ``os.listdir``, ``os.scandir``, ``os.stat`` and
    ``os.lstat``.  Yields the emulator; on exit, however the block ends,
    restores everything.  Nested blocks, and :func:`windows_semantics` or
    :func:`inject_errors` blocks inside one, route to whatever
    ``safecache._osops.current`` holds at the time of each call.

    Calls through names bound before the block (``from os import
    replace``) are not routed.  Processes forked inside the block inherit
    it; other processes turn it on with the ``SAFECACHE_EMULATE_WINDOWS``
    environment variable (docs/testing.md).  Linux only.
    """
    ops = WindowsOps(
        posix_delete=posix_delete,
        posix_rename=posix_rename,
        hardlinks=hardlinks,
        symlinks=symlinks,
        strict_names=strict_names,
        transient_denials=transient_denials,
        transient_read_denials=transient_read_denials,
        transient_lock_violations=transient_lock_violations,
        acl_denied=acl_denied,
        seed=seed,
        block_cloning=block_cloning,
    )
    with contextlib.ExitStack() as stack:
        stack.enter_context(_installed(ops))
        stack.enter_context(_patched("all"))
        if not posix_delete:
            stack.enter_context(_patched("listing"))
        yield ops
