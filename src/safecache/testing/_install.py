"""Installing an emulator: what puts a :class:`WindowsOps` or a
:class:`FaultOps` in ``safecache._osops.current``, and takes it out again.

:func:`windows_semantics` for a ``with`` block; :func:`enable_windows_semantics`
and :func:`disable_windows_semantics` for a spawned child process or other
code that cannot use one.  :func:`_installed` also installs
:func:`inject_errors`'s :class:`FaultOps`.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from safecache import _errcodes, _osops
from safecache._osops import OsOps  # published as safecache.testing.OsOps

from ._windows import WindowsOps

_enabled: list[OsOps] = []  # what enable_windows_semantics replaced, innermost last


@contextlib.contextmanager
def _installed(ops: OsOps) -> Iterator[None]:
    previous = _osops.current
    _osops.current = ops
    # Windows reports a byte-range lock on read/write as a bare EACCES: the
    # library must read it so while Windows is emulated.
    io = _errcodes.windows_io(isinstance(ops, WindowsOps) or _errcodes._WINDOWS_IO)
    try:
        yield
    finally:
        _osops.current = previous
        _errcodes.windows_io(io)


@contextlib.contextmanager
def windows_semantics(
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
    """Emulate Windows file semantics inside the ``with`` block.

    Installs a :class:`WindowsOps` made with these options (documented
    there) as ``safecache._osops.current`` and yields it; on exit, however
    the block ends, restores what was in force before.  Processes forked
    inside the block inherit it; spawned ones call
    :func:`enable_windows_semantics` themselves.
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
    with _installed(ops):
        yield ops


def enable_windows_semantics(
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
) -> WindowsOps:
    """Install a :class:`WindowsOps` until :func:`disable_windows_semantics`.

    For code that cannot use a ``with`` block: a child process started by
    ``multiprocessing`` with the "spawn" method (or any fresh interpreter)
    calls it first thing, e.g. ``enable_windows_semantics(**parent.options)``.
    Returns the installed object.
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
    _enabled.append(_osops.current)
    _osops.current = ops
    _errcodes.windows_io(True)
    return ops


def disable_windows_semantics() -> None:
    """Undo the latest :func:`enable_windows_semantics`: restore the
    operations that were in force before it.  Does nothing if none is in
    force."""
    if _enabled:
        _osops.current = _enabled.pop()
        _errcodes.windows_io(isinstance(_osops.current, WindowsOps))
