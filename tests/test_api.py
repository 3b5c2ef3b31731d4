"""The shape of the public API: exports, exception tree, pickling."""

from __future__ import annotations

import errno
import pickle
import subprocess
import sys

import pytest

import safecache


def test_all_is_sorted_and_complete() -> None:
    assert safecache.__all__ == sorted(safecache.__all__)
    public = {n for n in dir(safecache) if not n.startswith("_")} - {"testing", "cli", "maintenance", "doctor", "adapters"}  # submodules, once imported
    assert public <= set(safecache.__all__) | {"annotations"}
    for name in safecache.__all__:
        assert hasattr(safecache, name)


@pytest.mark.parametrize(
    "cls, builtin",
    [
        (safecache.CacheError, OSError),
        (safecache.CachePermissionError, PermissionError),
        (safecache.CacheReadOnlyError, PermissionError),
        (safecache.LockTimeoutError, TimeoutError),
        (safecache.CacheFullError, OSError),
        (safecache.CacheBusyError, OSError),
        (safecache.LockUnsupportedError, OSError),
        (safecache.CacheUnavailableError, OSError),
    ],
)
def test_errors_subclass_the_builtin_they_resemble(cls: type, builtin: type) -> None:
    assert issubclass(cls, safecache.CacheError)
    assert issubclass(cls, builtin)


def test_errors_keep_the_original_and_survive_pickling() -> None:
    original = PermissionError(errno.EACCES, "Access is denied", "/c/x")
    err = safecache.CachePermissionError("cache put failed", original=original, operation="put")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is safecache.CachePermissionError
    assert again.errno == errno.EACCES
    assert again.operation == "put"
    assert isinstance(again.original, PermissionError)
    assert "Access is denied" in str(again)


def test_cache_warning_is_a_user_warning() -> None:
    assert issubclass(safecache.CacheWarning, UserWarning)


def test_import_is_cheap_in_modules() -> None:
    """Tools import safecache on every run: it must not pull in heavy modules."""
    code = "import sys, safecache; print(' '.join(sorted(sys.modules)))"
    loaded = set(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split())
    heavy = {"hashlib", "typing", "logging", "platformdirs", "dataclasses", "re", "threading", "random", "json", "pathlib"}
    assert not (heavy & loaded), heavy & loaded
