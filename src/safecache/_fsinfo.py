"""What holds a path: the file system's type, its mount, WSL, free space.

Facts only, no verdicts (doctor's file-system check judges them).  On Linux
the type comes from /proc/self/mounts, on Windows from the volume; elsewhere
it is ``"unknown"``.  Reads only: nothing here writes.
"""

from __future__ import annotations

import os
import sys

from . import _location

_MOUNTS = "/proc/self/mounts"
_OSRELEASE = "/proc/sys/kernel/osrelease"


def read_mounts() -> str | None:
    """The text of /proc/self/mounts, or None where it cannot be read."""
    try:
        with open(_MOUNTS, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def is_wsl() -> bool:
    """Whether this Linux runs under Windows Subsystem for Linux."""
    try:
        with open(_OSRELEASE, encoding="ascii", errors="replace") as f:
            release = f.read().lower()
    except OSError:
        return False
    return "microsoft" in release or "wsl" in release


def _unescape_mount(field: str) -> str:
    """/proc/self/mounts escapes space, tab, newline and backslash as octal."""
    if "\\" not in field:
        return field
    out = []
    i = 0
    while i < len(field):
        if field[i] == "\\" and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_of(path: str, mounts: str) -> tuple[str, str, str] | None:
    """``(fstype, mount point, device)`` of the mount holding ``path`` in a
    /proc/self/mounts text: the longest matching mount point, the last one
    listed when mounts are stacked."""
    best: tuple[str, str, str] | None = None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        device, point, fstype = _unescape_mount(fields[0]), _unescape_mount(fields[1]), fields[2]
        if point != "/" and path != point and not path.startswith(point.rstrip("/") + "/"):
            continue
        if best is None or len(point) >= len(best[1]):
            best = (fstype, point, device)
    return best


def filesystem_of(path: str) -> dict[str, object]:
    """What holds ``path``: ``type`` (lower case, ``"unknown"`` when it
    cannot be told), ``mount_point``, ``device``, ``wsl`` and ``remote``."""
    info: dict[str, object] = {"type": "unknown", "mount_point": None, "device": None, "wsl": False, "remote": False}
    existing = os.path.realpath(_location.nearest_existing(path))
    if sys.platform.startswith("linux"):
        mounts = read_mounts()
        found = mount_of(existing, mounts) if mounts else None
        if found is not None:
            info["type"], info["mount_point"], info["device"] = found[0].lower(), found[1], found[2]
        info["wsl"] = is_wsl()
    elif sys.platform == "win32":  # pragma: no cover - exercised on Windows only
        info.update(_windows_volume(existing))
    return info


def _windows_volume(path: str) -> dict[str, object]:  # pragma: no cover - Windows only
    if sys.platform != "win32":
        return {}
    try:
        import ctypes

        kernel32 = ctypes.windll.kernel32
        volume = ctypes.create_unicode_buffer(261)
        if not kernel32.GetVolumePathNameW(path, volume, 261):
            return {}
        name = ctypes.create_unicode_buffer(261)
        if not kernel32.GetVolumeInformationW(volume.value, None, 0, None, None, None, name, 261):
            return {}
        remote = kernel32.GetDriveTypeW(volume.value) == 4  # DRIVE_REMOTE
        return {"type": name.value.lower() or "unknown", "mount_point": volume.value, "remote": bool(remote)}
    except (OSError, AttributeError, ValueError):
        return {}


def disk_usage(path: str) -> tuple[int, int, int]:
    """``(total, used, free)`` bytes of the file system holding ``path``."""
    import shutil

    usage = shutil.disk_usage(path)
    return usage.total, usage.used, usage.free
