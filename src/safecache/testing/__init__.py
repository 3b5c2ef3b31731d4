"""Helpers for testing code that uses safecache: Windows file semantics on
Linux, and fault injection.

Every system call safecache makes goes through one :class:`OsOps` object,
``safecache._osops.current``.  This package swaps that object for one that
behaves differently, so the code under test is the real code:

* :class:`WindowsOps` (installed with :func:`windows_semantics` or
  :func:`enable_windows_semantics`) makes Linux refuse what Windows refuses
  -- replacing a file another process has open, deleting a file that is open
  without ``FILE_SHARE_DELETE``, renaming onto an existing name, opening a
  file another program holds with a narrower share mode, reading bytes
  another handle has locked -- with the exceptions CPython raises on Windows
  (``PermissionError`` with ``winerror`` 5 or 32, ``FileExistsError`` with
  ``winerror`` 183, ...).  Open handles are visible across processes, so
  many real processes can share one cache root under the emulation.  It can
  also inject what other programs cause: the transient denials of an
  antivirus scanner, names pending delete, and ACL denials.
* :func:`patch_os` installs it and also routes the standard library's calls
  (``open``, ``os.replace``, ``tempfile``, ``mmap``, ...) through it, so that
  a tool author's own cache code meets the same rules; the pytest plugin
  (``-p safecache.testing.pytest_plugin --emulate-windows``) and the
  ``SAFECACHE_EMULATE_WINDOWS`` variable turn it on for a whole run, xdist
  workers and subprocesses included.
* :class:`FaultOps` (installed with :func:`inject_errors`) raises a chosen
  error from chosen operations, on top of whatever is in force.

:class:`OsOps` is the public base both implement: the interface of every
system call safecache makes, each with the semantics of the :mod:`os`
function of the same name, and as an instance the real operating system.
Subclass it to write your own fault model, and install an instance the way
:func:`windows_semantics` does, restoring the previous one afterwards.

docs/testing.md describes every rule with its source in Microsoft's
documentation, and every option and limit.  The error numbers are those of
CPython's ``PC/errmap.h``.

:class:`WindowsOps` needs Linux (open file description locks, Linux 3.15+)
and a local file system that supports them (not NFS).  :class:`FaultOps`
works everywhere.

The modules behind this one are private, one concept each:
``_winerror`` (Windows error codes and exceptions), ``_actors`` (what
other programs do: scanners, pending deletes, ACLs), ``_perprocess``
(per-process random streams and counters), ``_handles`` (the cross-process
handle table: access, share modes, :func:`holding`), ``_ranges``
(byte-range locks), ``_mapped`` (mapped views), ``_names`` (names Windows
refuses, rename without replace, delete-pending names), ``_emulator`` (the
options and shared checks), ``_descriptors`` (opening, reading, writing),
``_windows`` (:class:`WindowsOps` and the rules of names), ``_install``
(installing and removing it), ``_patch`` and ``_files`` (:func:`patch_os`),
``_environ`` (the variable) and ``_faults`` (fault injection).  Besides each
other, they depend only on ``safecache._osops`` and the standard library;
``pytest_plugin`` also imports pytest, and nothing imports it.
"""

from __future__ import annotations

# The public home of the system-call interface.  The modules below take it
# from safecache._osops themselves (the same class): importing it from here
# would make each of them import the package that imports them.
from safecache._osops import OsOps

from ._emulator import WindowsOptions
from ._faults import OPERATIONS, Call, ErrorSpec, FaultOps, inject_errors

# The lock layout, which tests/test_testing.py checks against the kernel.
from ._handles import _FLOCK as _FLOCK
from ._handles import _HANDLES as _HANDLES
from ._handles import _SPAN as _SPAN
from ._handles import _ofd_conflict as _ofd_conflict
from ._handles import _ofd_setlk as _ofd_setlk
from ._handles import holding
from ._install import disable_windows_semantics, enable_windows_semantics, windows_semantics
from ._patch import patch_os
from ._windows import WindowsOps

# The Windows error numbers the emulator raises, and the NT statuses it puts
# on an error 5 (``ntstatus``); importable from here, though not part of __all__.
from ._winerror import ERROR_ACCESS_DENIED as ERROR_ACCESS_DENIED
from ._winerror import ERROR_ALREADY_EXISTS as ERROR_ALREADY_EXISTS
from ._winerror import ERROR_DIR_NOT_EMPTY as ERROR_DIR_NOT_EMPTY
from ._winerror import ERROR_DIRECTORY as ERROR_DIRECTORY
from ._winerror import ERROR_FILE_EXISTS as ERROR_FILE_EXISTS
from ._winerror import ERROR_INVALID_FUNCTION as ERROR_INVALID_FUNCTION
from ._winerror import ERROR_INVALID_NAME as ERROR_INVALID_NAME
from ._winerror import ERROR_LOCK_VIOLATION as ERROR_LOCK_VIOLATION
from ._winerror import ERROR_NOT_SUPPORTED as ERROR_NOT_SUPPORTED
from ._winerror import ERROR_PRIVILEGE_NOT_HELD as ERROR_PRIVILEGE_NOT_HELD
from ._winerror import ERROR_SHARING_VIOLATION as ERROR_SHARING_VIOLATION
from ._winerror import STATUS_ACCESS_DENIED as STATUS_ACCESS_DENIED
from ._winerror import STATUS_DELETE_PENDING as STATUS_DELETE_PENDING
from ._winerror import WinError, make_oserror

__all__ = [
    "OPERATIONS",
    "Call",
    "ErrorSpec",
    "FaultOps",
    "OsOps",
    "WinError",
    "WindowsOps",
    "WindowsOptions",
    "disable_windows_semantics",
    "enable_windows_semantics",
    "holding",
    "inject_errors",
    "make_oserror",
    "patch_os",
    "windows_semantics",
]
