"""A pytest plugin that runs hishel's own storage tests against
``safecache.adapters.hishel`` (tests/test_adapter_hishel.py loads it with
``-p safecache_hishel_peer`` into a pytest run inside hishel's unpacked sdist).

hishel's storage tests build their storage with ``SqliteStorage(...)`` and
``AsyncSqliteStorage(...)``, names they import into their own modules.  After
collection, every module of the peer's ``tests/`` that holds one of those
names gets ours instead: a factory that takes the same arguments and returns
our storage in a bucket of a fresh cache (``connection=``: an in-memory
database, so a cache of its own) or of the cache beside ``database_path``
(two storages opened on one path share it, and reopening finds the entries).
The peer's ``rows(storage)`` helper (the rows of its entries table) becomes
the number of entries stored in the bucket.  The peer's files are not
changed.
"""

from __future__ import annotations

import inspect
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

import safecache
from safecache.adapters.hishel import AsyncStorage, SyncStorage

_BASE = os.environ.get("SAFECACHE_HISHEL_PEER_DIR") or tempfile.mkdtemp(prefix="hishel-peer-")


def _bucket(database_path: Any) -> safecache.Bucket:
    if database_path is None:
        root = tempfile.mkdtemp(dir=_BASE)
    else:
        root = os.fspath(database_path) + ".safecache"
    return safecache.Cache(root).bucket("hishel", version=1)


def SqliteStorage(*, connection: Any = None, database_path: Any = None, **options: Any) -> SyncStorage:
    """Stands for ``hishel.SqliteStorage``; other options (``max_size``...) are refused."""
    return SyncStorage(_bucket(database_path), **options)


def AsyncSqliteStorage(*, connection: Any = None, database_path: Any = None, **options: Any) -> AsyncStorage:
    """Stands for ``hishel.AsyncSqliteStorage``."""
    return AsyncStorage(_bucket(database_path), **options)


_SUBSTITUTES = {"SqliteStorage": SqliteStorage, "AsyncSqliteStorage": AsyncSqliteStorage}


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    tests = str(Path(config.rootpath, "tests")) + os.sep
    for module in list(sys.modules.values()):
        if not str(getattr(module, "__file__", None) or "").startswith(tests):
            continue
        for name, substitute in _SUBSTITUTES.items():
            if name in vars(module):
                setattr(module, name, substitute)
        helper = vars(module).get("rows")
        if helper is not None and getattr(getattr(helper, "__code__", None), "co_filename", "").startswith(tests):
            module.rows = async_rows if inspect.iscoroutinefunction(helper) else rows


def pytest_report_header(config: pytest.Config) -> str:
    return f"hishel storage: safecache.adapters.hishel (caches under {_BASE})"


def _stored(storage: SyncStorage | AsyncStorage) -> int:
    return sum(1 for info in storage.bucket.items() if isinstance(info.key, tuple) and info.key[0] == "hishel-entry")


def rows(storage: SyncStorage) -> int:
    """Stands for the peer's ``rows(storage)`` (rows of its entries table):
    the entries stored in the bucket, listed with ``bucket.items()``."""
    return _stored(storage)


async def async_rows(storage: AsyncStorage) -> int:
    return _stored(storage)
