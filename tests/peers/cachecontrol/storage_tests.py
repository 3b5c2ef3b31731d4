"""CacheControl's storage tests with safecache's adapter as the cache.

Copied into the peer's ``tests/`` (as ``test_safecache_storage.py``) by
tests/test_adapter_cachecontrol.py; it imports the peer's own test code from
there.  The tests of ``FileCacheTestsMixin`` that use ``FileCache``'s own
attributes (its directory, modes, path hashing, lock class) are deselected
by that test, with the reasons in docs/adapters/cachecontrol.md.
"""

from __future__ import annotations

from pathlib import Path

from conftest import safecache_cache
from tests import test_cache_control as peer_controller_tests
from tests.test_storage_filecache import FileCacheTestsMixin


class TestSafecacheCache(FileCacheTestsMixin):  # type: ignore[misc]
    """The suite's file-cache tests, with the adapter as ``FileCacheClass``."""

    FileCacheClass = staticmethod(safecache_cache)


def test_update_cached_response_with_valid_headers_safecache(tmp_path: Path) -> None:
    """The suite's 304 test (a revalidation updates the stored headers and
    keeps the body), with the adapter as the separate-body cache."""
    peer = peer_controller_tests.TestCacheControllerResponse()
    peer.update_cached_response_with_valid_headers_test(safecache_cache(tmp_path))
