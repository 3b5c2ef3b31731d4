"""Doctor's link-mode check: which of clone, hard link, symlink and copy work
from the cache into the directory where trees would be placed, and which
mode ``auto`` ends up using there (docs/doctor.md, "The link target").
"""

from __future__ import annotations

import errno
import os
import stat as _stat

from . import _errcodes, _fs, _layout, _link, _osops
from ._doctor_remedies import Advice, give_back, remedy_for, user
from ._doctor_report import FAIL, OK, WARN, Finding

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._cache import Cache

_LINK_CHAIN = ("clone", "hardlink", "copy")  # what "auto" tries, in order
_PROBED = ("clone", "hardlink", "symlink", "copy")


def _probe_source(cache: Cache, scratch: str | None) -> str | None:
    """A file in the cache to link from: a fresh probe file when the cache
    can be written, else an existing file (what is already there is what
    will be linked)."""
    assert cache.path is not None
    if scratch is not None:
        source = os.path.join(scratch, "link-source")
        try:
            _fs.write_file(source, [b"safecache doctor link probe\n"], budget=cache.retry_budget)
            return source
        except OSError:
            pass
    for name in _layout.MARKERS:
        candidate = os.path.join(cache.path, name)
        try:
            if _stat.S_ISREG(_osops.current.lstat(candidate).st_mode) and os.access(candidate, os.R_OK):
                return candidate
        except OSError:
            continue
    return None


def check_links(cache: Cache, scratch: str | None, target: str | None, advice: Advice) -> Finding | None:
    """The ``links`` check: try every link mode from a file in the cache into
    ``target`` (default: the current directory, else the cache's own file
    system).  None when there is no file in the cache to link from."""
    assert cache.path is not None
    source = _probe_source(cache, scratch)
    if source is None:
        return None  # nothing to link from: the create and read checks say why
    explicit = target is not None
    if target is None:
        try:
            target = os.getcwd()
        except OSError:
            target = None
    where_from = "--target" if explicit else "the current directory"
    probe_dir: str | None = None
    error: OSError | None = None
    if target is not None:
        target = os.path.abspath(target)
        try:
            probe_dir = _fs.make_temp_dir(target, prefix=_layout.doctor_probe_prefix())
        except OSError as exc:
            error = exc
    if probe_dir is None and explicit:
        assert error is not None and target is not None
        if isinstance(error, (FileNotFoundError, NotADirectoryError)):
            remedy = f"{target} is not an existing directory: pass --target a directory where files would be placed"
        elif isinstance(error, PermissionError):
            remedy = (f"this user cannot create files in {target}: pass --target a directory this user can write, "
                      "where the tool places trees (a virtual environment, a build directory)")
        else:
            remedy = remedy_for(error, target, "create files", advice)
        reason = _errcodes.describe(error, with_type=False, errno_name=True)
        return Finding("links", WARN, f"cannot create a probe directory in the target {target}: {reason}",
                       remedy, {"target": target, "target_source": where_from})
    if probe_dir is None:
        if scratch is None:
            return Finding(
                "links", WARN,
                f"could not test link modes: {target or 'the current directory'} is not writable, nor is the cache",
                "pass --target DIR with a directory this user can write where files would be placed",
                {"target": target, "target_source": where_from},
            )
        probe_dir = os.path.join(scratch, "links")
        _fs.makedirs(probe_dir)
        note = f" (the current directory {target} is not writable; pass --target DIR to test a destination)"
        target, where_from = cache.path, "the cache's own file system"
    else:
        note = ""
    try:
        return _link_finding(source, probe_dir, target or "", where_from, note, advice)
    finally:
        _fs.discard_tree(probe_dir, budget=cache.retry_budget)


def _link_finding(source: str, probe_dir: str, target: str, where_from: str, note: str, advice: Advice) -> Finding:
    # Each mode exactly as trees place a file (Placer's one attempt, without
    # its fallbacks): doctor must see each mode's own result.
    attempt = _link.Placer("auto")._attempt
    results: dict[str, OSError | None] = {}
    for mode in _PROBED:
        try:
            attempt(mode, source, os.path.join(probe_dir, mode))
            results[mode] = None
        except OSError as exc:
            results[mode] = exc
    # What Placer("auto") does: down the chain while a mode is unsupported here.
    auto: str | None = None
    auto_error: OSError | None = None
    for mode in _LINK_CHAIN:
        failure = results[mode]
        if failure is None:
            auto = mode
            break
        if mode != "copy" and _link.unsupported(mode, failure):
            continue
        auto_error = failure
        break
    try:
        configured = _link.resolve_mode(None)
    except ValueError as exc:
        configured = "invalid"
        config_error = str(exc)
    else:
        config_error = ""
    errors = {m: "" if e is None else _errcodes.describe(e, with_type=False, errno_name=True) for m, e in results.items()}
    modes = {m: {"works": e is None, "error": errors[m]} for m, e in results.items()}
    data: dict[str, object] = {"target": target, "target_source": where_from, "modes": modes, "auto": auto,
                               "configured": configured}
    listing = ", ".join(f"{m} {'yes' if e is None else 'no (' + errors[m] + ')'}" for m, e in results.items())
    detail = f"from the cache to {target}{note}: {listing}; auto uses {auto or 'nothing (it fails)'}"
    if auto is None:
        assert auto_error is not None
        return Finding("links", FAIL, detail, remedy_for(auto_error, target, "place files", advice), data)
    if config_error:
        return Finding("links", WARN, detail + f"; {config_error}",
                       f"set {_link.ENV_VAR} to one of {', '.join(_link.MODES)}, or unset it", data)
    if configured not in ("auto", "clone") and results[configured] is not None:
        fallback = "copy"
        return Finding(
            "links", WARN, detail + f"; {_link.ENV_VAR}={configured} does not work here, so safecache falls back to {fallback}",
            f"unset {_link.ENV_VAR} or set it to auto", data,
        )
    if auto == "copy":
        assert results["hardlink"] is not None
        return Finding("links", WARN, detail + ": placing a tree copies every file (slower, uses disk space)",
                       _no_hardlink_remedy(results["hardlink"], source, target, advice), data)
    return Finding("links", OK, detail, data=data)


def _no_hardlink_remedy(exc: OSError, source: str, target: str, advice: Advice) -> str:
    winerror = _errcodes.winerror(exc)
    if exc.errno == errno.EXDEV or winerror == _errcodes.ERROR_NOT_SAME_DEVICE:
        return (
            f"the cache and {target} are on different file systems (cross-device), and hard links and clones cannot "
            f"cross them: put the cache on the same file system as the target ({advice.var}), or accept copies"
        )
    if winerror == _errcodes.ERROR_INVALID_FUNCTION or exc.errno in (
        errno.ENOSYS, getattr(errno, "EOPNOTSUPP", -1), getattr(errno, "ENOTSUP", -1)
    ):
        return (
            "the file system has no hard links (FAT/exFAT, some network and FUSE file systems): put the cache "
            "and the target on NTFS, ext4, APFS, btrfs or XFS, or accept copies"
        )
    if exc.errno in (errno.EPERM, errno.EACCES):
        try:
            owner = _osops.current.lstat(source).st_uid
        except OSError:
            owner = None
        me = advice.euid
        if owner is not None and me is not None and owner != me:
            return (
                f"the cache's files belong to {user(owner)}, and Linux (fs.protected_hardlinks) refuses to hard-link "
                f"another user's files: if the cache is yours (a cache restored by CI often arrives owned by another "
                f"user), give it back: {give_back(advice)}; otherwise use a cache of your own ({advice.var}), or "
                "accept copies"
            )
        return (
            "the file system refuses hard links (FAT/exFAT have none; some network and FUSE file systems refuse "
            "them): put the cache and the target on NTFS, ext4, APFS, btrfs or XFS, or accept copies"
        )
    reason = _errcodes.describe(exc, with_type=False, errno_name=True)
    return f"hard links fail here ({reason}); check the file systems holding the cache and {target}"
