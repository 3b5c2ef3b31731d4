"""conftest.py for a run of joblib's own tests against safecache's store
(copied beside joblib's test files by tests/test_adapter_joblib.py).

The default backend is already safecache's (sitecustomize.py in this
directory).  Here, for each test module:

* ``FileSystemStoreBackend``, the name the tests use for joblib's store
  class, is bound to ``SafecacheStoreBackend``: tests that build a store
  themselves (test_store_backends.py) build ours;
* ``corrupt_single_cache_item``, the helper that corrupts the one stored
  result by writing "garbage" over joblib's ``output.pkl``, is bound to one
  that corrupts the safecache entry holding it (garbage over the last bytes
  of its value, so the entry still looks present and only its checksum
  fails): the tests' assertions (a warning, then a recomputation; a
  ``KeyError`` saying "is corrupted") are kept.
"""

from __future__ import annotations

import inspect
import os

import pytest
from joblib import memory

from safecache.adapters.joblib import SafecacheStoreBackend


def pytest_configure(config: pytest.Config) -> None:
    backend = inspect.signature(memory.Memory.__init__).parameters["backend"].default
    if backend != "safecache":
        raise pytest.UsageError(f"joblib's default backend is {backend!r}: sitecustomize.py did not run")
    config.addinivalue_line("markers", "thread_unsafe: joblib's marker (free-threading runs)")
    config.addinivalue_line("markers", "timeout: joblib's marker (pytest-timeout)")


def corrupt_single_cache_item(mem: memory.Memory) -> None:
    (item,) = mem.store_backend.get_items()
    backend = mem.store_backend
    key = ("out", *os.path.relpath(item.path, backend.location).rsplit(os.sep, 1))
    path = backend._bucket.path_for(key)
    with open(path, "r+b") as f:
        f.seek(-7, os.SEEK_END)
        f.write(b"garbage")


@pytest.fixture(autouse=True)
def _safecache_store(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    module = request.module
    if hasattr(module, "FileSystemStoreBackend"):
        monkeypatch.setattr(module, "FileSystemStoreBackend", SafecacheStoreBackend)
    if hasattr(module, "corrupt_single_cache_item"):
        monkeypatch.setattr(module, "corrupt_single_cache_item", corrupt_single_cache_item)
