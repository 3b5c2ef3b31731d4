"""Runs CacheControl's own test suite with safecache's adapter as the cache.

tests/test_adapter_cachecontrol.py copies this file as ``conftest.py`` beside
the peer's ``tests/`` (unpacked from its sdist into a temporary directory),
and ``storage_tests.py`` into that ``tests/``.  Every cache the suite leaves
to CacheControl's default (``CacheControl(session)``,
``CacheControlAdapter()``, ``CacheController()``: a ``DictCache()``) is then a
``CacheControlCache`` on a fresh bucket of a strict cache (a cache problem
raises instead of degrading, so the suite sees it).  Caches a test builds
itself (``DictCache()`` with the suite's ``NullSerializer``, ``FileCache``,
mocks) are left alone.
"""

from __future__ import annotations

import json
import os

import cachecontrol.adapter
import cachecontrol.controller
import cachecontrol.wrapper
import pytest

import safecache
from safecache.adapters.cachecontrol import CacheControlCache

#: Node ids of the tests that ran with the adapter as their cache.
USED: list[str] = []


def safecache_cache(directory: object, **_filecache_options: object) -> CacheControlCache:
    """The adapter on a fresh strict bucket under ``directory`` (a
    ``FileCacheClass`` for the suite's storage tests: FileCache's own
    options, such as ``lock_class``, do not apply)."""
    return CacheControlCache(safecache.Cache(os.fspath(directory), strict=True).bucket("cachecontrol", version=1))  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _safecache_default_cache(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path_factory.mktemp("safecache")

    def default_cache(init_dict: object = None) -> CacheControlCache:
        assert init_dict is None, "the library's default cache is built empty"
        if request.node.nodeid not in USED:
            USED.append(request.node.nodeid)
        return safecache_cache(root)

    for module in (cachecontrol.adapter, cachecontrol.controller, cachecontrol.wrapper):
        monkeypatch.setattr(module, "DictCache", default_cache)


def pytest_sessionfinish(session: pytest.Session) -> None:
    report = os.environ.get("SAFECACHE_PEER_REPORT")
    if report:
        with open(report, "w", encoding="utf-8") as out:
            json.dump({"default_cache_used_by": USED}, out)
