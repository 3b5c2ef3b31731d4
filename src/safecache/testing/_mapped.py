"""Mapped views of files, as Windows sees them.

A view mapped with :mod:`mmap` keeps the file open on Windows: CPython's
``mmap`` duplicates the file's handle (``DuplicateHandle`` in
``Modules/mmapmodule.c``), so the share mode of the ``open()`` it came from
-- no ``FILE_SHARE_DELETE`` -- stays in force until ``mmap.close()``, even
after the file object is closed.  While a view is mapped, shrinking the file
fails with ``ERROR_USER_MAPPED_FILE`` (1224: the ``SetEndOfFile``
documentation requires every view to be unmapped first) and deleting it is
refused (``STATUS_CANNOT_DELETE``, error 5).

:class:`_EmulatedMmap` is what ``patch_os`` puts in place of ``mmap.mmap``:
the real mapping, plus a descriptor of its own on the file (a new open file
description) that carries the handle's records and a ``MAPPED`` record, for
as long as the view lives.
"""

from __future__ import annotations

import mmap
import os
import stat
from typing import Any

from safecache import _osops

from ._handles import _MAPPED, _SPAN, _recorded, _register, _take

try:
    import fcntl
except ImportError:  # Windows: the emulator is not used there
    fcntl = None  # type: ignore[assignment]


def _is_mapped(fd: int) -> bool:
    """Whether a view of ``fd``'s file is mapped (by any process)."""
    try:
        return _recorded(fd, _MAPPED, _SPAN)
    except OSError:
        return False


def _mark(fileno: int) -> int | None:
    """A new descriptor on ``fileno``'s file carrying the records of a
    mapped view; None for an anonymous map or a file that is not regular."""
    if fileno < 0:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fileno).st_mode):
            return None
        # /proc/self/fd/N reopens the file itself: a new open file
        # description, whose locks live exactly as long as the view.
        try:
            marker = os.open(f"/proc/self/fd/{fileno}", os.O_RDONLY | _osops.O_CLOEXEC)
        except PermissionError:
            marker = os.open(f"/proc/self/fd/{fileno}", os.O_WRONLY | _osops.O_CLOEXEC)
    except OSError:
        return None
    try:
        _register(marker, share_delete=False)
        access = fcntl.fcntl(marker, fcntl.F_GETFL) & os.O_ACCMODE
        _take(marker, fcntl.F_WRLCK if access == os.O_WRONLY else fcntl.F_RDLCK, _MAPPED)
    except BaseException:
        os.close(marker)
        raise
    return marker


class _EmulatedMmap(mmap.mmap):
    """``mmap.mmap`` whose view counts as an open handle and a mapped view
    under the emulator, until it is closed or collected."""

    _marker: int | None = None

    def __new__(cls, fileno: int, length: int, *args: Any, **kwargs: Any) -> _EmulatedMmap:
        view = super().__new__(cls, fileno, length, *args, **kwargs)
        view._marker = _mark(fileno)
        return view

    def _unmark(self) -> None:
        marker, self._marker = self._marker, None
        if marker is not None:
            os.close(marker)

    def close(self) -> None:
        super().close()  # BufferError while a buffer is exported: the view stays
        self._unmark()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        self._unmark()
