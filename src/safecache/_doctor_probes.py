"""Doctor's operation probes: each file operation the cache needs, performed
for real in doctor's scratch directory, through the cache's own layers.

Write (temp file and rename), read back, replace a file another handle has
open (ruff #12284's failure), an exclusive lock, two shared locks that keep
an exclusive one out, delete.  Every failure is a finding with its remedy.
"""

from __future__ import annotations

import errno
import os

from . import _errcodes, _fs, _locks, _osops
from ._doctor_remedies import Advice, remedy_for
from ._doctor_report import FAIL, OK, WARN, Finding

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._cache import Cache

#: How Windows refuses to replace a file that another handle has open
#: without FILE_SHARE_DELETE (POSIX never refuses).
_OPEN_FILE_WINERRORS = (_errcodes.ERROR_ACCESS_DENIED, _errcodes.ERROR_SHARING_VIOLATION)
_OPEN_FILE_ERRNOS = (errno.EACCES, errno.EBUSY)


def probe_operations(cache: Cache, scratch: str, advice: Advice, findings: list[Finding]) -> None:
    """Append the ``write``, ``read``, ``replace-open``, ``lock``,
    ``shared-lock`` and ``delete`` findings for probes in ``scratch``.
    Remedies name the root, not the scratch directory (removed afterwards)."""
    assert cache.path is not None
    root = cache.path
    budget = cache.retry_budget
    ops = _osops.current
    target = os.path.join(scratch, "entry")
    payload = b"safecache doctor probe\n" * 10
    # write
    try:
        _fs.write_file(target, [payload], budget=budget)
        findings.append(Finding("write", OK, "wrote a file through a temp file and rename"))
    except OSError as exc:
        findings.append(Finding("write", FAIL, f"cannot write {target}: {exc}", remedy_for(exc, root, "write files", advice)))
        return
    # read
    try:
        opened = _fs.read_file(target, budget=budget)
        if opened is None:
            raise FileNotFoundError(errno.ENOENT, "written file vanished", target)
        fd, block = opened
        ops.close(fd)
        if block != payload:
            findings.append(Finding("read", FAIL, "read back different bytes than were written",
                                    "the file system is not preserving data: put the cache on another disk"))
        else:
            findings.append(Finding("read", OK, "read back what was written"))
    except OSError as exc:
        findings.append(Finding("read", FAIL, f"cannot read {target}: {exc}", remedy_for(exc, root, "read files", advice)))
    # replace while another handle has the file open (ruff #12284's failure)
    try:
        reader = ops.open(target, _osops.READ_FLAGS, share_delete=False)
    except OSError as exc:
        findings.append(Finding("replace-open", FAIL, f"cannot open {target}: {exc}", remedy_for(exc, root, "open files", advice)))
    else:
        try:
            _fs.write_file(target, [payload + b"2"], budget=min(budget, 0.2))
            findings.append(Finding("replace-open", OK, "replaced a file while another handle had it open"))
        except OSError as exc:
            if _errcodes.winerror(exc) in _OPEN_FILE_WINERRORS or exc.errno in _OPEN_FILE_ERRNOS:
                findings.append(Finding(
                    "replace-open", WARN,
                    f"replacing a file that another handle has open fails here ({exc}): Windows semantics. "
                    "safecache copes (it never replaces an identical entry, retries, then keeps the old entry); "
                    "other tools that rename over open files fail here",
                    "nothing to do for safecache; exclude the cache from antivirus scanning to reduce retries",
                ))
            else:
                findings.append(Finding("replace-open", FAIL, f"cannot replace {target}: {exc}",
                                        remedy_for(exc, root, "replace files", advice)))
        finally:
            ops.close(reader)
    # locks: exclusive, then shared
    lock_path = os.path.join(scratch, "probe.lock")
    lock = _locks.FileLock(lock_path, timeout=1.0)
    try:
        lock.acquire()
        lock.release()
        findings.append(Finding("lock", OK, "took and released an OS file lock"))
    except OSError as exc:
        findings.append(Finding("lock", FAIL, f"cannot lock a file here: {exc}", remedy_for(exc, root, "lock files", advice)))
    findings.append(_check_shared_lock(lock_path, root, advice))
    # delete
    try:
        _fs.remove(target, budget=budget)
        findings.append(Finding("delete", OK, "deleted a file"))
    except OSError as exc:
        findings.append(Finding("delete", FAIL, f"cannot delete {target}: {exc}", remedy_for(exc, root, "delete files", advice)))


def _check_shared_lock(lock_path: str, root: str, advice: Advice) -> Finding:
    """Two shared holders at once, and an exclusive lock kept out while they
    hold it: what a tree in use relies on (readers share, a remover waits)."""
    first = _locks.FileLock(lock_path, timeout=1.0, shared=True)
    second = _locks.FileLock(lock_path, timeout=1.0, shared=True)
    exclusive = _locks.FileLock(lock_path, timeout=0.05)
    try:
        first.acquire()
    except OSError as exc:
        return Finding("shared-lock", FAIL, f"cannot take a shared lock here: {exc}", remedy_for(exc, root, "lock files", advice))
    try:
        try:
            second.acquire()
        except TimeoutError:
            return Finding(
                "shared-lock", WARN, "a second shared lock waited for the first: shared locks behave as exclusive here",
                "processes using the same tree wait for each other; put the cache on a local disk",
            )
        except OSError as exc:
            return Finding("shared-lock", FAIL, f"cannot take a second shared lock: {exc}", remedy_for(exc, root, "lock files", advice))
        try:
            exclusive.acquire()
        except TimeoutError:
            return Finding("shared-lock", OK, "two shared locks held at once, and they kept an exclusive lock out")
        except OSError as exc:
            return Finding("shared-lock", FAIL, f"cannot take an exclusive lock next to shared ones: {exc}",
                           remedy_for(exc, root, "lock files", advice))
        exclusive.release()
        return Finding(
            "shared-lock", FAIL, "an exclusive lock was granted while shared locks were held: locks do not exclude here",
            "the file system does not honour locks (some network or FUSE mounts): trees in use may be removed "
            "under their readers and compute-once may run twice; put the cache on a local disk",
        )
    finally:
        second.release()
        first.release()
