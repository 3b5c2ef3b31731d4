"""File objects for the code under test: ``open()`` as CPython builds it,
over a raw file whose reads, writes and truncations Windows would check.

Python's ``open()`` reads and writes through ``FileIO`` in C, which no
``OsOps`` sees.  Under ``patch_os`` a path opened with ``open()`` gets an
:class:`_EmulatedFileIO` instead: the same object, but each read and write
first asks whether another handle's byte-range lock covers the bytes it
touches (33, as ``ReadFile``/``WriteFile`` fail), and a truncation whether a
view of the file is mapped (1224).  The buffering and text layers above it
are the standard ones, built as ``io.open`` builds them.
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable

from safecache import _osops

from ._emulator import _Emulator


def _emulator() -> _Emulator | None:
    """The Windows emulator in force, beneath any fault injectors."""
    ops: object = _osops.current
    while ops is not None and not isinstance(ops, _Emulator):
        ops = getattr(ops, "inner", None)
    return ops


class _EmulatedFileIO(io.FileIO):
    """``io.FileIO``, checking each access as Windows would."""

    def _check(self, length: int, *, write: bool) -> None:
        emulator = _emulator()
        if emulator is None:
            return
        fd = self.fileno()
        offset = os.fstat(fd).st_size if write and "a" in self.mode else None
        emulator._lock_violation(fd, offset, length, write=write)

    def readinto(self, buffer: Any, /) -> int:
        self._check(memoryview(buffer).nbytes, write=False)
        return super().readinto(buffer)

    def read(self, size: int | None = -1, /) -> bytes:
        if size is None or size < 0:
            return self.readall()
        self._check(size, write=False)
        return super().read(size)

    def readall(self) -> bytes:
        fd = self.fileno()
        self._check(max(os.fstat(fd).st_size - os.lseek(fd, 0, os.SEEK_CUR), 1), write=False)
        return super().readall()

    def write(self, data: Any, /) -> int:
        self._check(memoryview(data).nbytes, write=True)
        return super().write(data)

    def truncate(self, size: int | None = None, /) -> int:
        emulator = _emulator()
        if emulator is not None:
            emulator._check_truncate(self.fileno(), self.tell() if size is None else size)
        return super().truncate(size)


_MODE_CHARS = frozenset("axrwb+t")


def open_file(
    file: str | bytes,
    mode: str,
    buffering: int,
    encoding: str | None,
    errors: str | None,
    newline: str | None,
    closefd: bool,
    opener: Callable[[str | bytes, int], int],
) -> Any:
    """``io.open(file, ...)`` over an :class:`_EmulatedFileIO` that opens
    with ``opener``; None for arguments ``io.open`` would reject (the
    caller lets the real ``io.open`` raise its own error)."""
    modes = set(mode)
    if (
        len(modes) != len(mode)
        or modes - _MODE_CHARS
        or sum(c in modes for c in "rwax") != 1
        or {"t", "b"} <= modes
        or ("b" in modes and (encoding is not None or errors is not None or newline is not None))
        or ("b" not in modes and buffering == 0)
    ):
        return None
    raw = _EmulatedFileIO(
        file, "".join(c for c in "xrwa" if c in modes) + ("+" if "+" in modes else ""), closefd, opener=opener
    )
    try:
        line_buffering = False
        if buffering == 1 or (buffering < 0 and raw.isatty()):
            buffering, line_buffering = -1, True
        if buffering < 0:
            buffering = getattr(raw, "_blksize", 0)
            if buffering <= 1:
                buffering = io.DEFAULT_BUFFER_SIZE
        if buffering == 0:
            return raw
        buffer: io.BufferedIOBase
        if "+" in modes:
            buffer = io.BufferedRandom(raw, buffering)
        elif "r" in modes:
            buffer = io.BufferedReader(raw, buffering)
        else:
            buffer = io.BufferedWriter(raw, buffering)
        if "b" in modes:
            return buffer
        text = io.TextIOWrapper(buffer, io.text_encoding(encoding), errors, newline, line_buffering)
        text.mode = mode  # type: ignore[misc]  # as io.open sets it
        return text
    except BaseException:
        raw.close()
        raise
