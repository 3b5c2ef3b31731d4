"""The file-system layer: the one place that writes, replaces and removes.

Everything else in safecache calls these functions; none of it calls ``os``
for cache files directly, and there is no second copy of the retry loop.

The rules they implement (see docs/format.md for the reasons):

* temp files live beside their target, are created with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` and are always removed when a write fails;
* a name that readers may hold open is replaced only when the new content
  differs (callers check for an identical entry first), and content that is
  write-once is published without replacing anything;
* "in use" errors (Windows 5 on mutations and on a name pending delete, 32,
  33; ``EBUSY``, ``ETXTBSY``) are
  retried with jittered exponential backoff inside a bounded budget, like Go's
  ``robustio``; other errors are not retried;
* nothing is fsynced unless the caller asks for durability.
"""

from __future__ import annotations

import errno
import os
import stat as _stat
import time
TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (milliseconds)

from . import _errcodes, _osops
from ._errcodes import is_transient

if TYPE_CHECKING:
    from typing import Callable, Iterable, TypeVar

    T = TypeVar("T")

#: Default retry budget in seconds (Go's robustio uses 2 s).
DEFAULT_RETRY_BUDGET = 2.0
#: Modes of created files and directories: never writable by others, even
#: under ``umask 0`` (docs/security.md).  Shared caches pass group-writable
#: file modes; directories follow the file mode (:func:`dir_mode_for`).
FILE_MODE = 0o644
DIR_MODE = 0o755


def dir_mode_for(file_mode: int) -> int:
    """The mode of a directory created to hold files of ``file_mode``:
    group-writable only if the files are."""
    return DIR_MODE | (file_mode & 0o020) | (0o010 if file_mode & 0o020 else 0)

_pid = os.getpid()
_counter = 0


def retry(op: str, func: Callable[..., T], *args: object, budget: float = DEFAULT_RETRY_BUDGET, prior: int = 0) -> T:
    """Call ``func(*args)``, retrying transient "in use" errors within ``budget`` seconds.

    The first sleep is 1 ms; each next one grows by a random 0-100 % (Go's
    robustio schedule), and the loop stops before it would pass the budget.
    When the budget is spent the *first* transient error is re-raised (it is
    the most informative: the later ones are usually the same), marked with
    ``_safecache_exhausted = (attempts, seconds)`` so the policy can say so.
    Errors that are not transient propagate at once.  ``prior`` counts
    attempts the caller already made (reported in the attempt count).
    """
    try:
        return func(*args)
    except OSError as exc:
        if budget <= 0 or not is_transient(exc, op):
            raise
        first = exc
    start = time.monotonic()
    delay = 0.001
    attempts = 1 + prior
    from random import random as rng
    while True:
        elapsed = time.monotonic() - start
        if elapsed + delay >= budget:
            first._safecache_exhausted = (attempts, elapsed)  # type: ignore[attr-defined]
            raise first
        time.sleep(delay)
        delay += delay * rng()
        attempts += 1
        try:
            return func(*args)
        except OSError as exc:
            if not is_transient(exc, op):
                raise


def temp_name(path: str) -> str:
    """A fresh temp name beside ``path``.  Cheap (pid and a counter); the
    O_EXCL create catches the rare clash with a dead process's leftover."""
    global _counter, _pid
    _counter += 1
    if _track_fork:
        return f"{path}.{_pid:x}-{_counter:x}.tmp"
    pid = os.getpid()
    if pid != _pid:  # forked: a child must not reuse its parent's names
        _pid, _counter = pid, 1
    return f"{path}.{pid:x}-{_counter:x}.tmp"


def _after_fork_in_child() -> None:
    global _pid, _counter
    _pid, _counter = os.getpid(), 0


# Where the OS tells us about forks, the pid is refreshed then instead of
# being asked for on every write.
_track_fork = hasattr(os, "register_at_fork")
if _track_fork:
    os.register_at_fork(after_in_child=_after_fork_in_child)


def write_small_fast(path: str, data: bytes, mode: int = FILE_MODE) -> bool:
    """Write ``data`` to a temp file beside ``path`` and rename it over
    ``path``, calling :mod:`os` directly (only when ``_osops.current is
    _osops.fast_path``).  Returns False, having left nothing behind, when
    anything at all goes wrong: the caller then takes :func:`write_file`,
    which creates missing directories, retries and reports errors."""
    tmp = temp_name(path)
    try:
        fd = os.open(tmp, _osops.CREATE_FLAGS, mode)
    except OSError:
        return False
    try:
        try:
            written = os.write(fd, data)
        finally:
            os.close(fd)
        if written == len(data):
            os.replace(tmp, path)
            return True
    except OSError:
        pass
    discard(tmp)
    return False


TEMP_SUFFIX = ".tmp"


def makedirs(path: str, mode: int = DIR_MODE) -> None:
    """Create ``path`` and its parents; racing creators all succeed (pytest #12381)."""
    ops = _osops.current
    try:
        ops.mkdir(path, mode)
        return
    except FileExistsError:
        return
    except FileNotFoundError:
        pass
    parent = os.path.dirname(path)
    if parent and parent != path:
        makedirs(parent, mode)
    try:
        ops.mkdir(path, mode)
    except FileExistsError:
        pass


def create_temp(path: str, *, mode: int = FILE_MODE) -> tuple[str, int]:
    """Create a temp file beside ``path`` (making parent directories as
    needed, of :func:`dir_mode_for` ``mode``); return its name and a write
    descriptor."""
    ops = _osops.current
    for _ in range(100):
        tmp = temp_name(path)
        try:
            return tmp, ops.open(tmp, _osops.CREATE_FLAGS, mode)
        except FileNotFoundError:
            makedirs(os.path.dirname(path), dir_mode_for(mode))
        except FileExistsError:  # a dead process's leftover with our pid
            global _counter
            _counter += int.from_bytes(os.urandom(3), "little") + 1
    raise FileExistsError(errno.EEXIST, "could not find a free temp name", path)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    write = _osops.current.write
    view = memoryview(data)
    while view:
        try:
            n = write(fd, view)
        except OSError as exc:
            if not is_transient(exc, "write"):
                raise
            n = retry("write", write, fd, view, prior=1)
        view = view[n:]


def discard(path: str) -> None:
    """Remove ``path`` if possible; never raises (used on failure paths)."""
    try:
        _osops.current.unlink(path)
    except OSError:
        pass


def fsync_dir(path: str) -> None:
    """fsync a directory so a rename in it survives power loss (POSIX only)."""
    if os.name == "nt":
        return
    ops = _osops.current
    fd = ops.open(path, os.O_RDONLY | _osops.O_CLOEXEC)
    try:
        ops.fsync(fd)
    finally:
        ops.close(fd)


def write_file(
    path: str,
    chunks: Iterable[bytes | bytearray | memoryview],
    *,
    header: Callable[[], bytes] | None = None,
    replace: bool = True,
    durable: bool = False,
    budget: float = DEFAULT_RETRY_BUDGET,
    mode: int = FILE_MODE,
) -> bool:
    """Write ``chunks`` to a temp file beside ``path``, then publish it.

    ``header``, if given, is called after the chunks are written and its bytes
    are written at offset 0 (the caller reserved room for them as the first
    chunk): this is how a streamed entry gets its length and checksum.

    With ``replace=True`` the temp replaces ``path``.  With ``replace=False``
    an existing ``path`` is left alone and the call returns False (for
    write-once content: whoever is there first wins, readers are never
    disturbed).  Returns True when this call's bytes were published.
    The temp file is removed on every failure; errors propagate.
    """
    ops = _osops.current
    tmp, fd = create_temp(path, mode=mode)
    try:
        try:
            for chunk in chunks:
                write_all(fd, chunk)
            if header is not None:
                head = header()
                if ops.pwrite(fd, head, 0) != len(head):
                    raise OSError(errno.EIO, "short header write", tmp)
            if durable:
                ops.fsync(fd)
        finally:
            ops.close(fd)
        if replace:
            replace_file(tmp, path, budget=budget)
            published = True
        else:
            published = publish_noreplace(tmp, path, budget=budget)
        if durable and published:
            fsync_dir(os.path.dirname(path))
        return published
    except BaseException:
        discard(tmp)
        raise
    finally:
        if not replace:
            discard(tmp)


def replace_file(src: str, dst: str, *, budget: float = DEFAULT_RETRY_BUDGET) -> None:
    """``os.replace(src, dst)`` with the retry policy.  A read-only ``dst``
    (Windows refuses to replace it with error 5, every time: a cache restored
    by CI can arrive so) is made writable first instead of being retried as
    if it were in use."""
    ops = _osops.current
    try:
        ops.replace(src, dst)
        return
    except OSError as exc:
        if _errcodes.winerror(exc) == _errcodes.ERROR_ACCESS_DENIED:
            _clear_read_only(dst)
        elif not is_transient(exc, "replace"):
            raise
    retry("replace", ops.replace, src, dst, budget=budget, prior=1)


def publish_noreplace(tmp: str, path: str, *, budget: float = DEFAULT_RETRY_BUDGET) -> bool:
    """Give ``tmp`` the name ``path`` unless ``path`` exists.  Returns False
    (and leaves ``tmp`` for the caller to remove) when something is already there.

    A hard link is atomic create-if-absent on both POSIX and Windows (git's
    object store does the same); where links are not supported (FAT, some
    network shares) fall back to a rename that refuses to overwrite: on
    Windows ``os.rename`` does, on POSIX we check first and accept the tiny
    window, because both contenders hold the same content.
    """
    ops = _osops.current
    try:
        retry("link", ops.link, tmp, path, budget=budget)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in _errcodes.LINK_UNSUPPORTED_ERRNOS and not _errcodes.winerror(exc):
            raise
    if os.name != "nt" and exists(path):
        return False
    try:
        retry("rename", ops.rename, tmp, path, budget=budget)
        return True
    except FileExistsError:
        return False


def exists(path: str) -> bool:
    try:
        _osops.current.lstat(path)
        return True
    except FileNotFoundError:
        return False


def read_file(path: str, *, budget: float = DEFAULT_RETRY_BUDGET) -> tuple[int, bytes] | None:
    """Open ``path`` for reading (share-delete on Windows) and return
    ``(fd, first_block)``; None if it does not exist or is not a regular
    file (a FIFO, a device or a directory planted there holds no data of
    ours, and must never block the caller).  The caller owns the fd.

    An open refused because another process holds the file (Windows 32, 33,
    or 5 for a name pending delete) is retried within ``budget``, as Go's
    robustio retries its reads: a present entry must not read as a miss.
    A Windows 5 whose cause is unknown is retried once per directory
    (:func:`_reopen_for_read`).  Other errors propagate.
    """
    ops = _osops.current
    try:
        fd = ops.open(path, _osops.READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        reopened = _reopen_for_read(path, exc, budget)
        if reopened is None:
            return None
        fd = reopened
    try:
        if not _stat.S_ISREG(ops.fstat(fd).st_mode):
            ops.close(fd)
            return None
        try:
            return fd, ops.read(fd, 1 << 16)
        except OSError as exc:
            if not is_transient(exc, "read"):
                raise
            return fd, retry("read", ops.read, fd, 1 << 16, budget=budget, prior=1)
    except BaseException:
        ops.close(fd)
        raise


#: Directories where a Windows 5 of unknown cause outlasted a whole budget on
#: an open for reading: taken for the permission denial it most likely is,
#: and not retried again in this process.
_READ_DENIED_MAX = 256
_read_denied: dict[str, None] = {}


def _reopen_for_read(path: str, first: OSError, budget: float) -> int | None:
    """Retry an open of ``path`` for reading that failed with ``first``;
    return the fd, None if the file is gone, or raise.

    Retried: what Go's robustio retries on reads (src/cmd/internal/robustio:
    ERROR_ACCESS_DENIED, ERROR_SHARING_VIOLATION; not ERROR_FILE_NOT_FOUND,
    "the file may also genuinely not exist"), plus 33, EBUSY, ETXTBSY --
    but not a 5 whose NT status says "access denied" (uv #11409: it never
    clears, so it costs no budget).  A 5 without a telling status may be a
    pending delete or a denial, and only time tells: if it outlasts the
    budget its directory is remembered (a genuinely unreadable entry costs
    one budget per directory per process) and the last error is raised
    unmarked, as the permission denial it is (docs/concurrency.md).
    """
    op = _errcodes.OPEN_FOR_READ
    directory = os.path.dirname(path)
    unknown = _errcodes.access_denied_cause(first) == "unknown"
    if not is_transient(first, op) or (unknown and directory in _read_denied):
        raise first
    ops = _osops.current
    last = first

    def attempt() -> int:
        nonlocal last
        try:
            return ops.open(path, _osops.READ_FLAGS)
        except OSError as exc:
            last = exc
            raise

    try:
        return retry(op, attempt, budget=budget, prior=1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if getattr(exc, "_safecache_exhausted", None) and _errcodes.access_denied_cause(last) == "unknown":
            if len(_read_denied) >= _READ_DENIED_MAX:
                _read_denied.clear()  # bounded: start afresh (atomic, as the set below: no lock)
            _read_denied[directory] = None
            raise last from None
        raise


def forget_read_denials() -> None:
    """Forget the directories remembered as unreadable (tests; a long-running
    process told that permissions were fixed)."""
    _read_denied.clear()


def read_exact(fd: int, n: int) -> bytes:
    """Read exactly ``n`` bytes from ``fd``'s position, or fewer at EOF."""
    ops = _osops.current
    parts = []
    while n > 0:
        block = ops.read(fd, min(n, 1 << 20))
        if not block:
            break
        parts.append(block)
        n -= len(block)
    return b"".join(parts)


def remove(path: str, *, budget: float = DEFAULT_RETRY_BUDGET) -> bool:
    """Delete the file ``path``; False if it was not there.

    A read-only file (Windows refuses to delete it with error 5) is made
    writable first; "in use" errors are retried within ``budget``.
    """
    ops = _osops.current
    try:
        ops.unlink(path)
        return True
    except FileNotFoundError:
        return False
    except OSError as exc:
        if _errcodes.winerror(exc) == _errcodes.ERROR_ACCESS_DENIED:
            _clear_read_only(path)
        elif not is_transient(exc, "unlink"):
            raise
    try:
        retry("unlink", ops.unlink, path, budget=budget, prior=1)
        return True
    except FileNotFoundError:
        return False


def same_file(path: str, st: os.stat_result) -> bool:
    """Whether ``path`` is still the file ``st`` was taken of (same device
    and inode; on Windows the file index CPython puts in ``st_ino``)."""
    try:
        now = _osops.current.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


def remove_if_same(path: str, st: os.stat_result, *, budget: float = DEFAULT_RETRY_BUDGET) -> bool:
    """Delete ``path`` only if it is still the file ``st`` describes: a
    reader that judged an entry corrupt must not remove the good one another
    process has since put in its place.  True if removed.  The window between
    the check and the unlink is not closed (POSIX has no unlink-if-inode);
    losing it costs a good entry a miss, never a wrong byte.  Raises OSError
    as :func:`remove`."""
    return same_file(path, st) and remove(path, budget=budget)


def _clear_read_only(path: str) -> None:
    """Give ``path`` its owner's write bit (Windows' read-only attribute)."""
    ops = _osops.current
    try:
        st = ops.lstat(path)
        if not st.st_mode & _stat.S_IWUSR and not _stat.S_ISLNK(st.st_mode):
            ops.chmod(path, _stat.S_IMODE(st.st_mode) | _stat.S_IWUSR)
    except OSError:
        pass


def rmtree(path: str, *, budget: float = DEFAULT_RETRY_BUDGET) -> None:
    """Remove the directory tree at ``path``.

    Never follows symlinks (a symlink is removed, not entered), copes with
    read-only files and directories, retries "in use" errors, and treats
    entries that vanish under it (another process cleaning too) as removed.
    Where the OS has ``dir_fd`` (POSIX) the walk is relative to directory
    descriptors (:func:`_osops.rmtree_at`), so a directory swapped for a
    symlink meanwhile is never entered; elsewhere each directory is checked
    after it is listed to be the one examined.  Raises the first error it
    cannot get past.
    """
    ops = _osops.current
    if ops.has_dir_fd():
        _osops.rmtree_at(path)
        return
    try:
        st = ops.lstat(path)
    except FileNotFoundError:
        return
    if not _stat.S_ISDIR(st.st_mode):
        remove(path, budget=budget)
        return
    try:
        entries = list(ops.scandir(path))
    except FileNotFoundError:
        return
    except PermissionError:
        # A directory without read or search permission for its owner: give
        # ourselves access (we own it, or we could not delete it anyway).
        ops.chmod(path, _stat.S_IMODE(st.st_mode) | _stat.S_IRWXU)
        entries = list(ops.scandir(path))
    if not same_file(path, st):  # swapped since its lstat: what it leads to now is not ours to empty
        raise NotADirectoryError(errno.ENOTDIR, "replaced while being removed", path)
    for entry in entries:
        child = entry.path
        try:
            is_dir = entry.is_dir(follow_symlinks=False)
        except OSError:
            is_dir = False
        if is_dir:
            rmtree(child, budget=budget)
        else:
            try:
                remove(child, budget=budget)
            except PermissionError:
                # POSIX: deleting needs write permission on the directory.
                ops.chmod(path, _stat.S_IMODE(st.st_mode) | _stat.S_IRWXU)
                remove(child, budget=budget)
    try:
        retry("rmdir", ops.rmdir, path, budget=budget)
    except FileNotFoundError:
        pass


def touch(path: str) -> None:
    """Set ``path``'s mtime to now (used to record use)."""
    _osops.current.utime(path, None)


def discard_tree(path: str, *, budget: float = 0.5) -> None:
    """Remove the directory tree ``path`` if possible; never raises (used on
    failure paths and for private temp directories)."""
    try:
        rmtree(path, budget=budget)
    except OSError:
        pass


def make_temp_dir(parent: str | None = None, *, prefix: str = "safecache-") -> str:
    """Create a new private directory in ``parent`` and return its path.

    ``parent`` defaults to the system's temp directory (``tempfile``'s
    choice: ``TMPDIR``, ``TEMP``, ``TMP``, then the platform's).  The name
    is ``prefix`` and 16 random hex digits; the directory is created
    exclusively (a name that exists is never reused, so nothing planted in a
    shared temp directory is adopted) with mode 0o700.  Raises ``OSError``.
    """
    if parent is None:
        import tempfile  # not at import time: it costs milliseconds and most runs never need it

        parent = tempfile.gettempdir()
    ops = _osops.current
    for _ in range(100):
        path = os.path.join(parent, prefix + os.urandom(8).hex())
        try:
            ops.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "could not find a free temp directory name", parent)


def copy_tree(src: str, dst: str) -> None:
    """Copy the contents of directory ``src`` into the existing directory ``dst``.

    Never follows a symlink: symlinks are copied as symlinks, directories
    are recreated (as :func:`makedirs` creates them), regular files are
    copied by :meth:`OsOps.copyfile` (with their permission bits); files and
    directories keep their modification times.  Anything else (a FIFO, a
    device) raises ``OSError`` as ``copyfile`` does.  Errors propagate and
    what was copied stays: the caller removes ``dst``.
    """
    ops = _osops.current
    with ops.scandir(src) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        target = os.path.join(dst, entry.name)
        st = entry.stat(follow_symlinks=False)
        if _stat.S_ISLNK(st.st_mode):
            ops.symlink(ops.readlink(entry.path), target)
            continue
        if _stat.S_ISDIR(st.st_mode):
            makedirs(target)
            copy_tree(entry.path, target)
        else:
            ops.copyfile(entry.path, target)
        # Build tools compare mtimes: a committed copy keeps the source's.
        ops.utime(target, (st.st_atime, st.st_mtime))
