"""A linter as a pytest plugin, for the xdist scenario of ruff #12284
(tests/test_xdist_scenario.py runs it; the outer test run never collects it).

As pytest-ruff does, every ``mod_*.py`` file of the project becomes test
items, one per check ("lint" and "format"), and pytest-xdist spreads them
over many worker processes.  Each item looks its file up in a cache that
every worker shares, lints it on a miss, and stores the result, as each run
of ruff reads and writes its cache:

* ``--lint-cache=naive``: ruff's way before the fix: one cache file for the
  whole project, read with ``open()`` and ``json.load``, rewritten after
  every run by writing a temp file and ``os.replace``-ing it over the old
  one.  On Windows that replace fails with "Access is denied" (error 5)
  whenever another process is reading the file.
* ``--lint-cache=safecache``: one safecache entry per file and check.

A hit is checked against a fresh lint, so a cache that served wrong bytes
would fail the item too.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Protocol

import pytest

CHECKS = ("lint", "format")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--lint-cache", choices=("naive", "safecache"), default="safecache")
    parser.addoption("--lint-cache-dir", required=True)


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix == ".py" and file_path.name.startswith("mod_"):
        return LintFile.from_parent(parent, path=file_path)
    return None


class LintFile(pytest.File):
    def collect(self) -> Iterator[pytest.Item]:
        for check in CHECKS:
            yield LintItem.from_parent(self, name=check)


class LintItem(pytest.Item):
    def runtest(self) -> None:
        source = _read(self.path)
        key = f"{self.name}:{hashlib.sha256(source).hexdigest()}"
        cache = _cache(self.config)
        fresh = lint(self.name, source)
        cached = cache.get(key)
        assert cached is None or cached == fresh, f"the cache served a wrong result for {self.path.name}"
        cache.put(key, fresh)  # as ruff writes its cache at the end of every run

    def reportinfo(self) -> tuple[Path, None, str]:
        return self.path, None, f"{self.name} {self.path.name}"


def _read(path: Path) -> bytes:
    """The source, read as a robust tool reads it on Windows: a scanner may
    hold a file for a moment (``--emulate-windows=DENIALS``), so a denied
    open is tried again a few times.  (The cache is what the scenario
    tests, not this.)"""
    for _attempt in range(20):
        try:
            return path.read_bytes()
        except PermissionError:
            continue
    return path.read_bytes()


def lint(check: str, source: bytes) -> dict[str, Any]:
    """Findings about ``source``: cheap, deterministic, and as bulky as a
    real linter's (a cache of them is a few hundred kilobytes)."""
    findings = []
    for number, line in enumerate(source.decode().splitlines(), 1):
        findings.append(
            {
                "line": number,
                "code": "E501" if len(line) > 40 else "W291" if line.endswith(" ") else "OK",
                "check": check,
                "message": f"line {number} of {len(line)} characters: {line[:24]!r}",
            }
        )
    return {"check": check, "findings": findings}


class Cache(Protocol):
    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, value: dict[str, Any]) -> None: ...


class NaiveCache:
    """One JSON file for the whole project, replaced after every run."""

    def __init__(self, directory: str) -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.path = os.path.join(directory, "cache.json")

    def _load(self) -> dict[str, Any]:
        try:
            with open(self.path, "rb") as f:
                data: dict[str, Any] = json.load(f)
                return data
        except FileNotFoundError:
            return {}

    def get(self, key: str) -> dict[str, Any] | None:
        return self._load().get(key)

    def put(self, key: str, value: dict[str, Any]) -> None:
        data = self._load()
        data[key] = value
        fd, tmp = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(json.dumps(data).encode())
        os.replace(tmp, self.path)


class SafeCache:
    """One safecache entry per file and check."""

    def __init__(self, directory: str) -> None:
        import safecache

        self.bucket = safecache.Cache(directory).bucket("lint", version=1)

    def get(self, key: str) -> dict[str, Any] | None:
        data = self.bucket.get(key)
        return None if data is None else json.loads(data)  # type: ignore[no-any-return]

    def put(self, key: str, value: dict[str, Any]) -> None:
        self.bucket.put(key, json.dumps(value, sort_keys=True).encode())


_caches: dict[str, Cache] = {}


def _cache(config: pytest.Config) -> Cache:
    kind = str(config.getoption("lint_cache"))
    if kind not in _caches:
        directory = str(config.getoption("lint_cache_dir"))
        _caches[kind] = NaiveCache(directory) if kind == "naive" else SafeCache(directory)
    return _caches[kind]
