"""Helpers for tests that run a child as an unprivileged user.

Used by test_permissions.py and test_regressions.py.  We run as root, and
``chmod`` does not stop root, so a permission test builds a cache as root in
the parent, sets owners and modes, then runs a short child as ``nobody``
(the ``unprivileged`` fixture of conftest.py) that reports, as one JSON
document, what it observed.  The parent asserts on that report.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any
from unittest import mock

import conftest

import safecache


#: The bucket and entries of a cache "restored by CI": a small value (read in
#: one block) and one over 64 KiB (read through the large-entry path).
BUCKET = "restored"
ENTRIES: dict[str, bytes] = {"small": b"alpha", "large": b"beta-" * 20_000}

_TEMPLATE = '''\
import json, os, sys, warnings
import safecache
ROOT = os.environ["SAFECACHE_TEST_ROOT"]
ENTRIES = json.loads(os.environ["SAFECACHE_TEST_ENTRIES"])
out = {}

def show(value):
    """bytes -> str for the JSON report (None stays None)."""
    return None if value is None else value.decode("latin-1")

def error(exc):
    """What the parent needs to know about an exception."""
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "cache_error": isinstance(exc, safecache.CacheError),
        "permission_error": isinstance(exc, PermissionError),
        "read_only_error": isinstance(exc, safecache.CacheReadOnlyError),
    }

with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
@BODY@
    except BaseException as exc:  # the point of most cases: nothing gets here
        out["raised"] = error(exc)
out["warnings"] = [[w.category.__name__, str(w.message)] for w in caught]
print(json.dumps(out))
'''


def child_code(body: str) -> str:
    """Wrap ``body`` (which fills the dict ``out``) in the reporting template.

    The body sees ``ROOT`` (the cache root), ``ENTRIES`` (key -> value as
    str), ``safecache``, and the helpers ``show`` and ``error``.  Anything it
    raises is reported as ``out["raised"]``; every warning issued is reported
    as ``out["warnings"]`` (category name, message).
    """
    return _TEMPLATE.replace("@BODY@", textwrap.indent(textwrap.dedent(body).strip("\n"), " " * 8))


def run_case(unprivileged: conftest.Unprivileged, body: str, root: Path | str, *, shared: bool = False) -> dict[str, Any]:
    """Run ``body`` as the unprivileged user against ``root``; return its report.
    ``shared``: the child opts into a shared cache (``SAFECACHE_SHARED=1``),
    without which a cache owned by another user is not used at all."""
    env = {
        "SAFECACHE_TEST_ROOT": str(root),
        "SAFECACHE_TEST_ENTRIES": _entries_json(),
    }
    if shared:
        env["SAFECACHE_SHARED"] = "1"
    report = unprivileged.run_json(child_code(body), env=env)
    assert isinstance(report, dict)
    return report


def _entries_json() -> str:
    import json

    return json.dumps({k: v.decode("latin-1") for k, v in ENTRIES.items()})


def cache_warnings(report: dict[str, Any]) -> list[str]:
    """The messages of the CacheWarnings a child saw."""
    return [message for category, message in report["warnings"] if category == "CacheWarning"]


def set_modes(root: Path, *, dirs: int, files: int) -> None:
    """Give every directory under ``root`` (itself included) and every file
    the modes ``dirs`` and ``files``, owned by root."""
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chown(dirpath, 0, 0)
        os.chmod(dirpath, dirs)
        for name in filenames:
            path = os.path.join(dirpath, name)
            os.chown(path, 0, 0)
            os.chmod(path, files)


#: Restored caches are old: their entries were written (header and mtime)
#: this long ago, so a read also tries to refresh the LRU mtime, which the
#: user may not do.
RESTORED_AGE_S = 2 * 24 * 3600


def restored_cache(parent: Path, name: str = "cache", *, dirs: int = 0o755, files: int = 0o644) -> Path:
    """A root-owned cache holding ENTRIES in BUCKET, as a CI runner restores
    one: made by root two days ago, then given modes ``dirs``/``files``."""
    root = parent / name
    then_ns = time.time_ns() - RESTORED_AGE_S * 10**9
    with safecache.Cache(root, strict=True) as cache:
        bucket = cache.bucket(BUCKET)
        with mock.patch("time.time_ns", return_value=then_ns):
            for key, value in ENTRIES.items():
                assert bucket.put(key, value)
    for path in root.rglob("*"):
        os.utime(path, ns=(then_ns, then_ns), follow_symlinks=False)
    set_modes(root, dirs=dirs, files=files)
    return root


def entry_path(root: Path, key: str) -> Path:
    """The file that holds ``key`` of BUCKET in the cache at ``root``."""
    path = safecache.Cache(root).bucket(BUCKET).path_for(key)
    assert path is not None
    return Path(path)


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every name under ``root`` with its inode, size, mtime and owner: equal
    snapshots mean nothing was created, replaced, modified or removed."""
    result = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        result[str(path.relative_to(root))] = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_uid)
    return result


def owned_by(root: Path, uid: int) -> list[str]:
    """Names under ``root`` (itself included) owned by ``uid``."""
    paths = [root, *root.rglob("*")]
    return [str(p) for p in paths if p.lstat().st_uid == uid]


#: A child body that runs ``python -m safecache doctor --cache-dir ROOT --json``
#: (as the same unprivileged user) and reports its exit code and JSON.
DOCTOR = """
import subprocess
proc = subprocess.run(
    [sys.executable, "-m", "safecache", "doctor", "--cache-dir", ROOT, "--json"],
    capture_output=True, text=True, timeout=60,
)
out["returncode"] = proc.returncode
out["stderr"] = proc.stderr
out["report"] = json.loads(proc.stdout) if proc.stdout.strip() else None
"""


def doctor_findings(report: dict[str, Any]) -> dict[str, dict[str, str]]:
    """The findings of a DOCTOR child's report, by name."""
    assert report["report"] is not None, f"doctor printed no JSON (exit {report['returncode']}): {report['stderr']}"
    return {f["name"]: f for f in report["report"]["findings"]}
